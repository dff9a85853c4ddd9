"""Legal profiles: bundled files, the hash rule, and strict validation with fix hints."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from appliance.box.config import ConfigError, package_root, parse_config
from appliance.box.policy import (
    FORMAT_VERSION,
    available_profiles,
    load_profile,
    parse_profile,
)
from appliance.contracts.types import VIOLENT_PATTERNS, Pattern, ProfileRef

PROFILES = package_root() / "provisioning" / "profiles"
HASHES = Path(__file__).parent / "fixtures" / "policy" / "profile_hashes.toml"

MINIMAL = """\
format = 1
id = "{id}"
version = "1"
title = "test profile"
jurisdiction = "test"
purpose = "crime"
legal_basis = "for tests"

[patterns.strike]
permitted = true
min_confidence = 0.6
"""


def write_profile(tmp_path: Path, text: str, profile_id: str = "test-profile") -> Path:
    path = tmp_path / f"{profile_id}.toml"
    path.write_text(text.format(id=profile_id), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, profile_id: str = "test-profile") -> ConfigError:
    write_profile(tmp_path, text, profile_id)
    with pytest.raises(ConfigError) as info:
        load_profile(profile_id, tmp_path)
    return info.value


# -- bundled profiles -------------------------------------------------------------------


def test_bundled_profiles_are_listed():
    assert {"bw-polg-44-4", "helpless-person"} <= set(available_profiles())


def test_bw_polg_permits_only_violent_patterns_and_never_fall_or_lying():
    profile = load_profile("bw-polg-44-4")
    assert profile.permitted_patterns == VIOLENT_PATTERNS
    assert profile.purpose == "crime"
    # fall and lying are listed explicitly (detected and counted) but not permitted
    assert profile.rules[Pattern.FALL].permitted is False
    assert profile.rules[Pattern.LYING].permitted is False
    # weapon: planned for § 44(4) but not covered; listed (counted), never recorded, and said so
    assert profile.rules[Pattern.WEAPON].permitted is False
    assert "Dangerous objects" in profile.legal_basis and "not covered" in profile.legal_basis
    assert profile.version == "2026.2"
    assert (profile.pre_roll_s, profile.post_roll_s, profile.retention_hours) == (5.0, 5.0, 72)


def test_helpless_person_additionally_permits_fall_and_lying():
    bw, helpless = load_profile("bw-polg-44-4"), load_profile("helpless-person")
    assert helpless.permitted_patterns == bw.permitted_patterns | {Pattern.FALL, Pattern.LYING}
    # its meaning is unchanged by the weapon pattern: crime indicators plus a person in need of help
    assert helpless.permitted_patterns == VIOLENT_PATTERNS | {Pattern.FALL, Pattern.LYING}
    assert helpless.rule_for(Pattern.WEAPON) is None and helpless.version == "2026.1"


def test_a_crime_profile_may_permit_weapon_but_never_fall(tmp_path):
    text = MINIMAL + "\n[patterns.weapon]\npermitted = true\nmin_confidence = 0.6\nmin_duration_s = 0.2\n"
    write_profile(tmp_path, text, "weapon-ban-zone")
    profile = load_profile("weapon-ban-zone", tmp_path)
    assert profile.permitted_patterns == {Pattern.STRIKE, Pattern.WEAPON}
    msg = str(load_error(tmp_path, text + "\n[patterns.fall]\npermitted = true\n", "weapon-ban-zone-2"))
    assert "patterns.fall.permitted = true" in msg and "weapon" in msg


def test_profile_ref_hashes_the_exact_file_bytes():
    for profile_id in ("bw-polg-44-4", "helpless-person"):
        profile = load_profile(profile_id)
        raw = (PROFILES / f"{profile_id}.toml").read_bytes()
        assert profile.ref == ProfileRef(profile_id, profile.version, hashlib.sha256(raw).hexdigest())


def test_hash_changes_with_any_byte_even_a_comment(tmp_path):
    a = parse_profile(MINIMAL.format(id="p1").encode(), expected_id="p1")
    b = parse_profile((MINIMAL.format(id="p1") + "# a comment\n").encode(), expected_id="p1")
    assert a.rules == b.rules and a.version == b.version
    assert a.sha256 != b.sha256


def test_bundled_profiles_bump_version_when_bytes_change():
    """docs/legal-profiles.md hash rule: one (id, version) never names two different files."""
    approved = tomllib.loads(HASHES.read_text(encoding="utf-8"))["profile"]
    by_version = {(p["id"], p["version"]): p["sha256"] for p in approved}
    for profile_id in available_profiles():
        ref = load_profile(profile_id).ref
        key = (ref.id, ref.version)
        assert key in by_version, (
            f"{profile_id} version {ref.version} is not recorded in {HASHES.name}: "
            f"add id/version/sha256 = {ref.sha256} there")
        assert by_version[key] == ref.sha256, (
            f"{profile_id}.toml changed but its version {ref.version} did not: bump `version` "
            f"and record the new sha256 {ref.sha256} in {HASHES.name}")


def test_docs_describe_the_format_version_the_code_reads():
    doc = (package_root() / "docs" / "legal-profiles.md").read_text(encoding="utf-8")
    assert f"file format version {FORMAT_VERSION}" in doc


def test_profile_is_frozen():
    profile = load_profile("bw-polg-44-4")
    with pytest.raises(AttributeError):
        profile.pre_roll_s = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.rules[Pattern.FALL] = None  # type: ignore[index]


def test_defaults_apply_when_optional_keys_are_missing(tmp_path):
    write_profile(tmp_path, MINIMAL)
    profile = load_profile("test-profile", tmp_path)
    assert (profile.pre_roll_s, profile.post_roll_s, profile.retention_hours) == (5.0, 5.0, 72)
    assert profile.rules[Pattern.STRIKE].min_duration_s == 0.0
    assert profile.rule_for(Pattern.KICK) is None   # unlisted → default deny


# -- validation errors name the file, the key and the fix ---------------------------------


def test_unknown_top_level_key(tmp_path):
    err = load_error(tmp_path, MINIMAL.replace("purpose", "pre_rol_s = 3\npurpose"))
    msg = str(err)
    assert "test-profile.toml" in msg
    assert "pre_rol_s: unknown key" in msg and "pre_roll_s" in msg and "fix:" in msg


def test_unknown_pattern_name_lists_the_known_ones(tmp_path):
    err = load_error(tmp_path, MINIMAL + "\n[patterns.loitering]\npermitted = true\n")
    msg = str(err)
    assert "patterns.loitering: unknown pattern 'loitering'" in msg
    assert "fix: use one of: strike, kick, push, strangle, fight, fall, lying" in msg


def test_unknown_rule_key(tmp_path):
    err = load_error(tmp_path, MINIMAL + "min_confidance = 0.7\n")
    assert "patterns.strike.min_confidance: unknown key" in str(err)
    assert "min_confidence" in str(err)


@pytest.mark.parametrize("line, key, hint", [
    ("min_confidence = 1.5", "patterns.strike.min_confidence = 1.5: must be within 0..1", "fix: a confidence 0..1"),
    ("min_confidence = -0.1", "patterns.strike.min_confidence = -0.1: must be within 0..1", "fix:"),
    ("min_confidence = nan", "patterns.strike.min_confidence = nan: must be within 0..1", "fix:"),
    ("min_confidence = \"high\"", "patterns.strike.min_confidence = 'high': must be a number", "fix:"),
    ("min_duration_s = -1", "patterns.strike.min_duration_s = -1: must be within 0..600", "fix: seconds"),
])
def test_rule_ranges(tmp_path, line, key, hint):
    text = MINIMAL.replace("min_confidence = 0.6", line)
    msg = str(load_error(tmp_path, text))
    assert key in msg and hint in msg


@pytest.mark.parametrize("line, key", [
    ("pre_roll_s = -1", "pre_roll_s = -1: must be within 0..30"),
    ("post_roll_s = 31", "post_roll_s = 31: must be within 0..30"),
    ("retention_hours = 0", "retention_hours = 0: must be within 1..2160"),
    ("retention_hours = 72.5", "retention_hours = 72.5: must be an integer"),
    ("pre_roll_s = true", "pre_roll_s = True: must be a number"),
])
def test_top_level_ranges(tmp_path, line, key):
    msg = str(load_error(tmp_path, MINIMAL.replace("[patterns.strike]", f"{line}\n\n[patterns.strike]")))
    assert key in msg and "fix:" in msg


def test_permitted_must_be_present_and_boolean(tmp_path):
    msg = str(load_error(tmp_path, MINIMAL.replace("permitted = true", "permitted = \"yes\"")))
    assert "patterns.strike.permitted = 'yes': must be true or false" in msg
    msg = str(load_error(tmp_path, MINIMAL.replace("permitted = true\n", "")))
    assert "patterns.strike.permitted: missing (fix: permitted = true or false)" in msg


def test_crime_profile_cannot_permit_fall(tmp_path):
    """The §44(4) safeguard: a crime-purpose profile that permits fall does not load."""
    msg = str(load_error(tmp_path, MINIMAL + "\n[patterns.fall]\npermitted = true\n"))
    assert "patterns.fall.permitted = true: profile purpose 'crime' may only permit the crime patterns" in msg
    assert "fix: set permitted = false" in msg and "helpless-person" in msg


def test_editing_the_bundled_bw_profile_to_permit_lying_is_refused(tmp_path):
    text = (PROFILES / "bw-polg-44-4.toml").read_text(encoding="utf-8")
    edited = text.replace("[patterns.lying]\npermitted = false", "[patterns.lying]\npermitted = true")
    assert edited != text
    (tmp_path / "bw-polg-44-4.toml").write_text(edited, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"patterns\.lying\.permitted = true: profile purpose 'crime'"):
        load_profile("bw-polg-44-4", tmp_path)


def test_missing_required_keys_are_all_reported(tmp_path):
    err = load_error(tmp_path, "format = 1\nid = \"{id}\"\n")
    joined = "\n".join(err.problems)
    for key in ("version", "title", "jurisdiction", "purpose", "legal_basis", "patterns"):
        assert f"{key}: missing (fix:" in joined
    assert len(err.problems) == 6


def test_bad_purpose_and_format(tmp_path):
    msg = str(load_error(tmp_path, MINIMAL.replace('purpose = "crime"', 'purpose = "everything"')))
    assert "purpose = 'everything': must be one of 'crime', 'crime-and-helpless-person'" in msg
    msg = str(load_error(tmp_path, MINIMAL.replace("format = 1", "format = 2")))
    assert "format = 2: this appliance reads profile format 1 only" in msg


def test_id_must_match_the_file_name(tmp_path):
    write_profile(tmp_path, MINIMAL.replace('id = "{id}"', 'id = "other"'))
    with pytest.raises(ConfigError, match=r"id = 'other': does not match the file name 'test-profile'.toml "
                                          r"\(fix: set id = \"test-profile\" or rename the file\)"):
        load_profile("test-profile", tmp_path)


def test_unknown_profile_lists_the_available_ones(tmp_path):
    write_profile(tmp_path, MINIMAL, "only-one")
    with pytest.raises(ConfigError, match=r"no legal profile 'missing' \(fix: use one of: only-one"):
        load_profile("missing", tmp_path)


@pytest.mark.parametrize("bad_id", ["../bw-polg-44-4", "BW", "", "a/b", "x" * 80])
def test_profile_id_cannot_escape_the_profiles_dir(bad_id):
    with pytest.raises(ConfigError, match="is not a valid id"):
        load_profile(bad_id)


def test_not_toml_and_empty_patterns(tmp_path):
    msg = str(load_error(tmp_path, "format = = 1\n"))
    assert "not valid TOML" in msg and "fix:" in msg
    msg = str(load_error(tmp_path, MINIMAL.split("[patterns.strike]")[0] + "patterns = {{}}\n"))
    assert "patterns: must hold at least one [patterns.<name>] table" in msg


# -- zones and masks in the appliance config (validated by appliance.box.config) ------------


def test_zone_polygon_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as info:
        parse_config({"zones": [{"name": "platz", "polygon": [[0.1, 0.1], [0.9, 0.1]]}]}, "cam.toml")
    assert "zones[0].polygon: must be a list of at least 3 [x, y] points (fix:" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({"privacy_masks": [{"name": "window", "polygon": [[0, 0], [1.5, 0], [0, 1]]}]}, "cam.toml")
    assert "privacy_masks[0].polygon[1] = [1.5, 0]: coordinates must lie in 0..1" in str(info.value)
    with pytest.raises(ConfigError, match="zones: name 'a' is used twice"):
        parse_config({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]]},
                                {"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]]}]})
    with pytest.raises(ConfigError, match=r"zones\[0\].colour: unknown key"):
        parse_config({"zones": [{"name": "a", "colour": "red", "polygon": [[0, 0], [1, 0], [0, 1]]}]})
