"""`appliance uplink --config FILE`: the network process that empties the spool to the station.

It reads sealed envelopes from the spool, sends them over CurveZMQ, deletes each only after
the station's signed ack, and sends heartbeats carrying the pixel process's signed health
statement (``<spool>/health.json``) and the audit log's signed checkpoints. It holds only
its CURVE identity: it can neither read a clip (no station key) nor forge one (no device
signing key).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError

log = logging.getLogger("appliance.uplink")


def register(sub) -> None:
    """Adds the `uplink` command group to the top-level parser."""
    p = sub.add_parser("uplink", help="send sealed clips from the spool to the station (network process)")
    p.add_argument("--config", required=True, type=Path, help="appliance TOML config")
    p.add_argument("--once", action="store_true", help="send what is pending, then exit (0 if the spool is empty)")
    p.set_defaults(func=cmd_uplink)


class AuditCheckpointFeed:
    """Checkpoints from the audit log not yet acknowledged by the station (at most 100 a beat)."""

    def __init__(self, audit: Any):
        self.audit = audit
        self.after_n = -1

    def __call__(self) -> list[Any]:
        return self.audit.checkpoints_since(self.after_n, limit=100)

    def acked(self, checkpoints: list[Any]) -> None:
        ns = [c["n"] for c in checkpoints if isinstance(c, dict) and isinstance(c.get("n"), int)]
        if ns:
            self.after_n = max(self.after_n, *ns)


def build_client(cfg):
    """The :class:`UplinkClient` a config describes (e.g. for ``provision check``'s probe)."""
    from appliance.box.uplink.client import ClientConfig, UplinkClient
    from appliance.contracts.curve import load_curve_keypair, load_curve_public
    from appliance.contracts.keys import load_signing_public_key
    from appliance.contracts.protocol import FRAME_SLACK

    u = cfg.uplink
    endpoints = cfg.station_endpoints
    missing = [name for name, value in (("uplink.endpoint (or station.endpoints)", endpoints),
                                        ("uplink.station_curve_public", u.station_curve_public),
                                        ("uplink.curve_secret", u.curve_secret)) if not value]
    if missing:
        raise InputError(f"config lacks {', '.join(missing)} (fix: run 'appliance provision init' and "
                         f"'provision import', or set them in the config)")
    curve_public, curve_secret = load_curve_keypair(u.curve_secret)
    station_signing = load_signing_public_key(u.station_signing_public) if u.station_signing_public else None
    if station_signing is None:
        log.warning("uplink.station_signing_public not set: acks are trusted on the CURVE channel alone")
    client = UplinkClient(ClientConfig(
        endpoint=endpoints[0], endpoints=endpoints, curve_public=curve_public, curve_secret=curve_secret,
        station_curve_public=load_curve_public(u.station_curve_public),
        station_signing_public=station_signing, ack_timeout_s=u.ack_timeout_s,
        maxmsgsize=u.max_envelope_bytes + FRAME_SLACK))
    return client


def build_uplink(cfg, *, audit: Any = None):
    """The :class:`Uplink` a config describes (keys loaded, socket connected)."""
    from appliance.box.spool import Spool
    from appliance.box.uplink.client import Uplink
    from appliance.contracts.health import read_health_file

    u = cfg.uplink
    client = build_client(cfg)
    spool = Spool(cfg.spool_dir, cfg.spool.max_bytes, audit=audit)
    health_path = cfg.health_file
    return Uplink(spool, client, device_id=cfg.device.id,
                  heartbeat_s=u.heartbeat_s, retry_initial_s=u.retry_initial_s, retry_max_s=u.retry_max_s,
                  health_source=lambda: read_health_file(health_path),
                  checkpoint_source=AuditCheckpointFeed(audit) if audit is not None else None, audit=audit)


class LateAuditLog:
    """The device audit log for the uplink, which holds no signing key.

    It must never create the log: a genesis without the key makes every later checkpoint
    verify as "signed by unknown key" (a false TAMPERED, issue 12). So it opens the log once
    the key holder (the pixel process) has created it; records appended before that wait in
    memory, in order, with the time they happened, and are written on the next append after
    the log exists. The uplink itself (heartbeats, an empty spool) does not wait.
    """

    MAX_WAITING = 10_000

    def __init__(self, opener: Any):
        self._opener = opener
        self._log: Any = None
        self._waiting: list[tuple[str, dict[str, Any]]] = []

    def _ready(self) -> bool:
        from appliance.contracts.audit.log import NoGenesisYet

        if self._log is None:
            try:
                self._log = self._opener()
            except NoGenesisYet:
                return False
            for kind, fields in self._waiting:
                self._log.append(kind, **fields)
            self._waiting.clear()
        return True

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        if self._ready():
            return self._log.append(kind, **fields)
        from appliance.contracts.audit.canonical import utc_iso

        if not self._waiting:
            log.warning("no audit log yet (the pixel process creates it): keeping audit records until it exists")
        if len(self._waiting) >= self.MAX_WAITING:
            from appliance.contracts.audit.log import AuditError
            raise AuditError(f"{self.MAX_WAITING} audit records wait for a log the pixel process never created")
        self._waiting.append((kind, {**fields, "happened": utc_iso(time.time())}))
        return {"kind": kind, "waiting": True}

    def checkpoints_since(self, after_n: int = -1, limit: int | None = None) -> list[Any]:
        return self._log.checkpoints_since(after_n, limit=limit) if self._ready() else []

    def close(self) -> None:
        if self._log is not None or self._ready():
            self._log.close()
        elif self._waiting:
            log.error("%d audit record(s) not written: the pixel process never created the audit log %s",
                      len(self._waiting), getattr(self._opener, "path", ""))


def _open_audit_log(cfg, *, once: bool = False) -> Any:
    """The device audit log: for the daemon a :class:`LateAuditLog`; for ``--once`` (a
    technician, who may read the device key) the log itself, signed with the key when it can
    be read, or None (nothing sent) when neither the log nor the key is there."""
    from appliance.contracts.audit.log import AuditLog, NoGenesisYet
    from appliance.contracts.keys import load_signing_key_if_readable

    def opener(signer: Any = None) -> AuditLog:
        return AuditLog(cfg.audit_log, origin="appliance", device=cfg.device.id, signer=signer,
                        checkpoint_every=cfg.audit.checkpoint_every,
                        segment_max_bytes=cfg.audit.segment_max_bytes)

    if not once:
        return LateAuditLog(opener)
    try:
        return opener(load_signing_key_if_readable(cfg.seal.signing_key))
    except NoGenesisYet as exc:
        log.error("%s", exc)
        return None


def cmd_uplink(args) -> int:
    from appliance.box.config import load_config
    from appliance.box.uplink.client import UplinkTimeout
    from appliance.common.service import (
        ServiceNotifier,
        configure_logging,
        install_signal_handlers,
    )

    cfg = load_config(args.config)
    configure_logging("appliance-uplink")
    stop = install_signal_handlers()
    audit = _open_audit_log(cfg, once=args.once)
    if audit is None:
        return 1
    uplink = build_uplink(cfg, audit=audit)
    try:
        if args.once:
            try:  # learn the station's limits and our sequence floor first
                uplink.send_heartbeat()
            except UplinkTimeout as exc:
                log.error("%s", exc)
                return 1
            for entry in uplink.spool.pending():
                try:
                    uplink.send_entry(entry)
                except UplinkTimeout as exc:
                    log.error("%s", exc)
                    return 1
            return 0 if not uplink.spool.pending() else 1
        notifier = ServiceNotifier()
        last_tick = [time.monotonic()]
        # The loop may legitimately wait a back-off or an ack timeout; longer means hung.
        stall_s = max(60.0, cfg.uplink.retry_max_s + 2 * cfg.uplink.ack_timeout_s)

        def tick() -> None:
            last_tick[0] = time.monotonic()
            notifier.health(spool_depth=len(uplink.spool.pending()),
                            station="ok" if not uplink.last_error else "unreachable")

        notifier.run_watchdog(lambda: time.monotonic() - last_tick[0] < stall_s, stop)
        notifier.ready(f"uplink to {', '.join(cfg.station_endpoints)}")
        log.info("uplink for %s → %s (spool %s)", cfg.device.id, " then ".join(cfg.station_endpoints), cfg.spool_dir)
        uplink.run(stop, on_tick=tick)
        notifier.stopping("uplink stopping")
        return 0
    finally:
        uplink.close()
        audit.close()
