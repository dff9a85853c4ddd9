"""The alarm message, format version 1 (spec: docs/alarm-message.md).

Sent by the box the moment a permitted trigger fires, before the clip exists: what happened
(pattern, explanation, confidence), under which legal profile and rule, on which device, and
the involved tracks' skeletons for the window so far. It carries no pixels. Signed by the
device's Ed25519 key like every envelope; the clip that follows carries the same
``(device_id, sequence)`` and so the same alarm id.

    build_alarm(...)            -> dict (the body)
    seal_alarm(body, key)       -> bytes   magic ‖ version ‖ length ‖ canonical JSON ‖ signature
    parse_alarm(data)           -> ParsedAlarm  structure only
    verify_alarm(parsed, key)   -> dict (the body), or AlarmError("bad_signature")

One id names the alarm and its clip everywhere: :func:`alarm_id` = ``"<device_id>#<sequence>"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.common.errors import ApplianceError
from appliance.contracts.canonical import canonical_json  # the one encoder (same rules as the envelope header)
from appliance.contracts.envelope import _int, _str  # the header's type predicates
from appliance.contracts.identifiers import DEVICE_ID_RE

MAGIC = b"APAL"
VERSION = 1
FORMAT = "appliance-alarm"
SIG_CONTEXT = b"appliance-alarm-v1 sig\x00"
SIGNATURE_BYTES = 64
MAX_BODY_BYTES = 512 * 1024
KEYPOINT_ORDER = "coco17"
_FIXED = struct.Struct(">4sHI")  # magic, version, body length
ALARM_ID_RE = re.compile("(" + DEVICE_ID_RE.pattern + r")#([1-9][0-9]{0,18})")

REASONS = ("garbage", "unknown_version", "truncated", "malformed", "oversize", "bad_signature")

_TOP_KEYS = {"format", "version", "device_id", "sequence", "created_unix_ms", "pattern", "confidence",
             "explanation", "decision", "profile", "event_window_ms", "event_wall_unix_ms", "tracks",
             "model_sha256", "clip", "skeletons"}


class AlarmError(ApplianceError):
    """An alarm message was refused; ``reason`` is a code from docs/alarm-message.md."""

    exit_code = 4

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"alarm message rejected: {reason}" + (f" ({detail})" if detail else ""))


def alarm_id(device_id: str, sequence: int) -> str:
    """The one id of an alarm and its clip: ``walk-box-01#2``."""
    return f"{device_id}#{int(sequence)}"


def split_alarm_id(text: str) -> tuple[str, int] | None:
    m = ALARM_ID_RE.fullmatch(text)
    return (m.group(1), int(m.group(2))) if m else None


def skeleton_frame(t_ms: int, wall_unix_ms: int, persons: Sequence[tuple[int, Sequence[float], Sequence[Sequence[float]]]]
                   ) -> dict[str, Any]:
    """One frame of the ``skeletons`` list: ``persons`` = (track id, box[4], keypoints[17][3]).

    Coordinates become integer tenths of a pixel and confidences integer thousandths, so the
    signed text has one spelling on every machine.
    """
    return {"t_ms": int(t_ms), "wall_unix_ms": int(wall_unix_ms), "persons": [
        {"track": int(track), "box": [round(float(v) * 10) for v in box],
         "kp": [[round(float(x) * 10), round(float(y) * 10), round(float(c) * 1000)]
                for x, y, c in keypoints]}
        for track, box, keypoints in persons]}


def build_alarm(*, device_id: str, sequence: int, created_unix_ms: int, pattern: str, confidence: float,
                explanation: Mapping[str, Any], rule: str, reason: str, profile: Mapping[str, str],
                event_window_ms: tuple[int, int], event_wall_unix_ms: tuple[int, int], tracks: Sequence[int],
                model_sha256: str, clip_window_ms: tuple[int, int], frame_size: tuple[int, int],
                frames: Sequence[dict[str, Any]]) -> dict[str, Any]:
    body = {
        "format": FORMAT, "version": VERSION, "device_id": device_id, "sequence": int(sequence),
        "created_unix_ms": int(created_unix_ms), "pattern": pattern,
        "confidence": round(float(confidence) * 1000),
        "explanation": _plain(explanation), "decision": {"rule": rule, "reason": reason},
        "profile": {"id": profile["id"], "version": profile["version"], "sha256": profile["sha256"]},
        "event_window_ms": [int(event_window_ms[0]), int(event_window_ms[1])],
        "event_wall_unix_ms": [int(event_wall_unix_ms[0]), int(event_wall_unix_ms[1])],
        "tracks": [int(t) for t in tracks], "model_sha256": model_sha256,
        "clip": {"follows": True, "window_ms": [int(clip_window_ms[0]), int(clip_window_ms[1])]},
        "skeletons": {"keypoint_order": KEYPOINT_ORDER, "coords": "decipixel", "frame_size": list(frame_size),
                      "frames": list(frames)},
    }
    validate_body(body)
    return body


def _plain(explanation: Mapping[str, Any]) -> dict[str, Any]:
    """Explanation values as JSON scalars/lists; floats rounded to 4 decimals, non-finite dropped."""
    def conv(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str | int):
            return v
        if isinstance(v, float) or (hasattr(v, "__float__") and not isinstance(v, list | tuple)):
            f = float(v)
            return round(f, 4) if math.isfinite(f) else None
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return str(v)
    return {str(k): conv(v) for k, v in explanation.items()}


def seal_alarm(body: Mapping[str, Any], signing_key: Ed25519PrivateKey) -> bytes:
    """``APAL ‖ u16 version ‖ u32 length ‖ canonical body ‖ Ed25519 signature``."""
    validate_body(body)
    raw = canonical_json(dict(body))
    if len(raw) > MAX_BODY_BYTES:
        raise AlarmError("oversize", f"body {len(raw)} bytes > {MAX_BODY_BYTES}")
    prefix = _FIXED.pack(MAGIC, VERSION, len(raw)) + raw
    return prefix + signing_key.sign(SIG_CONTEXT + hashlib.sha256(prefix).digest())


@dataclass(frozen=True, eq=False)
class ParsedAlarm:
    data: bytes
    body: dict[str, Any]
    raw_body: bytes

    @property
    def device_id(self) -> str:
        return str(self.body["device_id"])

    @property
    def sequence(self) -> int:
        return int(self.body["sequence"])

    @property
    def alarm_id(self) -> str:
        return alarm_id(self.device_id, self.sequence)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def parse_alarm(data: bytes) -> ParsedAlarm:
    """Structure and schema only; raises :class:`AlarmError` (and only that) on any input."""
    if not isinstance(data, bytes | bytearray) or data[:4] != MAGIC:
        raise AlarmError("garbage", "does not start with APAL")
    data = bytes(data)
    if len(data) < _FIXED.size:
        raise AlarmError("truncated", "shorter than the fixed header")
    _, version, length = _FIXED.unpack_from(data)
    if version != VERSION:
        raise AlarmError("unknown_version", f"version {version}")
    if length > MAX_BODY_BYTES:
        raise AlarmError("oversize", f"body {length} bytes")
    end = _FIXED.size + length
    if len(data) < end + SIGNATURE_BYTES:
        raise AlarmError("truncated", f"{len(data)} bytes, layout needs {end + SIGNATURE_BYTES}")
    if len(data) > end + SIGNATURE_BYTES:
        raise AlarmError("malformed", "trailing bytes after the signature")
    raw = data[_FIXED.size:end]
    try:
        body = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AlarmError("malformed", "body is not ASCII JSON") from None
    if not isinstance(body, dict):
        raise AlarmError("malformed", "body is not an object")
    if "version" in body and body["version"] != VERSION:
        raise AlarmError("unknown_version", f"body version {body['version']!r}")
    validate_body(body)
    try:
        canonical = canonical_json(body)
    except ValueError:
        canonical = b""
    if canonical != raw:
        raise AlarmError("malformed", "body is not canonical JSON")
    return ParsedAlarm(data, body, raw)


def verify_alarm(parsed: ParsedAlarm, public: Ed25519PublicKey) -> dict[str, Any]:
    end = len(parsed.data) - SIGNATURE_BYTES
    try:
        public.verify(parsed.data[end:], SIG_CONTEXT + hashlib.sha256(parsed.data[:end]).digest())
    except InvalidSignature:
        raise AlarmError("bad_signature", f"alarm {parsed.alarm_id}") from None
    return parsed.body


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise AlarmError("malformed", what)


def _pair(v: Any, lo: int = -(2**62)) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_int(x, lo, 2**62) for x in v) and v[0] <= v[1]


def validate_body(body: Mapping[str, Any]) -> None:
    _want(isinstance(body, Mapping) and set(body) == _TOP_KEYS, "fields differ from the spec")
    _want(body["format"] == FORMAT and body["version"] == VERSION, "format/version")
    _want(_str(body["device_id"], 64) and DEVICE_ID_RE.fullmatch(body["device_id"]) is not None, "device_id")
    _want(_int(body["sequence"], 1, 10**16 - 1), "sequence")
    _want(_int(body["created_unix_ms"]), "created_unix_ms")
    _want(_str(body["pattern"], 64), "pattern")
    _want(_int(body["confidence"], 0, 1000), "confidence (thousandths, 0..1000)")
    _want(isinstance(body["explanation"], Mapping) and len(body["explanation"]) <= 64, "explanation")
    d = body["decision"]
    _want(isinstance(d, Mapping) and set(d) == {"rule", "reason"} and _str(d["rule"], 256)
          and isinstance(d["reason"], str) and len(d["reason"]) <= 1024, "decision")
    p = body["profile"]
    _want(isinstance(p, Mapping) and set(p) == {"id", "version", "sha256"}
          and all(_str(p[k], 128) for k in ("id", "version")) and isinstance(p["sha256"], str)
          and len(p["sha256"]) <= 128, "profile")
    _want(_pair(body["event_window_ms"]), "event_window_ms")
    _want(_pair(body["event_wall_unix_ms"], 0), "event_wall_unix_ms")
    _want(isinstance(body["tracks"], list) and len(body["tracks"]) <= 64
          and all(_int(t) for t in body["tracks"]), "tracks")
    _want(isinstance(body["model_sha256"], str) and len(body["model_sha256"]) <= 128, "model_sha256")
    c = body["clip"]
    _want(isinstance(c, Mapping) and set(c) == {"follows", "window_ms"} and isinstance(c["follows"], bool)
          and _pair(c["window_ms"]), "clip")
    s = body["skeletons"]
    _want(isinstance(s, Mapping) and set(s) == {"keypoint_order", "coords", "frame_size", "frames"}
          and s["keypoint_order"] == KEYPOINT_ORDER and s["coords"] == "decipixel", "skeletons")
    _want(isinstance(s["frame_size"], list) and len(s["frame_size"]) == 2
          and all(_int(v, 1, 100_000) for v in s["frame_size"]), "skeletons.frame_size")
    frames = s["frames"]
    _want(isinstance(frames, list) and len(frames) <= 2000, "skeletons.frames")
    tracks = set(body["tracks"])
    for f in frames:
        _want(isinstance(f, Mapping) and set(f) == {"t_ms", "wall_unix_ms", "persons"}
              and _int(f["t_ms"], -(2**62)) and _int(f["wall_unix_ms"]) and isinstance(f["persons"], list),
              "skeletons.frames[]")
        for person in f["persons"]:
            _want(isinstance(person, Mapping) and set(person) == {"track", "box", "kp"}
                  and person["track"] in tracks, "skeleton of a track not involved in the event")
            _want(isinstance(person["box"], list) and len(person["box"]) == 4
                  and all(_int(v, -(2**31), 2**31) for v in person["box"]), "skeleton box")
            kp = person["kp"]
            _want(isinstance(kp, list) and len(kp) == 17 and all(
                isinstance(k, list) and len(k) == 3 and all(_int(v, -(2**31), 2**31) for v in k) for k in kp),
                "skeleton keypoints: 17 x [x, y, confidence] integers")
