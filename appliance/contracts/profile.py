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
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.common.resources import data_dir
from appliance.common.schema import ConfigError, build, opt
from appliance.contracts.settings import LEGAL_MAX_RETENTION_HOURS
from appliance.contracts.types import CRIME_PATTERNS, Pattern, ProfileRef

#: The profile file format this code reads (docs/legal-profiles.md).
FORMAT_VERSION = 1

#: What the law lets the analysis look for → the patterns such a profile may permit.
PURPOSES: Mapping[str, frozenset[Pattern]] = MappingProxyType({
    "crime": CRIME_PATTERNS,
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
    return Path(profiles_dir) if profiles_dir else data_dir("profiles")


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
    doc = build(ProfileFile, data, "", problems)
    _check_meaning(data, problems, expected_id)
    if problems or doc is None:
        raise ConfigError(source, problems)
    rules = {pattern: PatternRule(pattern, section.permitted, section.min_confidence, section.min_duration_s)
             for pattern, section in doc.patterns.items()}
    return LegalProfile(
        id=doc.id, version=doc.version, title=doc.title, jurisdiction=doc.jurisdiction, purpose=doc.purpose,
        legal_basis=doc.legal_basis, rules=MappingProxyType(dict(sorted(rules.items(), key=lambda kv: kv[0].value))),
        pre_roll_s=doc.pre_roll_s, post_roll_s=doc.post_roll_s, retention_hours=doc.retention_hours,
        sha256=hashlib.sha256(raw).hexdigest(), source=source,
    )


# ---------------------------------------------------------------------------------------
# The file as written (validated by appliance.common.schema: every problem found is reported,
# each naming its key and the fix), then what the keys must mean together.


@dataclass(frozen=True)
class PatternSection:
    permitted: bool = opt(fix="permitted = true or false")
    min_confidence: float = opt(DEFAULT_MIN_CONFIDENCE, lo=0, hi=1, span=True,
                                fix="a confidence 0..1, e.g. min_confidence = 0.6")
    min_duration_s: float = opt(DEFAULT_MIN_DURATION_S, lo=0, hi=600, span=True,
                                fix="seconds 0..600, e.g. min_duration_s = 0.5")


@dataclass(frozen=True, kw_only=True)
class ProfileFile:
    format: int = opt(fix=f"format = {FORMAT_VERSION} (the version of docs/legal-profiles.md this file follows)")
    id: str = opt(nonempty=True, max_len=64, fix="the file name without .toml, e.g. id = \"bw-polg-44-4\"")
    version: str = opt(nonempty=True, max_len=64, fix="a version string bumped with every edit, e.g. version = \"2026.1\"")
    title: str = opt(nonempty=True, max_len=300, fix="one line for people, e.g. title = \"§ 44 Abs. 4 PolG BW\"")
    jurisdiction: str = opt(nonempty=True, max_len=64, fix="where the legal basis applies, e.g. jurisdiction = \"DE-BW\"")
    purpose: str = opt(choices=tuple(PURPOSES), fix="purpose = \"crime\" or \"crime-and-helpless-person\"")
    legal_basis: str = opt(nonempty=True, max_len=10_000, fix="the norm and the reasoning, in prose")
    pre_roll_s: float = opt(DEFAULT_PRE_ROLL_S, lo=0, hi=30, span=True,
                            fix="seconds of video before the event, 0..30, e.g. 5")
    post_roll_s: float = opt(DEFAULT_POST_ROLL_S, lo=0, hi=30, span=True,
                             fix="seconds of video after the event, 0..30, e.g. 5")
    retention_hours: int = opt(DEFAULT_RETENTION_HOURS, lo=1, hi=LEGAL_MAX_RETENTION_HOURS, span=True,
                               fix=f"hours the station keeps a clip, 1..{LEGAL_MAX_RETENTION_HOURS:g}, e.g. 72")
    patterns: Mapping[Pattern, PatternSection] = opt(
        nonempty=True, key_noun="pattern",
        fix="[patterns.<name>] tables, e.g. [patterns.strike] with permitted = true")


def _check_meaning(data: dict[str, Any], problems: list[str], expected_id: str | None) -> None:
    """What the schema cannot say: the format version, the id and the purpose's limits."""
    fmt = data.get("format")
    if "format" in data and (not isinstance(fmt, int) or isinstance(fmt, bool) or fmt != FORMAT_VERSION):
        problems.append(f"format = {fmt!r}: this appliance reads profile format {FORMAT_VERSION} only "
                        f"(fix: convert the file per docs/legal-profiles.md, or update the appliance)")
    profile_id = data.get("id")
    if isinstance(profile_id, str) and profile_id.strip() and len(profile_id) <= 64:
        profile_id = profile_id.strip()
        if not PROFILE_ID_RE.match(profile_id):
            problems.append(f"id = {profile_id!r}: must be lower-case letters, digits and '-' "
                            f"(fix: e.g. id = \"bw-polg-44-4\")")
        if expected_id is not None and profile_id != expected_id:
            problems.append(f"id = {profile_id!r}: does not match the file name {expected_id!r}.toml "
                            f"(fix: set id = \"{expected_id}\" or rename the file)")
    purpose, patterns = data.get("purpose"), data.get("patterns")
    if not isinstance(purpose, str) or purpose not in PURPOSES or not isinstance(patterns, dict):
        return
    allowed = PURPOSES[purpose]
    for name, table in patterns.items():
        if (isinstance(table, dict) and table.get("permitted") is True
                and name in Pattern._value2member_map_ and Pattern(name) not in allowed):
            names = ", ".join(sorted(p.value for p in allowed))
            problems.append(
                f"patterns.{name}.permitted = true: profile purpose {purpose!r} may only permit the crime "
                f"patterns {names} (fix: set permitted = false, or use a profile whose purpose is "
                f"'crime-and-helpless-person', e.g. 'helpless-person')")
