"""`appliance audit ...`: the data protection officer's tools (docs/audit-log.md).

    verify LOG [--checkpoints FILE | --station-dir DIR --device ID] [--key PUB ...] [--json]
    report LOG... --from T --to T --format html|csv|json [-o FILE] [--key PUB ...] [--config CFG]
    checkpoints LOG [--after N]                      the log's own checkpoints (JSON list)
    checkpoints --station-dir DIR --device ID            what the station holds, for verify --checkpoints
    hold set|release|list --station-dir DIR ...          legal holds (recorded in the station's log)
    retention run --station-dir DIR [--config CFG] [--dry-run]   the job appliance-retention.service runs
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError

EXIT_OK, EXIT_TAMPERED = 0, 1
#: `audit report` without --from covers this many days before --to (default now).
REPORT_DEFAULT_DAYS = 30
#: The station directory, as `appliance station` uses it.
STATION_DIR = Path(os.environ.get("APPLIANCE_STATION_DIR", "/var/lib/appliance-station"))


def register(sub) -> None:
    """Adds the `audit` command group to the top-level parser."""
    p = sub.add_parser("audit", help="tamper-evident logs: verify, report, legal holds, retention",
                       description="Data protection officer's tools over the tamper-evident audit logs.")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    v = asub.add_parser("verify", help="check a log's chain, signatures and the station's checkpoints",
                        description="Checks the hash chain, the checkpoint signatures and, with the "
                                    "station's checkpoints, that no tail was cut and nothing was rolled "
                                    "back. Exit 0 intact, 1 a problem (the first bad record is named), "
                                    "2 unreadable input.")
    v.add_argument("log", type=Path, help="the audit log (JSON Lines); its sealed segments LOG.<first>-<last> "
                   "beside it are read too, in order")
    v.add_argument("--checkpoints", type=Path, help="checkpoints the station holds for this log "
                   "(JSON list or JSON Lines, e.g. from 'appliance audit checkpoints --station')")
    v.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                   help="read the checkpoints (and, without --key, the device's "
                   "registered key) from this station directory")
    v.add_argument("--device", help="device id whose checkpoints to read with --station")
    v.add_argument("--key", type=Path, action="append", default=[],
                   help="trusted Ed25519 public key (PEM); repeat for several")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_verify)

    r = asub.add_parser("report", help="records-of-processing report for a period",
                        description="Triggers, detections not permitted, clips stored/viewed/exported/"
                                    "deleted and retention compliance over appliance and station logs.")
    r.add_argument("logs", type=Path, nargs="+", help="appliance and/or station audit logs")
    r.add_argument("--from", dest="start", help="start, ISO-8601 (UTC if no offset), inclusive "
                   "(default: 30 days before --to)")
    r.add_argument("--to", dest="end", help="end, ISO-8601, exclusive (default: now)")
    r.add_argument("--tz", default=None, help="time zone of the times shown, an IANA name such as "
                   "Europe/Berlin (default: $TZ, else this machine's, else UTC)")
    r.add_argument("--format", choices=("html", "csv", "json"), default="html")
    r.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    r.add_argument("--key", type=Path, action="append", default=[], help="trusted public key(s) for the "
                   "integrity column (PEM)")
    r.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                   help="also trust the keys this station knows for the integrity column: every registered "
                        "device's and the station's own (as `verify --station-dir` does)")
    r.add_argument("--config", type=Path, help="appliance/station config for retention periods")
    r.add_argument("--grace", type=float, default=None, help="seconds past a deadline still on time "
                   "(default: audit.retention_grace_s, 1800)")
    r.set_defaults(func=cmd_report)

    c = asub.add_parser("checkpoints", help="print checkpoints as a JSON list")
    c.add_argument("log", type=Path, nargs="?", help="a log: print its own checkpoints")
    c.add_argument("--after", type=int, default=-1, help="only checkpoints with index n > AFTER")
    c.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                   help="print what this station holds for --device instead")
    c.add_argument("--device", help="device id (with --station)")
    c.set_defaults(func=cmd_checkpoints)

    h = asub.add_parser("hold", help="legal holds on stored clips")
    hsub = h.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    hs = hsub.add_parser("set", help="keep a clip past its retention period")
    hs.add_argument("clip_id", metavar="CLIP", help="the alarm id DEVICE#SEQUENCE or the clip id (station list)")
    hs.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                    default=STATION_DIR, help=f"station directory, default {STATION_DIR}")
    hs.add_argument("--reason", required=True, help="why, e.g. case number or court order (recorded)")
    hs.add_argument("--by", required=True, help="who sets the hold (recorded)")
    hs.add_argument("--until", required=True, help="when the hold ends, ISO-8601")
    hs.set_defaults(func=cmd_hold_set)
    hr = hsub.add_parser("release", help="end a clip's legal holds")
    hr.add_argument("clip_id")
    hr.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                    default=STATION_DIR, help=f"station directory, default {STATION_DIR}")
    hr.add_argument("--reason", required=True)
    hr.add_argument("--by", required=True)
    hr.set_defaults(func=cmd_hold_release)
    hl = hsub.add_parser("list", help="list legal holds")
    hl.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                    default=STATION_DIR, help=f"station directory, default {STATION_DIR}")
    hl.add_argument("--all", action="store_true", help="include released and expired holds")
    hl.add_argument("--json", action="store_true")
    hl.set_defaults(func=cmd_hold_list)

    rt = asub.add_parser("retention", help="the retention job")
    rsub = rt.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    rr = rsub.add_parser("run", help="delete expired, unheld clips and record each deletion")
    rr.add_argument("--station-dir", "--station", dest="station", type=Path, metavar="DIR",
                    default=STATION_DIR, help=f"station directory, default {STATION_DIR}")
    rr.add_argument("--config", type=Path, help="config with [audit] retention settings (default: 72 h "
                    "or each profile's retention_hours)")
    rr.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    rr.add_argument("--json", action="store_true")
    rr.set_defaults(func=cmd_retention_run)


# ---------------------------------------------------------------------------------------


def _log_exists(path: Path) -> bool:
    """The active file, or (after a crash right after a rotation) only its sealed segments."""
    from appliance.contracts.audit.segments import log_files
    return bool(log_files(path))


def _keys(paths: list[Path]) -> list:
    from appliance.contracts.audit.canonical import load_public_key
    return [load_public_key(p) for p in paths]


def _station_checkpoints(station: Path, device: str | None) -> list[Any]:
    if not device:
        raise InputError("--station-dir needs --device ID (whose checkpoints to read)")
    from appliance.station.store import checkpoints_for
    return [item.get("checkpoint", item) if isinstance(item, dict) else item
            for item in checkpoints_for(station, device)]


def _station_known_keys(station: Path) -> dict[str, list[Any]]:
    """Log device id → the keys to trust for it: every registered device's signing key (disabled
    ones too) and, for the station's own log (device "station"), the station's signing key."""
    from appliance.station.keys import station_log_public_key
    from appliance.station.registry import DeviceRegistry
    if not _has_station_db(station):
        raise InputError(f"no station database in {station} (fix: --station-dir DIR of the station)")
    registry = DeviceRegistry(station)
    try:
        keys = {d.device_id: [k] for d in registry.list_devices()
                if (k := registry.signing_public_any(d.device_id)) is not None}
    finally:
        registry.close()
    own = station_log_public_key(station)   # the audit writer's key once it is enabled (issue 12)
    if own is not None:
        keys["station"] = [own]
    return keys


def _registered_key(station: Path, device: str) -> Any:
    from appliance.station.registry import DeviceRegistry
    registry = DeviceRegistry(station)
    try:
        return registry.signing_public_any(device)
    finally:
        registry.close()


def cmd_verify(args) -> int:
    from appliance.contracts.audit.checkpoints import load_checkpoints_file
    from appliance.contracts.audit.verify import verify_log

    if not _log_exists(args.log):
        raise InputError(f"no audit log at {args.log}")
    keys = _keys(args.key)
    station_cps = None
    if args.checkpoints is not None:
        station_cps = load_checkpoints_file(args.checkpoints)
    if args.station is not None:
        station_cps = (station_cps or []) + _station_checkpoints(args.station, args.device)
        if not keys:
            key = _registered_key(args.station, args.device)
            if key is not None:
                keys = [key]
    result = verify_log(args.log, keys, station_cps)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.summary())
        for p in result.problems[1:20]:
            print(f"  also: {p}")
        if result.problem_count > 20:
            print(f"  ... and {result.problem_count - 20} more")
        for w in result.warnings:
            print(f"  note: {w}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_TAMPERED


def _retention_settings(config: Path | None) -> tuple[Any, Any]:
    """(RetentionPolicy, AuditConfig) from a config file, or the defaults."""
    from appliance.contracts.settings import load_station_settings
    from appliance.station.retention import RetentionPolicy
    cfg = load_station_settings(config)
    profiles_dir = cfg.policy.profiles_dir or None
    return RetentionPolicy.from_config(cfg.audit, profiles_dir), cfg.audit


def _local_zone() -> str:
    """The IANA name of this machine's time zone ($TZ, /etc/timezone, /etc/localtime), else UTC."""
    if os.environ.get("TZ", "").strip(":"):
        return os.environ["TZ"].lstrip(":")
    try:
        return Path("/etc/timezone").read_text().strip() or "UTC"
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return "UTC"
    return target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "UTC"


def cmd_report(args) -> int:
    from appliance.contracts.audit.canonical import parse_time
    from appliance.station.audit.report import RENDERERS, build_report, check_time_zone

    for log_path in args.logs:
        if not _log_exists(log_path):
            raise InputError(f"no audit log at {log_path}")
    policy, audit_cfg = _retention_settings(args.config)
    grace = audit_cfg.retention_grace_s if args.grace is None else args.grace
    if grace < 0:
        raise InputError("--grace must be >= 0 seconds")
    end = parse_time(args.end) if args.end else time.time()
    start = parse_time(args.start) if args.start else end - REPORT_DEFAULT_DAYS * 86400
    zone = check_time_zone(args.tz or _local_zone())
    report = build_report(args.logs, start, end, keys=_keys(args.key),
                          keys_by_device=_station_known_keys(args.station) if args.station is not None else None,
                          grace_s=grace, default_retention_hours=policy.default_hours,
                          retention_hours=dict(policy.per_profile), time_zone=zone)
    text = RENDERERS[args.format](report)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"wrote {args.output}: {report['period']['from'][:10]} to {report['period']['to'][:10]} "
              f"(times in {zone}), {report['triggers']['total']} alarms, {len(report['accesses'])} accesses, "
              f"{len(report['refused_accesses'])} refused, retention "
              f"{'compliant' if report['retention']['compliant'] else 'NOT compliant'}", file=sys.stderr)
    return 0


def cmd_checkpoints(args) -> int:
    from appliance.contracts.audit.log import read_checkpoints
    if args.station is not None:
        items = [c for c in _station_checkpoints(args.station, args.device)
                 if not isinstance(c, dict) or c.get("n", -1) > args.after]
    elif args.log is not None:
        if not _log_exists(args.log):
            raise InputError(f"no audit log at {args.log}")
        items = read_checkpoints(args.log, args.after)
    else:
        raise InputError("give a LOG or --station-dir DIR --device ID")
    print(json.dumps(items, indent=1))
    return 0


# -- station side: holds and retention ---------------------------------------------------


def _station_log(station: Path) -> Any:
    """The station's audit log, signed with the station's signing key (as the station does)."""
    from appliance.station.db import db_path
    from appliance.station.keys import open_station_audit_log

    if not db_path(station).exists():
        raise InputError(f"no station database in {station} (fix: --station-dir DIR of the station)")
    return open_station_audit_log(station)


def _has_station_db(station: Path) -> bool:
    from appliance.station.db import db_path
    return db_path(station).exists()


def _holds(station: Path, audit: Any) -> Any:
    from appliance.station.db import db_path, require_owner
    from appliance.station.retention import LegalHolds
    if not db_path(station).exists():   # never create a holds file beside the wrong directory
        raise InputError(f"no station database in {station} (fix: --station-dir DIR of the station)")
    require_owner(station)
    return LegalHolds.open(station, audit=audit)


def cmd_hold_set(args) -> int:
    from appliance.contracts.audit.canonical import parse_time, utc_iso
    from appliance.station.clip_facts import resolve_clip_id
    until = parse_time(args.until)
    audit = _station_log(args.station)
    try:
        args.clip_id = resolve_clip_id(args.station, args.clip_id)
    except BaseException:
        audit.close()
        raise
    holds = _holds(args.station, audit)
    try:
        hold = holds.set(args.clip_id, reason=args.reason, by=args.by, until=until)
    finally:
        holds.close()
        audit.close()
    print(f"hold #{hold.id} on {hold.clip_id} until {utc_iso(hold.until)} (by {hold.by}: {hold.reason})")
    return 0


def cmd_hold_release(args) -> int:
    from appliance.station.clip_facts import resolve_clip_id
    args.clip_id = resolve_clip_id(args.station, args.clip_id) if _has_station_db(args.station) else args.clip_id
    audit = _station_log(args.station)
    holds = _holds(args.station, audit)
    try:
        n = holds.release(args.clip_id, reason=args.reason, by=args.by)
    finally:
        holds.close()
        audit.close()
    if n == 0:
        raise InputError(f"no active legal hold on {args.clip_id}")
    print(f"released {n} hold(s) on {args.clip_id}")
    return 0


def cmd_hold_list(args) -> int:
    holds = _holds(args.station, None)
    try:
        now = time.time()
        rows = [h for h in holds.holds() if args.all or h.active(now)]
    finally:
        holds.close()
    for h in rows:
        j = h.to_json()
        if args.json:
            print(json.dumps(j, sort_keys=True))
        else:
            state = "active" if h.active(now) else ("released" if h.released_at else "expired")
            print(f"#{h.id} {h.clip_id} {state} until {j['until']} by {h.by}: {h.reason}")
    return 0


def cmd_retention_run(args) -> int:
    from appliance.station.retention import RetentionJob, StationClipStore

    policy, _ = _retention_settings(args.config)
    store = StationClipStore(args.station)
    try:
        audit = _station_log(args.station)
    except BaseException:
        store.close()
        raise
    holds = _holds(args.station, audit)
    try:
        result = RetentionJob(store, policy, audit=audit, holds=holds).run(dry_run=args.dry_run)
    finally:
        holds.close()
        audit.close()
        store.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for d in result.deleted:
            print(f"{verb} {d.clip.clip_id} ({d.clip.device_id}, {d.clip.profile_id or '?'}) "
                  f"envelope {d.clip.envelope_sha256[:16]}")
        from appliance.station.audit.report import duration_words

        now = time.time()
        stamp = "%Y-%m-%d %H:%M %Z"
        for x in result.schedule:
            expires = time.strftime(stamp, time.localtime(x.expires_at))
            if x.hold is not None:
                until = time.strftime(stamp, time.localtime(x.hold.until))
                why = (f"legal hold #{x.hold.id} by {x.hold.by} until {until} ({x.hold.reason}); "
                       f"{'expired' if x.expires_at <= now else 'expires'} {expires}")
            else:
                why = f"expires {expires}"
            after = time.strftime(stamp, time.localtime(x.delete_after))
            print(f"keep {x.clip.clip_id} ({x.clip.device_id}, {x.clip.pattern}): {why}; deleted after {after} "
                  f"(in {duration_words(max(0.0, x.delete_after - now))})")
        holds = sum(x.hold is not None for x in result.schedule)
        print(f"{len(result.deleted)} {verb}, {holds} under legal hold ({len(result.held)} of them past their "
              f"expiry), {result.kept} within retention, {len(result.errors)} error(s)", file=sys.stderr)
        for e in result.errors:
            print(f"error: {e}", file=sys.stderr)
    return 0 if not result.errors else 1
