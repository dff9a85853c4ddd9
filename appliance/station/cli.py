"""`appliance station ...`: keys, the receiver, listing, and decryption for an operator.

    appliance station keygen  --station-dir DIR [--kem MLKEM768_X25519|X25519] [--force]
    appliance station evidence-key init --station-dir DIR --out PRIVATE_FILE
    appliance station serve   --station-dir DIR [--bind tcp://0.0.0.0:7100] [--ready-file F]
    appliance station list    --station-dir DIR [--device ID] [--json]
    appliance station export  CLIP_ID OUT_DIR --station-dir DIR --operator NAME --reason TEXT [--evidence-key FILE]
    appliance station decrypt ENVELOPE_FILE OUT_DIR --station-dir DIR --operator NAME --reason TEXT [--evidence-key FILE]
    appliance station devices list --station-dir DIR
    appliance station devices add ...     (appliance/station/devices.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError

DEFAULT_DIR = os.environ.get("APPLIANCE_STATION_DIR", "/var/lib/appliance-station")
DEFAULT_BIND = "tcp://0.0.0.0:7100"
#: Four missed heartbeats at the default 30 s interval ([uplink] heartbeat_s).
STALE_AFTER_S = 120.0
#: A device enrolled but never heard from is "not yet seen", not STALE, for this long: the box
#: is enrolled at the station before the technician mounts and starts it.
NOT_SEEN_GRACE_S = 24 * 3600.0
#: `devices list` exit codes for monitoring: a silent device outranks a tampered camera.
EXIT_STALE, EXIT_TAMPER = 3, 4


def _dir_arg(p: argparse.ArgumentParser, *, storage: bool = True) -> None:
    # One name for the station directory in every station and audit command; --dir (the old
    # spelling of the station commands) and --station (of the audit commands) still work.
    p.add_argument("--station-dir", "--dir", dest="dir", default=DEFAULT_DIR, type=Path, metavar="DIR",
                   help=f"station directory (keys, database, envelopes); default {DEFAULT_DIR} "
                        f"or $APPLIANCE_STATION_DIR")
    if storage:
        p.add_argument("--db", metavar="URL", help="PostgreSQL database shared by several receivers, e.g. "
                       "postgresql://station@db.example/appliance (default: $APPLIANCE_STATION_DB, "
                       "<dir>/storage.toml, else SQLite <dir>/station.db)")
        p.add_argument("--store", metavar="URL", help="S3-compatible object store for the envelopes, e.g. "
                       "s3://appliance-clips?endpoint=https://s3.example (default: $APPLIANCE_STATION_STORE, "
                       "<dir>/storage.toml, else files in <dir>/envelopes)")


def _settings(args) -> Any:
    from appliance.station.storage import resolve_settings

    return resolve_settings(args.dir, getattr(args, "db", None), getattr(args, "store", None))


def _access_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operator", help="who decrypts (required; recorded in the audit log)")
    p.add_argument("--reason", help="why, e.g. a case number (required; recorded in the audit log)")
    p.add_argument("--evidence-key", type=Path, metavar="FILE",
                   help="the evidence private key (from supervisors' custody): open the FULL rendition of a "
                        "version-2 clip, bystanders not pixelated; without it the station key opens the "
                        "redacted one")


def register(sub) -> None:
    """Adds the `station` command group to the top-level parser."""
    station = sub.add_parser("station", help="central station: keys, receiver, export")
    ssub = station.add_subparsers(dest="station_command", metavar="STATION_COMMAND", required=True)

    p = ssub.add_parser("keygen", help="generate the station's key pairs (private files 0600, never printed)")
    _dir_arg(p, storage=False)
    p.add_argument("--kem", default="MLKEM768_X25519", choices=("MLKEM768_X25519", "X25519"),
                   help="HPKE KEM for clip encryption (default: post-quantum hybrid MLKEM768_X25519)")
    p.add_argument("--force", action="store_true", help="replace existing keys (makes stored clips unreadable)")
    p.set_defaults(func=cmd_keygen)

    evidence = ssub.add_parser("evidence-key", help="the evidence key: the full (not bystander-pixelated) "
                               "video is sealed to it; its private half is kept off the station")
    esub = evidence.add_subparsers(dest="evidence_command", metavar="EVIDENCE_COMMAND", required=True)
    p = esub.add_parser("init", help="make the evidence key pair: public half into the station's keys "
                        "(and every new bundle), private half ONLY to --out (0600, never overwritten)")
    _dir_arg(p, storage=False)
    p.add_argument("--out", required=True, type=Path, metavar="PRIVATE_FILE",
                   help="where the evidence private key goes (removable media / supervisor custody; "
                        "never inside the station directory)")
    p.add_argument("--kem", choices=("MLKEM768_X25519", "X25519"),
                   help="HPKE KEM (default: the station HPKE key's)")
    p.set_defaults(func=cmd_evidence_key_init)

    p = ssub.add_parser("serve", help="receive envelopes, heartbeats and probes from enrolled devices")
    _dir_arg(p)
    p.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint to bind, default {DEFAULT_BIND}")
    p.add_argument("--ready-file", type=Path, help="write the bound endpoint here once listening")
    p.add_argument("--max-envelope-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest envelope accepted (default 64 MiB)")
    p.add_argument("--peer-rate", type=float, default=200.0, metavar="PER_SECOND",
                   help="requests per second one device may send on average (burst: twice that); more "
                        "are dropped unread and a device that keeps flooding, or does not read its "
                        "replies, is cut off for 10 s (default 200; an honest uplink sends one at a time)")
    p.add_argument("--no-audit", action="store_true", help="do not write <dir>/audit.jsonl (tests only)")
    p.set_defaults(func=cmd_serve)

    p = ssub.add_parser("list", help="list stored clips (metadata only; nothing is decrypted)")
    _dir_arg(p)
    p.add_argument("--device", help="only this device")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--config", type=Path, help="config with [audit] retention settings, as `audit retention run` "
                   "uses (default: each profile's retention_hours, else 72 h)")
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("export", help="verify and decrypt a stored clip: WebM + metadata + report")
    p.add_argument("clip_id", metavar="CLIP", help="the alarm id DEVICE#SEQUENCE or the clip id, as `station list` shows")
    p.add_argument("out_dir", type=Path)
    _dir_arg(p)
    _access_args(p)
    p.set_defaults(func=cmd_export)

    p = ssub.add_parser("decrypt", help="verify and decrypt an envelope file (e.g. taken from a spool)")
    p.add_argument("envelope", type=Path)
    p.add_argument("out_dir", type=Path)
    _dir_arg(p)
    _access_args(p)
    p.set_defaults(func=cmd_decrypt)

    writer = ssub.add_parser("audit-writer", help="the separate process that alone holds the station's audit "
                                                  "log and its key (appliance-station-audit.service)")
    wsub = writer.add_subparsers(dest="writer_command", metavar="WRITER_COMMAND", required=True)
    p = wsub.add_parser("serve", help="serve the station's audit log on a Unix socket (run as its own user)")
    p.add_argument("--audit-dir", type=Path, default=Path("/var/lib/appliance-station-audit"),
                   help="holds audit.jsonl and the key (created 0700 / 0600 on first start)")
    p.add_argument("--socket", default=None, help="Unix socket path (default /run/appliance-station-audit/audit.sock)")
    p.add_argument("--allow-user", action="append", default=[], metavar="USER",
                   help="a user whose processes may append (repeat; root and the writer's own user always may)")
    p.set_defaults(func=cmd_audit_writer_serve)
    p = wsub.add_parser("enable", help="send this station directory's audit records to the writer from now on")
    _dir_arg(p)
    p.add_argument("--socket", default=None, help="the writer's socket (default /run/appliance-station-audit/audit.sock)")
    p.set_defaults(func=cmd_audit_writer_enable)

    p = ssub.add_parser("migrate", help="move this station from SQLite + files to PostgreSQL + S3 "
                                        "(docs/storage.md); stop the receiver first")
    _dir_arg(p, storage=False)
    p.add_argument("--to-db", required=True, metavar="URL", help="target PostgreSQL, e.g. "
                   "postgresql://station@db.example/appliance (created tables: versioned migrations)")
    p.add_argument("--to-store", required=True, metavar="URL", help="target bucket, e.g. "
                   "s3://appliance-clips?endpoint=https://s3.example (credentials: AWS_ACCESS_KEY_ID/...)")
    p.add_argument("--remove-source", action="store_true",
                   help="after a verified copy, delete the envelope files from the station directory")
    p.set_defaults(func=cmd_migrate)

    devices = ssub.add_parser("devices", help="the registry of enrolled devices")
    dsub = devices.add_subparsers(dest="devices_command", metavar="DEVICES_COMMAND", required=True)
    p = dsub.add_parser("list", help="enrolled devices, key fingerprints, last-seen and camera tamper state; "
                                     "exit 3 if an enabled device is silent for longer than --stale-after, "
                                     "else 4 if an enabled device reports its camera covered, blinded, "
                                     "defocused, moved or frozen")
    _dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                   help="an enabled device not heard from (heartbeat, clip or probe) for this long is "
                        f"STALE: a dead box, a cut cable, a stopped uplink (default {STALE_AFTER_S:.0f}, "
                        "four missed 30-s heartbeats)")
    p.add_argument("--grace", type=float, default=NOT_SEEN_GRACE_S, metavar="SECONDS",
                   help="a device enrolled this recently and never heard from is 'not yet seen', not "
                        f"STALE (default {NOT_SEEN_GRACE_S:.0f}: a day to mount and start the box)")
    p.set_defaults(func=cmd_devices_list)
    for action, text in (("disable", "refuse a device's connections and clips until enabled again (its "
                                     "stored clips stay verifiable); closes its open session"),
                         ("enable", "accept a disabled device again"),
                         ("revoke", "never trust this device's keys again (stolen or compromised box); "
                                    "closes its open session; only a re-enrolment with new keys undoes it")):
        p = dsub.add_parser(action, help=text)
        p.add_argument("device_id", metavar="DEVICE_ID")
        _dir_arg(p)
        p.add_argument("--operator", required=True, help="who does it (recorded in the audit log)")
        p.add_argument("--reason", required=True, help="why, e.g. 'box stolen, case 2026-1187' (audited)")
        p.set_defaults(func=cmd_devices_status, status={"disable": "disabled", "enable": "enabled",
                                                         "revoke": "revoked"}[action])
    _register_provisioning_device_commands(dsub)

    p = ssub.add_parser("training-export", help="the operators' verdicts as a skeleton-only training set "
                                                "(JSON Lines; never pixels)")
    _dir_arg(p)
    p.add_argument("--console-dir", type=Path, default=os.environ.get("APPLIANCE_CONSOLE_DIR",
                                                                      "/var/lib/appliance-console"),
                   help="the console's directory (verdicts); default /var/lib/appliance-console")
    p.add_argument("--since", required=True, metavar="TIME",
                   help="verdicts given since this ISO-8601 time, e.g. 2026-11-01 or 2026-11-26T08:00:00Z")
    p.add_argument("--out", default="-", help="output file (default: stdout)")
    p.set_defaults(func=cmd_training_export)

    from appliance.station.console.cli import register as register_console

    register_console(ssub)


def _register_provisioning_device_commands(dsub) -> None:
    """`devices add`: the station half of enrolment (appliance/station/devices.py)."""
    from appliance.station import devices

    devices.register(dsub)


def _station_audit(station_dir: Path) -> Any:
    from appliance.station.keys import open_station_audit_log

    return open_station_audit_log(station_dir)


def cmd_keygen(args) -> int:
    from appliance.station.db import require_owner
    from appliance.station.keys import StationKeyPaths, generate_station_keys

    require_owner(args.dir)
    fingerprints = generate_station_keys(args.dir, kem=args.kem, force=args.force)
    paths = StationKeyPaths.of(args.dir)
    print(f"station keys written to {paths.directory} (private files mode 0600)")
    for name, fp in fingerprints.items():
        print(f"  {name:<22} {fp}")
    print("devices receive the public keys inside the signed station bundle, never as loose files.")
    print(f"next: start the receiver (appliance station serve --station-dir {args.dir}), then enrol each box: "
          f"appliance station devices add REQUEST.enrol.json --station-dir {args.dir} "
          "--endpoint tcp://HOST:7100 --profile bw-polg-44-4 --out bundle.json")
    return 0


def cmd_evidence_key_init(args) -> int:
    from appliance.station.db import require_owner
    from appliance.station.keys import StationKeyPaths, init_evidence_key

    require_owner(args.dir)
    public = init_evidence_key(args.dir, args.out, kem=args.kem)
    paths = StationKeyPaths.of(args.dir)
    print(f"evidence key ({public.kem}) fingerprint {public.fingerprint}")
    print(f"  public half:  {paths.evidence_public} (goes into every station bundle made from now on)")
    print(f"  private half: {args.out} (mode 0600): the only copy. Keep it offline, in supervisors' custody; "
          "it opens the full, not bystander-pixelated video of every clip sealed to it.")
    print(f"next: re-issue the bundle of each box (appliance station devices add REQUEST.enrol.json --replace "
          f"--station-dir {args.dir} ...) and import it there: a box seals version 2 once its bundle names "
          "this key")
    return 0


def cmd_serve(args) -> int:
    from appliance.common.service import ServiceNotifier, configure_logging
    from appliance.station.server import StationServer

    # journal under systemd (systemd/appliance-station.service), stderr otherwise
    configure_logging("appliance-station", level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    audit = None if args.no_audit else _station_audit(args.dir)
    server = StationServer(args.dir, args.bind, audit=audit, max_envelope_bytes=args.max_envelope_bytes,
                           ready_file=args.ready_file, notifier=ServiceNotifier(), storage=_settings(args),
                           peer_rate=args.peer_rate)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    try:
        server.serve_forever()
    finally:
        if audit is not None:
            audit.close()
    return 0


def cmd_training_export(args) -> int:
    from appliance.contracts.audit.canonical import parse_time
    from appliance.station.console.service import open_console_audit_log
    from appliance.station.training_export import write_training_export

    since_ms = int(parse_time(args.since) * 1000)
    audit = open_console_audit_log(args.console_dir)
    try:
        counts = write_training_export(args.dir, args.console_dir, args.out, since_unix_ms=since_ms, audit=audit,
                                       user=os.environ.get("SUDO_USER") or os.environ.get("USER") or "cli")
    finally:
        audit.close()
    total = sum(counts.values())
    print(f"{total} verdict(s) exported ({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'}); "
          f"skeletons and features only, no pixels", file=sys.stderr)
    return 0


def cmd_migrate(args) -> int:
    from appliance.station.migrate import migrate_site
    from appliance.station.storage import StorageSettings, resolve_settings

    target = resolve_settings(args.dir, args.to_db, args.to_store)
    audit = _station_audit(args.dir)
    step = [0]

    def progress(done: int, total: int) -> None:
        if done == total or done - step[0] >= 1000:
            step[0] = done
            print(f"  {done}/{total} envelopes copied", file=sys.stderr)

    try:
        result = migrate_site(args.dir, StorageSettings(target.db, target.store), audit=audit,
                              remove_source=args.remove_source, progress=progress)
    finally:
        audit.close()
    rows = ", ".join(f"{n} {t}" for t, n in result.rows.items())
    print(f"migrated {result.clips} clip(s) ({result.clips_copied} new in the target, {result.bytes} bytes) "
          f"and {rows} to {target.describe()}")
    print(f"wrote {result.storage_file}: every command on {args.dir} now uses it; start the receivers with the "
          f"same --dir (or --db/--store)")
    if args.remove_source:
        print(f"removed {result.source_files_removed} envelope file(s) from {args.dir / 'envelopes'}")
    else:
        print(f"the envelope files in {args.dir / 'envelopes'} are still there: once checked, run again with "
              f"--remove-source (retention no longer sees them)")
    return 0


def cmd_list(args) -> int:
    from appliance.station.clip_facts import clip_facts
    from appliance.station.store import ClipStore

    store = ClipStore(args.dir, settings=_settings(args))
    try:
        clips = store.list_clips(args.device)
    finally:
        store.close()
    facts = clip_facts(args.dir, clips, config=args.config, settings=_settings(args))
    rows = []
    for c in clips:
        f = facts[c.clip_id]
        rows.append({"clip_id": c.clip_id, "alarm": f"{c.device_id}#{c.sequence}", "device_id": c.device_id,
                     "sequence": c.sequence, "pattern": c.pattern, "created_unix_ms": c.created_unix_ms,
                     "received_unix_ms": c.received_unix_ms, "bytes": c.bytes,
                     "profile": c.header.get("profile", {}).get("id", ""), **f})
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0

    def when(ms: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "-"

    zone = time.strftime("%Z")
    table: list[tuple[str, ...]] = [("ALARM", "CLIP ID", "DEVICE", "PATTERN", f"RECEIVED ({zone})", f"EXPIRES ({zone})", "HELD",
              "VIEWED", "CLIP")]
    for r in rows:
        held = f"until {when(r['held_until_unix_ms'])}" if r["held_until_unix_ms"] else "no"
        complete = {True: "complete", False: f"INCOMPLETE ({r['covered_s']:.1f} of {r['requested_s']:.1f} s)",
                    None: "?"}[r["complete"]]
        table.append((r["alarm"], r["clip_id"], r["device_id"], r["pattern"], when(r["received_unix_ms"]),
                      when(r["expires_unix_ms"]), held, f"{r['accesses']}x" if r["accesses"] else "never", complete))
    widths = [max(len(str(cells[i])) for cells in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())
    incomplete = sum(r["complete"] is False for r in rows)
    print(f"{len(clips)} clip(s)" + (f", {incomplete} shorter than their trigger asked for (see docs/clip.md, "
                                     "\"Short clips\")" if incomplete else ""), file=sys.stderr)
    return 0


def _print_export(result) -> int:
    r = result.report
    print(f"wrote {result.webm}, {result.metadata}, {result.report_path}")
    print(f"device {r['device_id']} (key {r['device_signing_key']}), sequence {r['sequence']}: signature valid")
    print(f"rendition: {r['rendition']} (envelope version {r['envelope_version']}): bystanders {r['bystanders']}")
    f = r["frames"]
    w = r.get("window") or {}
    if w.get("complete") is False:
        (a, b), (c, d) = w["requested_s"], w["covered_s"]
        print(f"INCOMPLETE clip: the trigger asked for {a:.1f}…{b:.1f} s, the clip holds {c:.1f}…{d:.1f} s: {w['note']}")
    if r["verdict"] == "intact":
        print(f"frames: {f['decoded']} decoded, all SHA-256 match the sealed list: intact")
        print(f"next: watch {result.webm.name}; this copy is outside the station's retention (the officer's "
              "report lists every export): delete it when the case no longer needs it")
        return 0
    print(f"frames: ALTERED - mismatched {f['mismatched_frames']}, missing {f['missing_frames']}, "
          f"extra {f['extra_frames']}")
    print("next: do not rely on this clip; keep the report and tell the data protection officer")
    return 6


def _audit_for_access(args, action: str) -> Any:
    from appliance.station.export import require_operator

    try:
        require_operator(args.operator, args.reason)  # refuse before opening any clip
    except InputError as exc:
        _record_refusal(args, action, str(exc))
        raise
    return _station_audit(args.dir)


def _record_refusal(args, action: str, why: str, audit: Any = None) -> None:
    """A refused access attempt goes into the station's audit log too (the officer's report
    lists them); best effort: the refusal itself must never be masked by a logging error."""
    from appliance.common.errors import ApplianceError
    from appliance.station.db import db_path

    fields = {"action": action, "clip_id": getattr(args, "clip_id", None) or str(getattr(args, "envelope", "")),
              "operator": (args.operator or "").strip(), "reason": (args.reason or "").strip(), "refused": why}
    try:
        if audit is not None:
            audit.append("station.access_refused", **fields)
        elif db_path(args.dir).exists():
            log = _station_audit(args.dir)
            try:
                log.append("station.access_refused", **fields)
            finally:
                log.close()
    except (ApplianceError, OSError) as exc:
        logging.getLogger("appliance.station").warning("refused access not recorded: %s", exc)


def cmd_export(args) -> int:
    from appliance.station.clip_facts import resolve_clip_id
    from appliance.station.export import export_clip

    audit = _audit_for_access(args, "export")
    try:
        args.clip_id = resolve_clip_id(args.dir, args.clip_id, _settings(args))
        result = export_clip(args.dir, args.clip_id, args.out_dir, operator=args.operator, reason=args.reason,
                             audit=audit, settings=_settings(args), evidence_key=args.evidence_key)
    except InputError as exc:
        _record_refusal(args, "export", str(exc), audit)
        raise
    finally:
        audit.close()
    return _print_export(result)


def cmd_decrypt(args) -> int:
    from appliance.station.export import decrypt_envelope_to

    audit = _audit_for_access(args, "decrypt")
    try:
        data = args.envelope.read_bytes()
    except OSError as exc:
        audit.close()
        raise InputError(f"{args.envelope}: cannot read: {exc.strerror or exc}") from None
    try:
        name = args.envelope.name.removesuffix(".env")
        return _print_export(decrypt_envelope_to(data, args.out_dir, name, station_dir=args.dir, settings=_settings(args),
                                                 operator=args.operator, reason=args.reason, audit=audit,
                                                 evidence_key=args.evidence_key))
    finally:
        audit.close()


def cmd_audit_writer_serve(args) -> int:
    from appliance.common.service import ServiceNotifier, configure_logging
    from appliance.station.audit_writer import DEFAULT_SOCKET, AuditWriter

    configure_logging("appliance-station-audit")
    writer = AuditWriter(args.audit_dir, args.socket or DEFAULT_SOCKET, allowed_users=args.allow_user)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: writer.stop())
    writer.serve_forever(ServiceNotifier())
    return 0


def cmd_audit_writer_enable(args) -> int:
    from appliance.station.audit_writer import DEFAULT_SOCKET, AuditWriterClient, enable

    socket_path = args.socket or DEFAULT_SOCKET
    with AuditWriterClient(socket_path) as client:   # refuse to point at a writer that is not there
        client.append("station.audit_writer_enabled", station_dir=str(Path(args.dir).resolve()))
    path = enable(args.dir, socket_path)
    local = Path(args.dir) / "audit.jsonl"
    print(f"{path}: station audit records now go to the writer at {socket_path}")
    if local.exists():
        print(f"the earlier local log {local} is kept as it is: verify it with the station signing key "
              "and archive it", file=sys.stderr)
    return 0


def cmd_devices_status(args) -> int:
    from appliance.contracts.identifiers import DEVICE_ID_RE
    from appliance.station.registry import DeviceRegistry

    if not DEVICE_ID_RE.fullmatch(args.device_id):
        raise InputError(f"device id {args.device_id!r} must match {DEVICE_ID_RE.pattern}")
    operator, reason = (args.operator or "").strip(), (args.reason or "").strip()
    if not operator or not reason:
        raise InputError("--operator NAME and a non-empty --reason are required (both are audited)")
    registry = DeviceRegistry(args.dir, settings=_settings(args))
    audit = _station_audit(args.dir)
    try:
        before = registry.get(args.device_id, include_disabled=True)
        if before is None:
            raise InputError(f"no enrolled device {args.device_id!r} (see 'appliance station devices list')")
        if before.status == args.status:
            print(f"device {args.device_id} is already {args.status}; nothing changed")
            return 0
        if before.status == "revoked":
            raise InputError(f"device {args.device_id!r} is revoked: its keys are never trusted again (fix: "
                             "'appliance provision init --force' on the box, then enrol it again)")
        # Audited first: a change of who may send evidence is never silent.
        audit.append(f"station.device_{args.status}", device_id=args.device_id, previous=before.status,
                     operator=operator, reason=reason, signing_key=before.signing_fingerprint,
                     curve_key=before.curve_fingerprint)
        registry.set_status(args.device_id, args.status)
    finally:
        registry.close()
        audit.close()
    closing = " (a running station closes its open session within a second)" if args.status != "enabled" else ""
    print(f"device {args.device_id}: {before.status} -> {args.status}{closing}")
    return 0


def cmd_devices_list(args) -> int:
    from appliance.contracts.health import signed_pixel_tamper
    from appliance.station.registry import DeviceRegistry
    from appliance.station.store import ClipStore

    if not args.stale_after > 0:
        print("--stale-after: must be a positive number of seconds, e.g. 120", file=sys.stderr)
        return 2
    if not args.grace >= 0:
        print("--grace: must be zero or a positive number of seconds, e.g. 86400", file=sys.stderr)
        return 2
    settings = _settings(args)
    store = ClipStore(args.dir, settings=settings)
    registry = DeviceRegistry(args.dir, database=store.db)
    now_ms = int(time.time() * 1000)
    stale_ids, tampered = [], []
    try:
        for d in registry.list_devices():
            seen = store.last_seen(d.device_id)
            last_ms = seen.last_seen_unix_ms if seen and seen.last_seen_unix_ms else None
            silent_s = None if last_ms is None else max(0.0, (now_ms - last_ms) / 1000)
            # A black monitor that stays black because the box is dead must not look like a quiet
            # street: an enabled device silent too long is stale, and so is one never heard from
            # once the grace for mounting it has passed.
            enrolled_s = max(0.0, (now_ms - d.added_unix_ms) / 1000)
            not_yet_seen = silent_s is None and enrolled_s <= args.grace
            stale = d.enabled and not not_yet_seen and (silent_s is None or silent_s > args.stale_after)
            if stale:
                stale_ids.append(d.device_id)
            # Only a signed pixel statement counts (the uplink could forge or hide it). A stale
            # device's state is its last one: shown, but the stale alarm is what counts.
            tamper = signed_pixel_tamper(seen.health) if seen else None
            if tamper is not None and tamper.tampered and d.enabled:
                tampered.append(f"{d.device_id} ({','.join(tamper.kinds)})")
            row = {"device_id": d.device_id, "enabled": d.enabled, "status": d.status, "signing_key": d.signing_fingerprint,
                   "curve_key": d.curve_fingerprint, "description": d.description,
                   "last_seen_unix_ms": last_ms, "silent_s": None if silent_s is None else round(silent_s, 1),
                   "stale": stale, "not_yet_seen": not_yet_seen, "highest_sequence": seen.highest_sequence if seen else 0,
                   "health": seen.health if seen else {},
                   "tamper": tamper.to_json() if tamper else None}
            if args.json:
                print(json.dumps(row, sort_keys=True))
            else:
                last = (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last_ms / 1000)) if last_ms
                        else f"not yet (enrolled {enrolled_s:.0f} s ago)" if not_yet_seen else "never")
                state = ("STALE" if stale else d.status.upper() if d.status != "enabled"
                         else "new" if not_yet_seen else "enabled")
                camera = tamper.describe() if tamper else "camera ?"
                print(f"{d.device_id:<28} {state:<8} {camera:<22} sign {d.signing_fingerprint} "
                      f"curve {d.curve_fingerprint} last seen {last}"
                      + (f" ({silent_s:.0f} s ago)" if silent_s is not None else ""))
    finally:
        registry.close()
        store.close()
    if tampered:
        print(f"tamper: {len(tampered)} enabled device(s) report a camera tamper: " + ", ".join(tampered),
              file=sys.stderr)
    if stale_ids:
        print(f"stale: {len(stale_ids)} enabled device(s) silent for more than {args.stale_after:.0f} s: "
              + ", ".join(stale_ids), file=sys.stderr)
        return EXIT_STALE
    return EXIT_TAMPER if tampered else 0
