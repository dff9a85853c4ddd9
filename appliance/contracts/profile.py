"""Legal profiles: versioned TOML files saying which patterns may trigger a clip.

Format and legal reasoning: docs/legal-profiles.md. Loading is strict (unknown keys, unknown
patterns, wrong types, values out of range are errors naming the file, the key and the fix),
and the profile's hash is the SHA-256 of the very bytes that were parsed, so the
:class:`~appliance.contracts.types.ProfileRef` carried by every trigger describes the rules applied.

>>> profile = load_profile("bw-polg-44-4")
>>> profile.rules[Pattern.FALL].permitted
False
>>> profile.ref          # ProfileRef(id='bw-polg-44-4', version='2026.1', sha256='…')
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.common.resources import package_root
from appliance.common.schema import ConfigError
from appliance.contracts.types import VIOLENT_PATTERNS, Pattern, ProfileRef

#: The profile file format this code reads (docs/legal-profiles.md).
FORMAT_VERSION = 1

#: What the law lets the analysis look for → the patterns such a profile may permit.
PURPOSES: Mapping[str, frozenset[Pattern]] = MappingProxyType({
    "crime": frozenset(VIOLENT_PATTERNS),
    "crime-and-helpless-person": frozenset(Pattern),
})

PROFILE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,63}$")

DEFAULT_PRE_ROLL_S = 5.0
DEFAULT_POST_ROLL_S = 5.0
DEFAULT_RETENTION_HOURS = 72
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MIN_DURATION_S = 0.0

_PATTERN_NAMES = ", ".join(p.value for p in Pattern)


@dataclass(frozen=True)
class PatternRule:
    """What a profile says about one pattern."""

    pattern: Pattern
    permitted: bool
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    min_duration_s: float = DEFAULT_MIN_DURATION_S


@dataclass(frozen=True)
class LegalProfile:
    """A validated legal profile. ``rules`` lists only the patterns the file names;
    an unlisted pattern never triggers (default deny)."""

    id: str
    version: str
    title: str
    jurisdiction: str
    purpose: str
    legal_basis: str
    rules: Mapping[Pattern, PatternRule]
    pre_roll_s: float
    post_roll_s: float
    retention_hours: int
    sha256: str
    source: str          # the file it was loaded from, for messages

    @property
    def ref(self) -> ProfileRef:
        return ProfileRef(self.id, self.version, self.sha256)

    @property
    def permitted_patterns(self) -> frozenset[Pattern]:
        return frozenset(p for p, r in self.rules.items() if r.permitted)

    def rule_for(self, pattern: Pattern) -> PatternRule | None:
        return self.rules.get(pattern)


def profiles_root(profiles_dir: str | Path | None = None) -> Path:
    """The directory holding ``<id>.toml`` files: the given one, or the bundled one."""
    return Path(profiles_dir) if profiles_dir else package_root() / "provisioning" / "profiles"


def available_profiles(profiles_dir: str | Path | None = None) -> tuple[str, ...]:
    root = profiles_root(profiles_dir)
    return tuple(sorted(p.stem for p in root.glob("*.toml"))) if root.is_dir() else ()


def load_profile(profile_id: str, profiles_dir: str | Path | None = None) -> LegalProfile:
    """Reads ``<profiles_dir>/<profile_id>.toml`` and validates it; raises ConfigError."""
    root = profiles_root(profiles_dir)
    if not PROFILE_ID_RE.match(profile_id or ""):
        available = ", ".join(available_profiles(root)) or "none"
        problem = (f"profile id {profile_id!r} is not a valid id (fix: lower-case letters, digits "
                   f"and '-', e.g. 'bw-polg-44-4'; available: {available})")
        raise ConfigError("policy.profile", [problem])
    path = root / f"{profile_id}.toml"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        available = ", ".join(available_profiles(root)) or "none"
        raise ConfigError(str(path), [
            f"no legal profile {profile_id!r} (fix: use one of: {available}, or set policy.profiles_dir)",
        ]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    return parse_profile(raw, str(path), expected_id=profile_id)


def parse_profile(raw: bytes, source: str = "<profile>", *, expected_id: str | None = None) -> LegalProfile:
    """Validates a profile file's bytes (hashing exactly these bytes)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"not valid TOML: {exc} (fix: check quotes, brackets and '=' signs)"]) from None
    problems: list[str] = []
    profile = _validate(data, problems, source, hashlib.sha256(raw).hexdigest(), expected_id)
    if problems or profile is None:
        raise ConfigError(source, problems)
    return profile


# ---------------------------------------------------------------------------------------
# Validation: every problem found is reported, each naming its key and the fix.

_TOP_KEYS = {
    "format": "format = 1 (the version of docs/legal-profiles.md this file follows)",
    "id": "the file name without .toml, e.g. id = \"bw-polg-44-4\"",
    "version": "a version string bumped with every edit, e.g. version = \"2026.1\"",
    "title": "one line for people, e.g. title = \"§ 44 Abs. 4 PolG BW\"",
    "jurisdiction": "where the legal basis applies, e.g. jurisdiction = \"DE-BW\"",
    "purpose": "purpose = \"crime\" or \"crime-and-helpless-person\"",
    "legal_basis": "the norm and the reasoning, in prose",
    "pre_roll_s": "seconds of video before the event, 0..30, e.g. 5",
    "post_roll_s": "seconds of video after the event, 0..30, e.g. 5",
    "retention_hours": "hours the station keeps a clip, 1..2160, e.g. 72",
    "patterns": "[patterns.<name>] tables, e.g. [patterns.strike] with permitted = true",
}
_REQUIRED = ("format", "id", "version", "title", "jurisdiction", "purpose", "legal_basis", "patterns")

_RULE_KEYS = {
    "permitted": "permitted = true or false",
    "min_confidence": "a confidence 0..1, e.g. min_confidence = 0.6",
    "min_duration_s": "seconds 0..600, e.g. min_duration_s = 0.5",
}


def _number(table: dict, key: str, where: str, lo: float, hi: float, default: float,
            problems: list[str], fix: str, *, integer: bool = False) -> float:
    if key not in table:
        return default
    value = table[key]
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float))) \
        and not isinstance(value, bool)
    if not ok_type:
        problems.append(f"{where} = {value!r}: must be {'an integer' if integer else 'a number'} (fix: {fix})")
        return default
    if not math.isfinite(value) or not (lo <= value <= hi):
        problems.append(f"{where} = {value!r}: must be within {lo:g}..{hi:g} (fix: {fix})")
        return default
    return int(value) if integer else float(value)


def _string(data: dict, key: str, problems: list[str], max_len: int = 10_000) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key} = {value!r}: must be a non-empty string (fix: {_TOP_KEYS[key]})")
        return ""
    if len(value) > max_len:
        problems.append(f"{key}: longer than {max_len} characters (fix: shorten it)")
        return ""
    return value.strip()


def _validate(data: dict[str, Any], problems: list[str], source: str, sha256: str,
              expected_id: str | None) -> LegalProfile | None:
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{key}: unknown key (fix: remove it or use one of: {', '.join(sorted(_TOP_KEYS))})")
    for key in _REQUIRED:
        if key not in data:
            problems.append(f"{key}: missing (fix: {_TOP_KEYS[key]})")

    fmt = data.get("format")
    if "format" in data and (not isinstance(fmt, int) or isinstance(fmt, bool) or fmt != FORMAT_VERSION):
        problems.append(f"format = {fmt!r}: this appliance reads profile format {FORMAT_VERSION} only "
                        f"(fix: convert the file per docs/legal-profiles.md, or update the appliance)")

    profile_id = _string(data, "id", problems, 64)
    if profile_id and not PROFILE_ID_RE.match(profile_id):
        problems.append(f"id = {profile_id!r}: must be lower-case letters, digits and '-' "
                        f"(fix: e.g. id = \"bw-polg-44-4\")")
    if profile_id and expected_id is not None and profile_id != expected_id:
        problems.append(f"id = {profile_id!r}: does not match the file name {expected_id!r}.toml "
                        f"(fix: set id = \"{expected_id}\" or rename the file)")
    version = _string(data, "version", problems, 64)
    title = _string(data, "title", problems, 300)
    jurisdiction = _string(data, "jurisdiction", problems, 64)
    legal_basis = _string(data, "legal_basis", problems)

    purpose = data.get("purpose")
    if "purpose" in data and purpose not in PURPOSES:
        problems.append(f"purpose = {purpose!r}: must be one of {', '.join(map(repr, PURPOSES))} "
                        f"(fix: {_TOP_KEYS['purpose']})")
        purpose = None

    pre = _number(data, "pre_roll_s", "pre_roll_s", 0, 30, DEFAULT_PRE_ROLL_S, problems, _TOP_KEYS["pre_roll_s"])
    post = _number(data, "post_roll_s", "post_roll_s", 0, 30, DEFAULT_POST_ROLL_S, problems,
                   _TOP_KEYS["post_roll_s"])
    retention = _number(data, "retention_hours", "retention_hours", 1, 2160, DEFAULT_RETENTION_HOURS,
                        problems, _TOP_KEYS["retention_hours"], integer=True)

    rules: dict[Pattern, PatternRule] = {}
    patterns = data.get("patterns")
    if "patterns" in data:
        if not isinstance(patterns, dict) or not patterns:
            problems.append(f"patterns: must hold at least one [patterns.<name>] table (fix: {_TOP_KEYS['patterns']})")
        else:
            for name, table in patterns.items():
                rule = _rule(name, table, purpose, problems)
                if rule is not None:
                    rules[rule.pattern] = rule

    if problems:
        return None
    return LegalProfile(
        id=profile_id, version=version, title=title, jurisdiction=jurisdiction, purpose=purpose,
        legal_basis=legal_basis, rules=MappingProxyType(dict(sorted(rules.items(), key=lambda kv: kv[0].value))),
        pre_roll_s=pre, post_roll_s=post, retention_hours=int(retention), sha256=sha256, source=source,
    )


def _rule(name: str, table: Any, purpose: str | None, problems: list[str]) -> PatternRule | None:
    where = f"patterns.{name}"
    try:
        pattern = Pattern(name)
    except ValueError:
        problems.append(f"{where}: unknown pattern {name!r} (fix: use one of: {_PATTERN_NAMES})")
        return None
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table (fix: [{where}] with permitted = true or false)")
        return None
    for key in table:
        if key not in _RULE_KEYS:
            problems.append(f"{where}.{key}: unknown key (fix: remove it or use one of: "
                            f"{', '.join(sorted(_RULE_KEYS))})")
    permitted = table.get("permitted")
    if "permitted" not in table:
        problems.append(f"{where}.permitted: missing (fix: {_RULE_KEYS['permitted']})")
        return None
    if not isinstance(permitted, bool):
        problems.append(f"{where}.permitted = {permitted!r}: must be true or false (fix: {_RULE_KEYS['permitted']})")
        return None
    min_conf = _number(table, "min_confidence", f"{where}.min_confidence", 0, 1, DEFAULT_MIN_CONFIDENCE,
                       problems, _RULE_KEYS["min_confidence"])
    min_dur = _number(table, "min_duration_s", f"{where}.min_duration_s", 0, 600, DEFAULT_MIN_DURATION_S,
                      problems, _RULE_KEYS["min_duration_s"])
    if permitted and purpose is not None and pattern not in PURPOSES[purpose]:
        allowed = ", ".join(sorted(p.value for p in PURPOSES[purpose]))
        problems.append(
            f"{where}.permitted = true: profile purpose {purpose!r} may only permit the violent patterns "
            f"{allowed} (fix: set permitted = false, or use a profile whose purpose is "
            f"'crime-and-helpless-person', e.g. 'helpless-person')")
    return PatternRule(pattern, permitted, min_conf, min_dur)
