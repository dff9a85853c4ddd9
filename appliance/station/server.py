"""The station receiver: ROUTER socket, CurveZMQ server, ZAP allow-list, verify → store → ack.

Protocol: docs/wire-protocol.md. One thread serves the socket (SQLite connections belong to
it); ``zmq.auth``'s authenticator thread consults the registry at every CURVE handshake. No
input can stop the loop: every message is handled inside a guard that turns any failure into
a logged, audited NACK.

Under systemd (``systemd/appliance-station.service``, ``Type=notify``) the loop tells systemd
through a :class:`appliance.common.service.ServiceNotifier`: ``READY=1`` once the socket is bound,
``WATCHDOG=1`` from the serving loop itself (a loop stuck in one message stops the pings and
systemd restarts the unit), a ``STATUS=`` line with the counts, and ``STOPPING=1`` on stop.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from appliance.common.durable import atomic_write
from appliance.common.errors import InputError
from appliance.contracts import protocol as p
from appliance.contracts.alarm import AlarmError, parse_alarm, verify_alarm
from appliance.contracts.audit.canonical import key_id
from appliance.contracts.audit.checkpoints import MalformedCheckpoint, check_signature, parse_checkpoint
from appliance.contracts.curve import load_curve_keypair
from appliance.contracts.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEVICE_ID_RE,
    EnvelopeError,
    parse_envelope,
    verify_parsed,
)
from appliance.contracts.health import HealthStatementError, signed_pixel_tamper, verify_health
from appliance.contracts.keys import (
    fingerprint_bytes,
    load_hpke_public_key,
    load_signing_key,
)
from appliance.station.keys import StationKeyPaths
from appliance.station.peers import DEFAULT_RATE, PeerGuard
from appliance.station.registry import AllowListProvider, DeviceRecord, DeviceRegistry
from appliance.station.storage import StorageSettings, open_storage, resolve_settings
from appliance.station.store import AlarmConflict, ClipStore

log = logging.getLogger("appliance.station")

#: STATUS= (counts for ``systemctl status``) at most this often, and only when they changed.
STATUS_PERIOD_S = 10.0
#: Checkpoints one heartbeat may carry (the uplink sends at most 100) and new ones stored per
#: device per hour (a busy box checkpoints every 100 records; 2000 an hour is far above that).
MAX_CHECKPOINTS_PER_HEARTBEAT = 100
MAX_NEW_CHECKPOINTS_PER_HOUR = 2000
#: How often the loop looks for disabled/revoked devices whose sessions are still open.
REVOCATION_SWEEP_S = 1.0


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "", device_id: str | None = None):
        self.reason, self.detail, self.device_id = reason, detail, device_id
        super().__init__(reason)


class StationServer:
    """Serves one ROUTER endpoint until :meth:`stop` (or SIGTERM via the CLI).

    ``audit``: optional object with ``append(kind, **fields)``; receives ``station.received``
    (signature verified), ``station.stored``, ``station.rejected`` (reason), ``station.heartbeat``,
    ``station.probe``.

    ``notifier``: optional :class:`appliance.common.service.ServiceNotifier` (the CLI passes one; it
    is a no-op outside systemd).
    """

    def __init__(self, station_dir: str | Path, bind: str = "tcp://127.0.0.1:*", *, audit: Any = None,
                 max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES, ready_file: str | Path | None = None,
                 notifier: Any = None, storage: StorageSettings | None = None, peer_rate: float = DEFAULT_RATE):
        self.station_dir = Path(station_dir)
        # Resolved now, so a bad --db/--store or storage.toml fails before anything listens.
        self.storage_settings = storage or resolve_settings(self.station_dir)
        self.notifier = notifier
        self.bind = bind
        self.audit = audit
        self.max_envelope_bytes = int(max_envelope_bytes)
        self.ready_file = Path(ready_file) if ready_file else None
        self.paths = StationKeyPaths.of(self.station_dir)
        self.paths.require()
        self._signing_key = load_signing_key(self.paths.signing_private)
        # Only the HPKE *public* key: serving never needs to decrypt (export does, on demand).
        self._station_key_fp = load_hpke_public_key(self.paths.hpke_public).fingerprint
        self._curve_public, self._curve_secret = load_curve_keypair(self.paths.curve_secret)
        self._stop = threading.Event()
        self.endpoint: str | None = None
        self.ready = threading.Event()
        self.counts: dict[str, int] = {}
        if not peer_rate > 0:
            raise InputError(f"--peer-rate {peer_rate}: must be a positive number of requests per second, e.g. 100")
        self.peers = PeerGuard(rate=peer_rate, burst=2 * peer_rate)
        self._checkpoint_budget: dict[str, list[float]] = {}  # device -> [window start, stored]
        self._devices_by_identity: dict[str, str] = {}

    def stop(self) -> None:
        self._stop.set()

    def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            try:
                self.audit.append(kind, **fields)
            except Exception:
                log.exception("audit append failed for %s", kind)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # -- loop -------------------------------------------------------------------------

    def serve_forever(self) -> None:
        storage = open_storage(self.station_dir, settings=self.storage_settings, synchronous="NORMAL")
        ctx = zmq.Context()
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("appliance.station.zap"))
        auth.start()
        sock = ctx.socket(zmq.ROUTER)
        monitor = None
        auth.configure_curve_callback("*", AllowListProvider(self.station_dir, storage.db))
        registry = DeviceRegistry(self.station_dir, database=storage.db)
        store = ClipStore(self.station_dir, storage=storage)
        try:
            recovered = store.recover()
            if recovered:
                log.warning("re-indexed %d envelope file(s) whose index rows a crash had lost", recovered)
            sock.curve_server = True
            sock.curve_secretkey = self._curve_secret
            sock.curve_publickey = self._curve_public
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            p.set_common_options(sock, maxmsgsize=self.max_envelope_bytes + p.FRAME_SLACK, linger_ms=1000)
            # Replies are sent with NOBLOCK (never SNDTIMEO): one peer that does not read must
            # not make every other device wait (docs/wire-protocol.md, "Per-peer limits").
            monitor = sock.get_monitor_socket()
            p.allow_ipv6_endpoint(sock, self.bind)
            sock.bind(self.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("station listening on %s (max envelope %d bytes; %s)", self.endpoint, self.max_envelope_bytes,
                     self.storage_settings.describe())
            if self.ready_file is not None:
                atomic_write(self.ready_file, (self.endpoint + "\n").encode("utf-8"), mode=0o666)
            self.ready.set()
            if self.notifier is not None:
                self.notifier.ready(f"listening on {self.endpoint}")
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            status_t, status = time.monotonic(), ""
            sweep_t = time.monotonic()
            while not self._stop.is_set():
                events = dict(poller.poll(200))
                if monitor in events:
                    self._log_monitor(monitor)
                if sock in events:
                    # A bounded batch per wake-up, so the watchdog and the sweep still run.
                    for _ in range(1000):
                        self._serve_one(sock, registry, store)
                        if not sock.poll(0, zmq.POLLIN):
                            break
                if time.monotonic() - sweep_t >= REVOCATION_SWEEP_S:
                    sweep_t = time.monotonic()
                    self._close_revoked_sessions(registry)
                if self.notifier is not None:
                    self.notifier.ping()  # rate-limits itself to half of WatchdogSec=
                    if time.monotonic() - status_t >= STATUS_PERIOD_S:
                        status_t, text = time.monotonic(), self.status_line()
                        if text != status:
                            status = text
                            self.notifier.status(text)
            if self.notifier is not None:
                self.notifier.stopping("station stopping")
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            sock.close()
            auth.stop()
            registry.close()
            store.close()
            storage.close()
            ctx.term()
            log.info("station stopped")

    def status_line(self) -> str:
        """``listening on tcp://0.0.0.0:7100; stored 12, duplicate 1, heartbeat 240, rejected 0``."""
        c = self.counts
        rejected = sum(v for k, v in c.items() if k.startswith("rejected."))
        return (f"listening on {self.endpoint}; alarms {c.get('alarm.stored', 0)}, "
                f"stored {c.get('stored', 0)}, duplicate {c.get('duplicate', 0)}, "
                f"heartbeat {c.get('heartbeat', 0)}, probe {c.get('probe', 0)}, rejected {rejected}")

    def _log_monitor(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            msg = recv_monitor_message(monitor)
            name = p.event_name(msg["event"])
            level = logging.WARNING if name.startswith("HANDSHAKE_FAILED") else logging.DEBUG
            log.log(level, "socket %s %s (value %s)", name, msg.get("endpoint", b"").decode(errors="replace"),
                    msg.get("value"))

    def _close_revoked_sessions(self, registry: DeviceRegistry) -> None:
        """Cuts the open connection of a device disabled or revoked while connected."""
        for identity, device_id in list(self._devices_by_identity.items()):
            device = registry.get(device_id)
            if device is None or device.curve_public.decode("ascii") != identity:
                del self._devices_by_identity[identity]
                cut = self.peers.cut(identity, mute=False)
                log.warning("closed the session of %s (disabled, revoked or re-keyed): %d connection(s)",
                            device_id, cut)
                self._audit("station.session_closed", device_id=device_id, connections=cut)

    def _drop_peer(self, identity: str, peer: str, why: str) -> None:
        cut = self.peers.cut(identity)
        self._count(f"peer_dropped.{why}")
        log.warning("cut off peer %s (%s): %d connection(s) shut down, muted for %.0f s",
                    peer, why, cut, self.peers.mute_s)
        self._audit("station.peer_dropped", peer=peer, why=why, connections=cut,
                    device_id=self._devices_by_identity.get(identity), muted_s=self.peers.mute_s)

    def _serve_one(self, sock: zmq.Socket, registry: DeviceRegistry, store: ClipStore) -> None:
        try:
            frames = sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        routing_id = frames[0].bytes
        try:
            user_id = str(frames[-1].get("User-Id") or "")
        except zmq.ZMQError:
            user_id = ""
        try:
            fd = int(frames[-1].get(zmq.SRCFD))
        except (zmq.ZMQError, ValueError, TypeError):
            fd = -1
        identity = user_id or routing_id.hex()
        peer = fingerprint_bytes(zmq.utils.z85.decode(user_id)) if len(user_id) == 40 else "?"
        self.peers.note_connection(identity, fd)
        refused = self.peers.admit(identity)
        if refused is not None:  # dropped unread: costs the loop nothing but this check
            self._count(f"dropped.{refused}")
            if refused == "flooding":
                self._drop_peer(identity, peer, "flooding")
            elif refused == "muted":
                self.peers.cut(identity, mute=False)  # a muted identity's new connection
            return
        data = [f.bytes for f in frames[1:]]
        request_id = data[2] if len(data) > 2 and len(data[2]) == p.REQUEST_ID_BYTES else b"\0" * 8
        # Audit: one record per outcome (each append is an fsync): station.received (verified)
        # + station.stored for a clip, station.rejected (with reason) for anything refused.
        try:
            ok, body = self._handle(data, user_id, peer, registry, store)
        except Rejected as r:
            ok, body = False, self._reject(r, peer)
        except (EnvelopeError, AlarmError) as exc:
            ok, body = False, self._reject(Rejected(exc.reason, exc.detail), peer)
        except Exception as exc:
            log.exception("internal error handling a message from %s", peer)
            ok, body = False, self._reject(Rejected("internal_error", type(exc).__name__), peer)
        body["request_id"] = request_id.hex()
        body.setdefault("station_unix_ms", p.now_ms())
        raw, sig = p.sign_body(self._signing_key, p.REPLY_CONTEXT, body)
        try:
            sock.send_multipart([routing_id, p.PROTOCOL, p.ACK if ok else p.NACK, request_id, raw, sig],
                                flags=zmq.NOBLOCK)
        except zmq.Again:  # its queue of unread replies is full: it does not read them
            self._drop_peer(identity, peer, "not_reading")
        except zmq.ZMQError as exc:  # peer vanished (ROUTER_MANDATORY)
            log.info("reply to %s not delivered: %s", peer, exc)

    def _reject(self, r: Rejected, peer: str) -> dict[str, Any]:
        self._count(f"rejected.{r.reason}")
        log.warning("rejected message from %s: %s%s", peer, r.reason, f" ({r.detail})" if r.detail else "")
        self._audit("station.rejected", reason=r.reason, detail=r.detail, peer=peer, device_id=r.device_id)
        return {"type": "nack", "status": "rejected", "reason": r.reason, "detail": r.detail[:200]}

    def _device_for(self, device_id: str, user_id: str, registry: DeviceRegistry) -> DeviceRecord:
        device = registry.get(device_id)
        if device is None:
            raise Rejected("unknown_device", device_id, device_id)
        if device.curve_public.decode("ascii") != user_id:
            raise Rejected("wrong_device", f"{device_id} sent over another device's connection", device_id)
        return device

    def _handle(self, data: list[bytes], user_id: str, peer: str, registry: DeviceRegistry,
                store: ClipStore) -> tuple[bool, dict[str, Any]]:
        try:
            req = p.parse_request(data)
        except p.ProtocolError as exc:
            raise Rejected(exc.reason, exc.detail) from None
        if req.kind == p.ENVELOPE:
            return self._handle_envelope(req, user_id, peer, registry, store)
        if req.kind == p.ALARM:
            return self._handle_alarm(req, user_id, peer, registry, store)
        try:
            doc = p.parse_json_body(req.body)
        except p.ProtocolError as exc:
            raise Rejected(exc.reason, exc.detail) from None
        device_id = doc.get("device_id")
        if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
            raise Rejected("malformed", f"device_id must match {DEVICE_ID_RE.pattern}")
        device = self._device_for(device_id, user_id, registry)
        self._devices_by_identity[user_id] = device_id
        if req.kind == p.PROBE:
            if not p.verify_body(device.signing_public, p.PROBE_CONTEXT, req.body, req.signature):
                raise Rejected("bad_signature", f"probe from {device_id}", device_id)
            if doc.get("type") != "probe":
                raise Rejected("malformed", "probe body type", device_id)
            nonce = doc.get("nonce", "")
            if not isinstance(nonce, str) or not p.NONCE_RE.fullmatch(nonce):
                raise Rejected("malformed", "probe nonce must be 1-128 hex digits", device_id)
            store.record_seen(device_id, "probe")  # a signed probe proves the box is alive
            self._count("probe")
            self._audit("station.probe", device_id=device_id)
            log.info("probe from %s answered (nothing stored)", device_id)
            return True, {"type": "ack", "for": "probe", "status": "probe-ok", "device_id": device_id,
                          "nonce": nonce, **self._limits(store, device_id)}
        if doc.get("type") != "heartbeat":
            raise Rejected("malformed", "heartbeat body type", device_id)
        health = doc.get("health", {})
        checkpoints = doc.get("checkpoints", [])
        if not isinstance(health, dict) or not isinstance(checkpoints, list):
            raise Rejected("malformed", "heartbeat health/checkpoints", device_id)
        checkpoints = self._verified_checkpoints(device, checkpoints)
        recorded = dict(health)
        recorded["pixel_signed"] = False
        if doc.get("pixel_health") is not None:
            # The pixel process's own statement, signed with the device key the uplink never holds.
            try:
                statement = verify_health(doc["pixel_health"], device_id, device.signing_public)
            except HealthStatementError as exc:
                raise Rejected("bad_signature", f"pixel health from {device_id}: {exc}", device_id) from None
            recorded.update(pixel=statement["health"], pixel_unix_ms=statement["unix_ms"], pixel_signed=True)
        self._audit_tamper_change(store, device_id, recorded)
        self._charge_checkpoints(device_id, len(checkpoints))
        store.record_seen(device_id, "heartbeat", recorded)
        new = store.add_checkpoints(device_id, checkpoints)
        self._checkpoint_budget[device_id][1] += new
        self._count("heartbeat")
        self._audit("station.heartbeat", device_id=device_id, checkpoints_new=new)
        return True, {"type": "ack", "for": "heartbeat", "status": "recorded", "device_id": device_id,
                      **self._limits(store, device_id)}

    def _limits(self, store: ClipStore, device_id: str) -> dict[str, int]:
        """What the device needs to know to never send what the station must refuse: the
        largest envelope accepted and the highest sequence stored for it (a box that lost its
        sequence file continues above it)."""
        return {"max_envelope_bytes": self.max_envelope_bytes,
                "highest_sequence": store.highest_sequence(device_id)}

    def _verified_checkpoints(self, device: DeviceRecord, checkpoints: list[Any]) -> list[dict[str, Any]]:
        """Each checkpoint parsed and verified with the device's enrolled signing key: a key
        holder of the uplink's CURVE key alone must not be able to plant one."""
        if len(checkpoints) > MAX_CHECKPOINTS_PER_HEARTBEAT:
            raise Rejected("malformed", f"{len(checkpoints)} checkpoints in one heartbeat (at most "
                           f"{MAX_CHECKPOINTS_PER_HEARTBEAT})", device.device_id)
        trusted = {key_id(device.signing_public): device.signing_public}
        verified = []
        for i, obj in enumerate(checkpoints):
            try:
                cp = parse_checkpoint(obj)
            except MalformedCheckpoint as exc:
                raise Rejected("malformed", f"checkpoint {i}: {exc}", device.device_id) from None
            problem = check_signature(cp, trusted)
            if problem is not None:
                raise Rejected("bad_signature", f"checkpoint {i} ({cp.describe()}): {problem}",
                               device.device_id)
            verified.append(cp.to_json())
        return verified

    def _charge_checkpoints(self, device_id: str, offered: int) -> None:
        budget = self._checkpoint_budget.setdefault(device_id, [time.monotonic(), 0])
        if time.monotonic() - budget[0] >= 3600:
            budget[:] = [time.monotonic(), 0]
        if offered and budget[1] + offered > MAX_NEW_CHECKPOINTS_PER_HOUR:
            raise Rejected("rate_limited", f"more than {MAX_NEW_CHECKPOINTS_PER_HOUR} new checkpoints "
                           "in an hour; try again later", device_id)

    def _audit_tamper_change(self, store: ClipStore, device_id: str, recorded: dict[str, Any]) -> None:
        """``station.device_tamper`` when a device's signed camera tamper state changes."""
        new = signed_pixel_tamper(recorded)
        if new is None:
            return
        seen = store.last_seen(device_id)
        old = signed_pixel_tamper(seen.health) if seen else None
        old_kinds = old.kinds if old else ()
        if new.kinds == old_kinds:
            return
        self._audit("station.device_tamper", device_id=device_id, state="tampered" if new.tampered else "ok",
                    kinds=list(new.kinds), previous=list(old_kinds),
                    since={k: round(v, 3) for k, v in sorted(new.since.items())}, mode=new.mode)
        (log.warning if new.tampered else log.info)("device %s camera tamper: %s", device_id, new.describe())

    def _handle_alarm(self, req: p.Request, user_id: str, peer: str, registry: DeviceRegistry,
                      store: ClipStore) -> tuple[bool, dict[str, Any]]:
        """An alarm message (docs/alarm-message.md): verify the device's signature, store, ack."""
        parsed = parse_alarm(req.body)
        device = self._device_for(parsed.device_id, user_id, registry)
        try:
            verify_alarm(parsed, device.signing_public)
        except AlarmError as exc:
            raise Rejected(exc.reason, exc.detail, parsed.device_id) from None
        try:
            alarm, duplicate = store.store_alarm(parsed)
        except AlarmConflict as exc:
            raise Rejected("replayed_sequence", str(exc), parsed.device_id) from None
        status = "duplicate" if duplicate else "stored"
        self._count(f"alarm.{status}")
        log.info("alarm %s %s (%s, %d skeleton frames)", alarm.alarm_id, status, alarm.pattern,
                 len(parsed.body["skeletons"]["frames"]))
        self._audit("station.alarm", alarm_id=alarm.alarm_id, device_id=parsed.device_id,
                    sequence=parsed.sequence, alarm_sha256=parsed.sha256, status=status, pattern=alarm.pattern,
                    profile=parsed.body["profile"]["id"], peer=peer)
        return True, {"type": "ack", "for": "alarm", "status": status, "device_id": parsed.device_id,
                      "sequence": parsed.sequence, "alarm_sha256": parsed.sha256, "alarm_id": alarm.alarm_id}

    def _handle_envelope(self, req: p.Request, user_id: str, peer: str, registry: DeviceRegistry,
                         store: ClipStore) -> tuple[bool, dict[str, Any]]:
        parsed = parse_envelope(req.body, max_bytes=self.max_envelope_bytes)
        header = parsed.header
        device = self._device_for(header.device_id, user_id, registry)
        self._devices_by_identity[user_id] = header.device_id
        try:
            verify_parsed(parsed, device.signing_public)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, exc.detail, header.device_id) from None
        if header.station_key != self._station_key_fp:
            raise Rejected("wrong_station_key", f"sealed to {header.station_key}", header.device_id)
        try:
            result = store.store(parsed)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, exc.detail, header.device_id) from None
        # Only now: a refused message gets station.rejected alone (received + rejected = all).
        self._audit("station.received", peer=peer, frames=4, bytes=len(parsed.data), device_id=header.device_id,
                    sequence=header.sequence, envelope_sha256=parsed.sha256, verified=True)
        if result.duplicate:  # a fresh store recorded last-seen in its own transaction
            store.record_seen(header.device_id, "envelope")
        status = "duplicate" if result.duplicate else "stored"
        self._count(status)
        log.info("%s the clip of alarm %s#%d (envelope %s, %d bytes)", status, header.device_id, header.sequence,
                 result.clip.clip_id, len(parsed.data))
        self._audit("station.stored", alarm_id=f"{header.device_id}#{header.sequence}",
                    clip_id=result.clip.clip_id, device_id=header.device_id,
                    sequence=header.sequence, envelope_sha256=parsed.sha256, status=status,
                    profile=header.profile["id"], pattern=header.pattern)
        return True, {"type": "ack", "for": "envelope", "status": status, "device_id": header.device_id,
                      "sequence": header.sequence, "envelope_sha256": parsed.sha256,
                      "clip_id": result.clip.clip_id}
