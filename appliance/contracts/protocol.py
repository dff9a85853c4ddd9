"""Frames and signed bodies of the uplink wire protocol, version 1 (docs/wire-protocol.md).

Shared by the device (DEALER) and the station (ROUTER) so both ends agree byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import zmq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.common.errors import InputError
from appliance.contracts.canonical import canonical_json
from appliance.contracts.envelope import DEFAULT_MAX_ENVELOPE_BYTES

__all__ = ["canonical_json"]

PROTOCOL = b"APW1"
ENVELOPE, HEARTBEAT, PROBE, ALARM = b"ENVELOPE", b"HEARTBEAT", b"PROBE", b"ALARM"
ACK, NACK = b"ACK", b"NACK"
REQUEST_TYPES = (ENVELOPE, HEARTBEAT, PROBE, ALARM)
PROBE_CONTEXT = b"appliance-probe-v1\x00"
REPLY_CONTEXT = b"appliance-reply-v1\x00"
REQUEST_ID_BYTES = 8
NONCE_RE = re.compile(r"[0-9a-f]{1,128}")
MAX_JSON_BODY = 1024 * 1024
#: Envelope limit + room for the other frames; libzmq drops a peer that sends more.
FRAME_SLACK = 64 * 1024
DEFAULT_MAXMSGSIZE = DEFAULT_MAX_ENVELOPE_BYTES + FRAME_SLACK
HWM = 100

#: NACK reasons after which re-sending the same bytes can never succeed.
PERMANENT_REASONS = frozenset({
    "garbage", "unknown_version", "truncated", "malformed", "oversize", "unknown_device",
    "wrong_device", "bad_signature", "replayed_sequence", "old_sequence", "wrong_station_key",
})


class ProtocolError(Exception):
    """A message that is not valid protocol; ``reason`` is a wire reason code."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def new_request_id() -> bytes:
    return os.urandom(REQUEST_ID_BYTES)


def now_ms() -> int:
    return int(time.time() * 1000)


def sign_body(key: Ed25519PrivateKey, context: bytes, body: dict[str, Any]) -> tuple[bytes, bytes]:
    raw = canonical_json(body)
    return raw, key.sign(context + raw)


def verify_body(public: Ed25519PublicKey, context: bytes, raw: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, context + raw)
    except InvalidSignature:
        return False
    return True


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_JSON_BODY:
        raise ProtocolError("oversize", f"JSON body of {len(raw)} bytes")
    try:
        doc = json.loads(raw.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("malformed", "body is not ASCII JSON (NaN and Infinity are not JSON)") from None
    if not isinstance(doc, dict):
        raise ProtocolError("malformed", "body is not a JSON object")
    return doc


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; canonical JSON (and every later re-encoding) does not.
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Request:
    kind: bytes
    request_id: bytes
    body: bytes
    signature: bytes


def parse_request(frames: list[bytes]) -> Request:
    """Splits the frames after the ROUTER's routing id; raises :class:`ProtocolError`."""
    if len(frames) < 4 or frames[0] != PROTOCOL or frames[1] not in REQUEST_TYPES:
        raise ProtocolError("garbage", f"{len(frames)} frames, not an APW1 request")
    kind, request_id, body = frames[1], frames[2], frames[3]
    if len(request_id) != REQUEST_ID_BYTES:
        raise ProtocolError("garbage", "request id is not 8 bytes")
    if kind in (ENVELOPE, HEARTBEAT, ALARM):  # self-signed content; the frame is CURVE-authenticated
        if len(frames) != 4:
            raise ProtocolError("garbage", f"{kind.decode()} takes exactly 4 frames")
        return Request(kind, request_id, body, b"")
    if len(frames) != 5 or len(frames[4]) != 64:
        raise ProtocolError("garbage", f"{kind.decode()} needs a 64-byte signature frame")
    return Request(kind, request_id, body, frames[4])


@dataclass(frozen=True)
class Reply:
    ok: bool
    request_id: bytes
    body: dict[str, Any]
    raw: bytes
    signature: bytes

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", ""))

    @property
    def status(self) -> str:
        return str(self.body.get("status", ""))


def parse_reply(frames: list[bytes], station_signing_public: Ed25519PublicKey | None) -> Reply:
    if len(frames) != 5 or frames[0] != PROTOCOL or frames[1] not in (ACK, NACK):
        raise ProtocolError("garbage", "not an APW1 reply")
    raw, signature = frames[3], frames[4]
    if station_signing_public is not None and not verify_body(station_signing_public, REPLY_CONTEXT,
                                                              raw, signature):
        raise ProtocolError("bad_signature", "reply not signed by the station key")
    body = parse_json_body(raw)
    if body.get("request_id") != frames[2].hex():
        raise ProtocolError("malformed", "reply body names another request")
    return Reply(frames[1] == ACK, frames[2], body, raw, signature)


def set_common_options(sock: zmq.Socket, *, maxmsgsize: int, linger_ms: int) -> None:
    sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)


def allow_ipv6_endpoint(sock: zmq.Socket, endpoint: str) -> None:
    """libzmq refuses IPv6 literals ("tcp://[2001:db8::5]:7100" fails with EAGAIN) unless the
    socket is told; police networks may be IPv6-only. Only then: with the option on, an IPv4
    bind becomes dual-stack and reports an IPv4-mapped address, which the drop-ins and logs
    should not have to parse."""
    if "[" in endpoint:
        sock.setsockopt(zmq.IPV6, 1)


_EVENT_NAMES = {getattr(zmq, n): n for n in dir(zmq) if n.startswith("EVENT_") and
                isinstance(getattr(zmq, n), int) and n not in ("EVENT_ALL", "EVENT_ALL_V1", "EVENT_ALL_V2")}


def event_name(event: int) -> str:
    return _EVENT_NAMES.get(event, str(event)).removeprefix("EVENT_")


_ENDPOINT_RE = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(\d+)")


def endpoint_host(endpoint: str) -> str:
    """The host of a station endpoint such as tcp://203.0.113.5:7100 (IPv6 in brackets);
    raises :class:`InputError` naming the fix for anything else."""
    m = _ENDPOINT_RE.fullmatch(endpoint or "")
    if not m:
        raise InputError(f"uplink.endpoint = {endpoint!r}: not a tcp://HOST:PORT endpoint "
                         "(fix: e.g. tcp://203.0.113.5:7100, as printed by the station bundle)")
    return m.group(1)
