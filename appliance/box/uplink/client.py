"""The device side of the uplink: a Lazy-Pirate DEALER client and the spool-sending loop.

Protocol: docs/wire-protocol.md. The uplink process holds only the CURVE transport identity:
no key that can decrypt an envelope (the station's) nor one that can sign one (the device
signing key stays with the pixel process, which signs the health statements the heartbeats
carry; see appliance/contracts/health.py). An envelope leaves the spool only on a verified ``ACK`` for its exact
bytes; a timeout closes the socket (``LINGER 0``), backs off, reconnects and re-sends.

Several station receivers (``[station] endpoints``): the client talks to one at a time and
moves to the next whenever it would reset anyway (no reply in time, send queue full), or as
soon as the socket reports that an established connection dropped (a receiver that was
killed or restarted). The spool entry is simply re-sent there; the shared database answers
``duplicate`` if the first receiver had stored it before it went away.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from zmq.utils.monitor import recv_monitor_message

from appliance.box.spool.spool import Spool, SpoolEntry
from appliance.common.errors import ApplianceError
from appliance.contracts import protocol as p

log = logging.getLogger("appliance.uplink")


class UplinkTimeout(ApplianceError):
    """No (valid) reply from the station within the ack timeout."""


@dataclass(frozen=True)
class ClientConfig:
    endpoint: str                # the first receiver (also the only one without ``endpoints``)
    curve_public: bytes          # device, Z85
    curve_secret: bytes          # device, Z85
    station_curve_public: bytes  # Z85
    station_signing_public: Ed25519PublicKey | None = None
    ack_timeout_s: float = 10.0
    maxmsgsize: int = p.DEFAULT_MAXMSGSIZE
    endpoints: tuple[str, ...] = ()   # all receivers in failover order (``endpoint`` among them)

    @property
    def receivers(self) -> tuple[str, ...]:
        return self.endpoints or (self.endpoint,)


class UplinkClient:
    """One request in flight; :meth:`request` either returns the matching reply or resets."""

    def __init__(self, config: ClientConfig, *, ctx: zmq.Context | None = None):
        self.config = config
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.handshake_failures = 0
        self.failovers = 0
        self._index = list(c.receivers).index(c.endpoint) if (c := config).endpoint in c.receivers else 0
        self._up = False      # a CURVE handshake succeeded on the current socket
        self._lost = False    # ... and that connection dropped since
        self._connect()

    @property
    def endpoint(self) -> str:
        """The receiver currently in use."""
        return self.config.receivers[self._index]

    def _connect(self) -> None:
        c = self.config
        sock = self.ctx.socket(zmq.DEALER)
        sock.curve_serverkey = c.station_curve_public
        sock.curve_publickey = c.curve_public
        sock.curve_secretkey = c.curve_secret
        # LINGER 0: a closed socket must not hold up shutdown; unsent data is still in the spool.
        p.set_common_options(sock, maxmsgsize=c.maxmsgsize, linger_ms=0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        self.monitor = sock.get_monitor_socket()
        p.allow_ipv6_endpoint(sock, self.endpoint)
        sock.connect(self.endpoint)
        self._up = self._lost = False
        self.sock = sock

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.drain_monitor()
            self.sock.disable_monitor()
            self.sock.close(0)
            self.sock = None
        if self.monitor is not None:
            self.monitor.close(0)
            self.monitor = None

    def reset(self) -> None:
        """Lazy Pirate: throw the socket away (and anything queued in it) and start afresh,
        with the next receiver if there are several."""
        self._disconnect()
        receivers = self.config.receivers
        if len(receivers) > 1:
            old = self.endpoint
            self._index = (self._index + 1) % len(receivers)
            self.failovers += 1
            log.warning("failing over from station receiver %s to %s", old, self.endpoint)
        self._connect()

    def close(self) -> None:
        self._disconnect()
        if self._own_ctx:
            self.ctx.term()

    def drain_monitor(self) -> list[str]:
        """Logs pending socket events (a failed CURVE handshake is otherwise silent)."""
        names = []
        while self.monitor is not None and self.monitor.poll(0):
            msg = recv_monitor_message(self.monitor)
            name = p.event_name(msg["event"])
            names.append(name)
            if name.startswith("HANDSHAKE_FAILED"):
                self.handshake_failures += 1
                log.warning("CURVE handshake with %s failed: %s (is this device enrolled at the station, "
                            "and is uplink.station_curve_public right?)", self.endpoint, name)
            elif name in ("CONNECTED", "DISCONNECTED", "HANDSHAKE_SUCCEEDED"):
                if name == "HANDSHAKE_SUCCEEDED":
                    self._up, self._lost = True, False
                elif name == "DISCONNECTED" and self._up:
                    self._up, self._lost = False, True
                log.info("uplink socket %s %s", name, self.endpoint)
            else:
                log.debug("uplink socket %s", name)
        return names

    def request(self, kind: bytes, body: bytes, signature: bytes | None = None) -> p.Reply:
        """Sends one request and waits ``ack_timeout_s`` for its reply; raises UplinkTimeout."""
        assert self.sock is not None
        self.drain_monitor()
        if self._lost:     # the receiver went away while we were idle
            if len(self.config.receivers) > 1:
                self.reset()   # do not queue for it: go to the next
            else:
                self._lost = False   # the request waits for the reconnection
        request_id = p.new_request_id()
        frames = [p.PROTOCOL, kind, request_id, body] + ([signature] if signature is not None else [])
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=len(body) < 65536)
        except zmq.Again:
            self.reset()
            raise UplinkTimeout("send queue full (station unreachable)") from None
        deadline = time.monotonic() + self.config.ack_timeout_s
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(max(1, int(left * 1000))))
            if self.monitor in events:
                self.drain_monitor()
                if self._lost and self.sock not in events:
                    # The connection carrying our request dropped: its reply can never come.
                    lost = self.endpoint
                    self.reset()
                    raise UplinkTimeout(f"connection to {lost} lost while waiting for the reply")
            if self.sock not in events:
                continue
            reply_frames = self.sock.recv_multipart()
            try:
                reply = p.parse_reply(reply_frames, self.config.station_signing_public)
            except p.ProtocolError as exc:
                log.warning("ignoring an invalid reply from the station: %s", exc)
                continue
            if reply.request_id != request_id:
                log.debug("dropping a stale reply")
                continue
            return reply
        lost = self.endpoint
        self.reset()
        raise UplinkTimeout(f"no reply from {lost} within {self.config.ack_timeout_s} s")


class Backoff:
    """Exponential back-off with ±20 % jitter, reset after a success."""

    def __init__(self, initial_s: float, max_s: float):
        self.initial_s, self.max_s = initial_s, max_s
        self.next_s = initial_s

    def delay(self) -> float:
        d = self.next_s * random.uniform(0.8, 1.2)
        self.next_s = min(self.max_s, self.next_s * 2)
        return d

    def reset(self) -> None:
        self.next_s = self.initial_s


def signed_request(signing_key: Ed25519PrivateKey, context: bytes, body: dict[str, Any]) -> tuple[bytes, bytes]:
    return p.sign_body(signing_key, context, body)


def probe(client: UplinkClient, device_id: str, signing_key: Ed25519PrivateKey) -> p.Reply:
    """Sends a signed probe; the station answers without storing anything (``provision check``)."""
    nonce = p.new_request_id().hex()
    raw, sig = signed_request(signing_key, p.PROBE_CONTEXT, {"type": "probe", "device_id": device_id,
                                                             "nonce": nonce, "sent_unix_ms": p.now_ms()})
    reply = client.request(p.PROBE, raw, sig)
    if reply.ok and reply.body.get("nonce") != nonce:
        raise ApplianceError("the station's probe reply does not echo our nonce")
    return reply


class Uplink:
    """Sends the spool to the station, oldest first, and heartbeats; run in its own process.

    ``health_source()`` → ``(signed statement or None, plain dict)``: the pixel process's
    health (analysis fps, model hash, last frame time), e.g.
    :func:`appliance.contracts.health.read_health_file`; ``checkpoint_source()`` → list of opaque
    audit checkpoints (JSON objects) to carry; if it has ``acked(list)`` it is told which the
    station stored. ``audit``: object with ``append(kind, **fields)``.
    """

    def __init__(self, spool: Spool, client: UplinkClient, *, device_id: str, heartbeat_s: float = 30.0,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0,
                 health_source: Callable[[], tuple[dict[str, str] | None, dict[str, Any]]] | None = None,
                 checkpoint_source: Callable[[], list[Any]] | None = None, audit: Any = None):
        self.spool = spool
        self.client = client
        self.device_id = device_id
        self.heartbeat_s = heartbeat_s
        self.backoff = Backoff(retry_initial_s, retry_max_s)
        self.health_source = health_source
        self.checkpoint_source = checkpoint_source
        self.audit = audit
        self.started = time.monotonic()
        self.heartbeat_counter = 0
        self.sent = 0
        self.last_error = ""
        self._next_heartbeat = 0.0
        #: The largest envelope the station accepts, once a reply told us (docs/wire-protocol.md).
        self.station_max_envelope_bytes: int | None = None

    def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(kind, **fields)

    def health(self) -> tuple[dict[str, Any], dict[str, str] | None]:
        """(the uplink's own health, the pixel process's signed statement or None)."""
        h: dict[str, Any] = {"uptime_s": int(time.monotonic() - self.started), "sent": self.sent,
                             "last_error": self.last_error,
                             "handshake_failures": self.client.handshake_failures}
        h.update(self.spool.health().to_json())
        signed = None
        if self.health_source is not None:
            try:
                signed, plain = self.health_source()
                if plain:
                    h["pixel_unsigned"] = plain
            except Exception as exc:
                h["health_source_error"] = str(exc)[:200]
        return h, signed

    def send_heartbeat(self) -> p.Reply:
        self.heartbeat_counter += 1
        health, signed = self.health()
        body = {"type": "heartbeat", "device_id": self.device_id, "sent_unix_ms": p.now_ms(),
                "counter": self.heartbeat_counter, "health": health, "pixel_health": signed,
                "checkpoints": list(self.checkpoint_source()) if self.checkpoint_source else []}
        reply = self.client.request(p.HEARTBEAT, p.canonical_json(body))
        if reply.ok:
            self.learn(reply.body)
        acked = getattr(self.checkpoint_source, "acked", None)
        if reply.ok and acked is not None:
            acked(body["checkpoints"])  # the station stored them: stop re-sending
        elif not reply.ok:
            log.warning("station refused our heartbeat: %s", reply.reason)
        return reply

    def learn(self, body: dict[str, Any]) -> None:
        """Takes the station's limits from a verified ack (heartbeat or probe): its largest
        envelope, and the highest sequence it holds for us (a lost sequence file on the box
        would otherwise restart at 1 and every clip would be refused as old_sequence)."""
        limit = body.get("max_envelope_bytes")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            if limit != self.station_max_envelope_bytes:
                log.info("the station accepts envelopes up to %d bytes", limit)
            self.station_max_envelope_bytes = limit
        highest = body.get("highest_sequence")
        if isinstance(highest, int) and not isinstance(highest, bool) and highest >= 0:
            self.spool.resync_sequence(self.device_id, highest)  # audited by the spool (spool.resync)

    def send_entry(self, entry: SpoolEntry, kind: bytes = p.ENVELOPE) -> str:
        """One attempt: 'stored'/'duplicate' (acked, removed), 'rejected' (moved aside),
        'quarantined' (larger than the station accepts: kept aside), or raises.

        ``kind``: ``ENVELOPE`` (a sealed clip) or ``ALARM`` (an alarm message, docs/alarm-message.md).
        """
        limit = self.station_max_envelope_bytes
        if kind == p.ENVELOPE and limit is not None and entry.size > limit:
            log.error("%s#%d is %d bytes, the station accepts at most %d: quarantined in %s (kept; the "
                      "clips behind it are sent)", entry.device_id, entry.sequence, entry.size, limit,
                      self.spool.dir / "quarantine")
            self.spool.quarantine(entry, reason="larger_than_station_limit", station_max_envelope_bytes=limit)
            return "quarantined"
        try:
            data = entry.read()
        except FileNotFoundError:
            return "gone"
        sha = hashlib.sha256(data).hexdigest()
        reply = self.client.request(kind, data)
        if reply.ok:
            if reply.body.get("envelope_sha256" if kind == p.ENVELOPE else "alarm_sha256") != sha:
                raise UplinkTimeout("ack names other bytes than we sent")
            self.spool.ack(entry, envelope_sha256=sha, status=reply.status)
            self.sent += 1
            return reply.status
        if reply.reason in p.PERMANENT_REASONS:
            log.error("station refused %s#%d permanently: %s; kept in %s", entry.device_id, entry.sequence,
                      reply.reason, self.spool.dir / "rejected")
            self.spool.move_to_rejected(entry, reason=reply.reason)
            self._audit("uplink.rejected", device_id=entry.device_id, sequence=entry.sequence, reason=reply.reason)
            return "rejected"
        raise UplinkTimeout(f"station could not store it: {reply.reason}")

    def send_alarms(self) -> int:
        """The priority lane: every pending alarm message, before any clip; returns how many went."""
        sent = 0
        for entry in self.spool.pending_alarms():
            status = self.send_entry(entry, p.ALARM)
            if status in ("stored", "duplicate"):
                sent += 1
        return sent

    def run(self, stop: threading.Event, *, idle_poll_s: float = 0.1,
            on_tick: Callable[[], None] | None = None) -> None:
        """Loops until ``stop`` is set: heartbeats when due, envelopes oldest first, back-off on failure.

        ``on_tick`` runs once per iteration (the CLI reports liveness and STATUS= to systemd).
        """
        while not stop.is_set():
            if on_tick is not None:
                on_tick()
            try:
                if time.monotonic() >= self._next_heartbeat:
                    self._next_heartbeat = time.monotonic() + self.heartbeat_s
                    self.send_heartbeat()
                alarms = self.send_alarms()
                pending = self.spool.pending()
                if not pending and not alarms:
                    self.client.drain_monitor()
                    stop.wait(idle_poll_s)
                    continue
                for entry in pending:
                    if stop.is_set() or time.monotonic() >= self._next_heartbeat:
                        break  # a long backlog must not starve the heartbeats
                    if self.spool.pending_alarms():
                        break  # an alarm overtakes the clips still queued
                    self.send_entry(entry)
                    self.backoff.reset()
                    self.last_error = ""
            except UplinkTimeout as exc:
                self.last_error = str(exc)[:200]
                delay = self.backoff.delay()
                log.warning("%s; retrying in %.1f s", exc, delay)
                stop.wait(delay)

    def close(self) -> None:
        self.client.close()
