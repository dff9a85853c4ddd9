"""The sections of the device config file (appliance.toml) that the station reads too.

The box validates the whole file (:mod:`appliance.box.config`). The station's officer tools
(`audit report --config`, `audit retention run --config`) read only ``[audit]`` (retention
periods) and ``[policy]`` (where the legal profiles are): :func:`parse_station_settings`
validates those two sections strictly and accepts the box's other sections unread, so one
file can serve both sides, while a misspelt section name is still refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.schema import ConfigError, build, opt, read_toml

#: Longest retention period accepted (90 days, as legal profiles allow); docs/audit-log.md §5.
LEGAL_MAX_RETENTION_HOURS = 2160.0

#: Top-level sections of appliance.toml that only the box reads (tests/test_layering.py keeps
#: this in step with appliance.box.config.AppConfig).
BOX_SECTIONS = frozenset({"device", "camera", "ring", "analysis", "pose", "tracking", "behaviour", "objects",
                          "zones", "privacy_masks", "seal", "redaction", "spool", "uplink", "station",
                          "tamper"})


@dataclass(frozen=True)
class PolicyConfig:
    profile: str = opt("bw-polg-44-4", fix="a legal profile id from provisioning/profiles/, e.g. 'bw-polg-44-4'")
    profiles_dir: str = opt("", fix="directory of profile TOML files; empty = bundled provisioning/profiles/")


@dataclass(frozen=True)
class RetentionRule:
    profile: str = opt(fix="the legal profile id this period applies to, e.g. 'bw-polg-44-4'")
    hours: float = opt(lo=1, hi=LEGAL_MAX_RETENTION_HOURS,
                       fix="retention period in hours for clips permitted by this profile, e.g. 72")


@dataclass(frozen=True)
class AuditConfig:
    log: str = opt("", fix="path of the audit log; empty = <state_dir>/audit.jsonl")
    checkpoint_every: int = opt(100, lo=1, hi=1_000_000, fix="records between signed checkpoints, e.g. 100")
    checkpoint_interval_s: float = opt(300.0, lo=1, hi=86400,
                                       fix="an append makes a checkpoint when the last is older than this, e.g. 300")
    segment_max_bytes: int = opt(16 * 1024**2, lo=64 * 1024, hi=2**31,
                                 fix="size in bytes at which the active audit log file is sealed into a "
                                     "segment and a new one started (docs/audit-log.md §9), e.g. 16777216")
    retention_hours: float = opt(72.0, lo=1, hi=LEGAL_MAX_RETENTION_HOURS,
                                 fix="default clip retention in hours (Mannheim: 72), at most "
                                     f"{LEGAL_MAX_RETENTION_HOURS:.0f}")
    retention: tuple[RetentionRule, ...] = opt((), fix="[[audit.retention]] tables with profile and hours")
    retention_grace_s: float = opt(1800.0, lo=0, hi=86400,
                                   fix="seconds past expiry a deletion still counts as on time in reports, e.g. 1800")


@dataclass(frozen=True)
class StationSettings:
    """What the station's officer tools read from a config file."""

    policy: PolicyConfig = opt(fix="", factory=PolicyConfig)
    audit: AuditConfig = opt(fix="", factory=AuditConfig)


def parse_station_settings(data: dict[str, Any], source: str = "<config>") -> StationSettings:
    problems: list[str] = []
    settings = build(StationSettings, data, "", problems, skip=BOX_SECTIONS)
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_station_settings(path: str | Path | None) -> StationSettings:
    """The settings in ``path``, or the defaults when no file is given."""
    if path is None:
        return StationSettings()
    return parse_station_settings(read_toml(path), str(path))
