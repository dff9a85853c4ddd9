"""The sealed clip envelope, format version 1 (spec: docs/envelope.md).

    seal_clip(clip, device_id=..., sequence=..., signing_key=..., station_public_key=...) -> bytes
    parse_envelope(data) -> ParsedEnvelope          structure only, no keys
    verify_envelope(data, keys) -> EnvelopeHeader    device signature (before any decryption)
    open_envelope(data, station_private_key, keys) -> OpenedEnvelope   verify, then decrypt

Every failure raises :class:`EnvelopeError` carrying one reason code from the spec; parsing
never raises anything else on any input (a fuzz test holds it to that).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, cast

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.common.errors import ApplianceError
from appliance.contracts.canonical import canonical_json
from appliance.contracts.identifiers import DEVICE_ID_RE
from appliance.contracts.keys import KEMS, HpkePrivateKey, HpkePublicKey
from appliance.contracts.types import Clip

MAGIC = b"APSE"
VERSION = 1
FORMAT = "appliance-envelope"
METADATA_FORMAT = "appliance-clip-metadata"
SEGMENT_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
SIGNATURE_BYTES = 64
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
KEY_INFO = b"appliance-envelope-v1 key"
SIG_CONTEXT = b"appliance-envelope-v1 sig\x00"
KDF, AEAD = "HKDF_SHA256", "AES_256_GCM"
WRAPPED_KEY_BYTES = {"MLKEM768_X25519": 1120 + 32 + TAG_BYTES, "X25519": 32 + 32 + TAG_BYTES}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIXED = struct.Struct(">4sHI")  # magic, version, header length

#: Reason codes (docs/envelope.md).
REASONS = ("garbage", "unknown_version", "truncated", "malformed", "oversize", "unknown_device",
           "wrong_device", "bad_signature", "replayed_sequence", "old_sequence",
           "wrong_station_key", "decrypt_failed")


class EnvelopeError(ApplianceError):
    """An envelope was refused; ``reason`` is a code from docs/envelope.md."""

    exit_code = 4

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"envelope rejected: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class EnvelopeHeader:
    """The signed, cleartext header (all fields of docs/envelope.md)."""

    device_id: str
    sequence: int
    created_unix_ms: int
    pattern: str
    event_window_ms: tuple[int, int]
    clip_wall_unix_ms: tuple[int, int]
    profile: Mapping[str, str]
    model_sha256: str
    content_type: str
    frames: int
    kem: str
    station_key: str
    nonce_prefix: bytes
    segment_bytes: int
    metadata_bytes: int
    video_bytes: int
    plaintext_bytes: int
    segments: int
    ciphertext_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "device_id": self.device_id,
            "sequence": self.sequence, "created_unix_ms": self.created_unix_ms,
            "pattern": self.pattern, "event_window_ms": list(self.event_window_ms),
            "clip_wall_unix_ms": list(self.clip_wall_unix_ms), "profile": dict(self.profile),
            "model_sha256": self.model_sha256, "content_type": self.content_type,
            "frames": self.frames, "suite": {"kem": self.kem, "kdf": KDF, "aead": AEAD},
            "station_key": self.station_key,
            "stream": {"nonce_prefix": self.nonce_prefix.hex(), "segment_bytes": self.segment_bytes},
            "sizes": {"metadata_bytes": self.metadata_bytes, "video_bytes": self.video_bytes,
                      "plaintext_bytes": self.plaintext_bytes, "segments": self.segments,
                      "ciphertext_bytes": self.ciphertext_bytes},
        }


@dataclass(frozen=True, eq=False)
class ParsedEnvelope:
    """An envelope split into its parts; nothing verified yet."""

    data: bytes
    header: EnvelopeHeader
    header_end: int      # offset just past the header (= end of the header digest input)
    key_start: int
    payload_start: int
    signature_start: int

    @property
    def wrapped_key(self) -> bytes:
        return self.data[self.key_start:self.payload_start]

    @property
    def signature(self) -> bytes:
        return self.data[self.signature_start:]

    @property
    def header_digest(self) -> bytes:
        return hashlib.sha256(memoryview(self.data)[:self.header_end]).digest()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, eq=False)
class OpenedEnvelope:
    header: EnvelopeHeader
    video: bytes
    metadata: dict[str, Any]


class SigningKeys(Protocol):
    """Anything that maps a device id to its Ed25519 public key (e.g. the station registry)."""

    def signing_public(self, device_id: str) -> Ed25519PublicKey | None: ...


# ---------------------------------------------------------------------------------------
# Header validation


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise EnvelopeError("malformed", what)


def _int(v: Any, lo: int = 0, hi: int = 2**63 - 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _str(v: Any, n: int = 256) -> bool:
    return isinstance(v, str) and 0 < len(v) <= n


def _obj(v: Any, keys: set[str], what: str) -> dict:
    _want(isinstance(v, dict) and set(v) == keys, f"{what}: wrong fields")
    return v


def _pair(v: Any, what: str, lo: int = -(2**62)) -> tuple[int, int]:
    _want(isinstance(v, list) and len(v) == 2 and all(_int(x, lo, 2**62) for x in v)
          and v[0] <= v[1], f"{what}: must be [start, end] integers")
    return int(v[0]), int(v[1])


_TOP_KEYS = {"format", "version", "device_id", "sequence", "created_unix_ms", "pattern",
             "event_window_ms", "clip_wall_unix_ms", "profile", "model_sha256", "content_type",
             "frames", "suite", "station_key", "stream", "sizes"}


def _header_from_bytes(raw: bytes) -> EnvelopeHeader:
    try:
        doc = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("malformed", "header is not ASCII JSON") from None
    _want(isinstance(doc, dict), "header is not an object")
    if doc.get("version") != VERSION and "version" in doc:
        raise EnvelopeError("unknown_version", f"header version {doc.get('version')!r}")
    _want(set(doc) == _TOP_KEYS, "header fields differ from the spec")
    try:
        _want(canonical_json(doc) == raw, "header is not canonical JSON")
    except ValueError:
        raise EnvelopeError("malformed", "header is not canonical JSON") from None
    _want(doc["format"] == FORMAT, "format")
    _want(_str(doc["device_id"], 64) and DEVICE_ID_RE.fullmatch(doc["device_id"]) is not None, "device_id")
    _want(_int(doc["sequence"], 1), "sequence")
    _want(_int(doc["created_unix_ms"]), "created_unix_ms")
    _want(_str(doc["pattern"], 64), "pattern")
    profile = _obj(doc["profile"], {"id", "version", "sha256"}, "profile")
    _want(all(_str(profile[k], 128) for k in ("id", "version")) and isinstance(profile["sha256"], str)
          and len(profile["sha256"]) <= 128, "profile")
    _want(isinstance(doc["model_sha256"], str) and len(doc["model_sha256"]) <= 128, "model_sha256")
    _want(_str(doc["content_type"], 128), "content_type")
    _want(_int(doc["frames"], 0, 10**7), "frames")
    suite = _obj(doc["suite"], {"kem", "kdf", "aead"}, "suite")
    _want(suite["kem"] in KEMS and suite["kdf"] == KDF and suite["aead"] == AEAD, "suite")
    _want(_str(doc["station_key"], 64), "station_key")
    stream = _obj(doc["stream"], {"nonce_prefix", "segment_bytes"}, "stream")
    _want(isinstance(stream["nonce_prefix"], str)
          and re.fullmatch(r"[0-9a-f]{14}", stream["nonce_prefix"]) is not None, "stream.nonce_prefix")
    _want(_int(stream["segment_bytes"], 1024, 2**24), "stream.segment_bytes")
    sizes = _obj(doc["sizes"], {"metadata_bytes", "video_bytes", "plaintext_bytes", "segments",
                                "ciphertext_bytes"}, "sizes")
    _want(all(_int(v, 0, 2**40) for v in sizes.values()), "sizes")
    seg = stream["segment_bytes"]
    _want(sizes["plaintext_bytes"] == 4 + sizes["metadata_bytes"] + sizes["video_bytes"]
          and sizes["segments"] == max(1, math.ceil(sizes["plaintext_bytes"] / seg))
          and sizes["ciphertext_bytes"] == sizes["plaintext_bytes"] + TAG_BYTES * sizes["segments"]
          and sizes["segments"] < 2**32, "sizes are inconsistent")
    return EnvelopeHeader(
        device_id=doc["device_id"], sequence=doc["sequence"], created_unix_ms=doc["created_unix_ms"],
        pattern=doc["pattern"], event_window_ms=_pair(doc["event_window_ms"], "event_window_ms"),
        clip_wall_unix_ms=_pair(doc["clip_wall_unix_ms"], "clip_wall_unix_ms", 0),
        profile=dict(profile), model_sha256=doc["model_sha256"], content_type=doc["content_type"],
        frames=doc["frames"], kem=suite["kem"], station_key=doc["station_key"],
        nonce_prefix=bytes.fromhex(stream["nonce_prefix"]), segment_bytes=seg,
        metadata_bytes=sizes["metadata_bytes"], video_bytes=sizes["video_bytes"],
        plaintext_bytes=sizes["plaintext_bytes"], segments=sizes["segments"],
        ciphertext_bytes=sizes["ciphertext_bytes"])


# ---------------------------------------------------------------------------------------
# Parse / verify / open


def parse_envelope(data: bytes, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> ParsedEnvelope:
    """Checks the structure; raises :class:`EnvelopeError` (and only that) on any bad input."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > max_bytes:
        raise EnvelopeError("oversize", f"{len(data)} bytes > limit {max_bytes}")
    if len(data) < 4 or data[:4] != MAGIC:
        if len(data) < 4 and MAGIC.startswith(data) and data:
            raise EnvelopeError("truncated", "shorter than the magic")
        raise EnvelopeError("garbage", "no envelope magic")
    if len(data) < _FIXED.size:
        raise EnvelopeError("truncated", "shorter than the fixed header")
    _, version, header_len = _FIXED.unpack_from(data)
    if version != VERSION:
        raise EnvelopeError("unknown_version", f"format version {version}")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise EnvelopeError("malformed", f"header length {header_len}")
    header_end = _FIXED.size + header_len
    if len(data) < header_end + 2:
        raise EnvelopeError("truncated", "header cut short")
    header = _header_from_bytes(data[_FIXED.size:header_end])
    (key_len,) = struct.unpack_from(">H", data, header_end)
    if key_len != WRAPPED_KEY_BYTES[header.kem]:
        raise EnvelopeError("malformed", f"wrapped key is {key_len} bytes, {header.kem} needs "
                                         f"{WRAPPED_KEY_BYTES[header.kem]}")
    key_start = header_end + 2
    payload_start = key_start + key_len
    signature_start = payload_start + header.ciphertext_bytes
    expected = signature_start + SIGNATURE_BYTES
    if len(data) < expected:
        raise EnvelopeError("truncated", f"{len(data)} of {expected} bytes")
    if len(data) > expected:
        raise EnvelopeError("malformed", f"{len(data) - expected} trailing bytes")
    return ParsedEnvelope(data, header, header_end, key_start, payload_start, signature_start)


def _signed_message(data: bytes | bytearray, signature_start: int) -> bytes:
    return SIG_CONTEXT + hashlib.sha256(memoryview(data)[:signature_start]).digest()


def verify_parsed(parsed: ParsedEnvelope, keys: Ed25519PublicKey | SigningKeys) -> EnvelopeHeader:
    """Checks the device signature of a parsed envelope against the device's known key."""
    public: Ed25519PublicKey | None
    if isinstance(keys, Ed25519PublicKey):
        public = keys
    else:
        public = keys.signing_public(parsed.header.device_id)
        if public is None:
            raise EnvelopeError("unknown_device", parsed.header.device_id)
    try:
        public.verify(parsed.signature, _signed_message(parsed.data, parsed.signature_start))
    except InvalidSignature:
        raise EnvelopeError("bad_signature", f"device {parsed.header.device_id}") from None
    return parsed.header


def verify_envelope(data: bytes, keys: Ed25519PublicKey | SigningKeys, *,
                    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> EnvelopeHeader:
    """Parses and checks the device signature; no private key needed, nothing decrypted.

    ``keys`` is the device's Ed25519 public key, or a registry with ``signing_public(device_id)``.
    """
    return verify_parsed(parse_envelope(data, max_bytes=max_bytes), keys)


def _suite(kem: str) -> hpke.Suite:
    return hpke.Suite(getattr(hpke.KEM, kem), hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def open_envelope(data: bytes, station_private_key: HpkePrivateKey,
                  keys: Ed25519PublicKey | SigningKeys, *,
                  max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> OpenedEnvelope:
    """Verifies the signature, then decrypts: (header, WebM bytes, metadata dict)."""
    parsed = parse_envelope(data, max_bytes=max_bytes)
    header = verify_parsed(parsed, keys)
    if header.kem != station_private_key.kem or \
            header.station_key != station_private_key.public_key().fingerprint:
        raise EnvelopeError("wrong_station_key", f"sealed to {header.station_key}")
    header_digest = parsed.header_digest
    try:
        payload_key = _suite(header.kem).decrypt(parsed.wrapped_key, station_private_key.to_cryptography(),
                                                 info=KEY_INFO + header_digest)
    except (InvalidTag, ValueError):  # a bad encapsulation or tag; ValueError for a malformed enc
        raise EnvelopeError("decrypt_failed", "payload key does not unwrap") from None
    if len(payload_key) != 32:
        raise EnvelopeError("decrypt_failed", "payload key has the wrong length")
    aead = AESGCM(payload_key)
    view = memoryview(data)
    out = bytearray(header.plaintext_bytes)
    out_view = memoryview(out)
    pos = parsed.payload_start
    for i in range(header.segments):
        lo = i * header.segment_bytes
        n = min(header.segment_bytes, header.plaintext_bytes - lo)
        last = i == header.segments - 1
        try:
            aead.decrypt_into(_nonce(header.nonce_prefix, i, last), view[pos:pos + n + TAG_BYTES],
                              header_digest, out_view[lo:lo + n])
        except InvalidTag:
            raise EnvelopeError("decrypt_failed", f"segment {i} does not authenticate") from None
        pos += n + TAG_BYTES
    out_view.release()
    (metadata_len,) = struct.unpack_from(">I", out)
    if metadata_len != header.metadata_bytes:
        raise EnvelopeError("decrypt_failed", "metadata length differs from the header")
    try:
        metadata = json.loads(bytes(out[4:4 + metadata_len]))
    except ValueError:
        raise EnvelopeError("decrypt_failed", "metadata is not JSON") from None
    return OpenedEnvelope(header, bytes(out[4 + metadata_len:]), metadata)


# ---------------------------------------------------------------------------------------
# Seal


def clip_metadata(clip: Clip) -> dict[str, Any]:
    """The JSON metadata sealed next to the video (docs/envelope.md, "Metadata")."""
    d = clip.trigger.decision
    return {
        "format": METADATA_FORMAT, "version": VERSION,
        "event": clip.trigger.event.to_json(),
        "decision": {"rule": d.rule, "reason": d.reason},
        "profile": {"id": d.profile.id, "version": d.profile.version, "sha256": d.profile.sha256},
        "window_s": [clip.trigger.window_start_t, clip.trigger.window_end_t],
        "width": clip.width, "height": clip.height, "fps": clip.fps,
        "content_type": clip.content_type, "model_sha256": clip.model_sha256,
        "frame_times_s": list(clip.frame_times), "frame_wall_unix": list(clip.frame_wall),
        "frame_sha256": list(clip.frame_sha256), "tracks": clip.tracks,
    }


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def seal_clip(clip: Clip, *, device_id: str, sequence: int, signing_key: Ed25519PrivateKey,
              station_public_key: HpkePublicKey, kem: str | None = None,
              created_unix_ms: int | None = None) -> bytes:
    """Encrypts ``clip`` to the station and signs it as ``device_id``; returns the envelope.

    ``kem``, if given (from ``seal.kem`` in the config), must match the station key's KEM, so a
    wrong key file is caught here rather than by an operator years later.
    """
    if kem is not None and kem != station_public_key.kem:
        raise EnvelopeError("malformed", f"seal.kem is {kem} but the station key is {station_public_key.kem}")
    event = clip.trigger.event
    profile = clip.trigger.decision.profile
    walls = clip.frame_wall or (time.time(),)
    return seal_bytes(clip.video, clip_metadata(clip), device_id=device_id, sequence=sequence,
                      signing_key=signing_key, station_public_key=station_public_key,
                      created_unix_ms=created_unix_ms, pattern=event.pattern.value,
                      event_window_ms=(_ms(event.start_t), _ms(event.end_t)),
                      clip_wall_unix_ms=(_ms(min(walls)), _ms(max(walls))),
                      profile={"id": profile.id, "version": profile.version, "sha256": profile.sha256},
                      model_sha256=clip.model_sha256, content_type=clip.content_type,
                      frames=len(clip.frame_times))


def seal_bytes(video: bytes, metadata: Mapping[str, Any], *, device_id: str, sequence: int,
               signing_key: Ed25519PrivateKey, station_public_key: HpkePublicKey, pattern: str,
               event_window_ms: tuple[int, int], clip_wall_unix_ms: tuple[int, int],
               profile: Mapping[str, str], model_sha256: str, content_type: str, frames: int,
               created_unix_ms: int | None = None, segment_bytes: int = SEGMENT_BYTES) -> bytes:
    """The sharp core of :func:`seal_clip`: seals arbitrary video bytes and metadata."""
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise EnvelopeError("malformed", f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
    metadata_bytes = canonical_json(metadata)
    plaintext_len = 4 + len(metadata_bytes) + len(video)
    segments = max(1, math.ceil(plaintext_len / segment_bytes))
    header = EnvelopeHeader(
        device_id=device_id, sequence=int(sequence),
        created_unix_ms=int(time.time() * 1000) if created_unix_ms is None else int(created_unix_ms),
        pattern=pattern, event_window_ms=cast(tuple[int, int], tuple(event_window_ms)),
        clip_wall_unix_ms=cast(tuple[int, int], tuple(clip_wall_unix_ms)),
        profile=dict(profile), model_sha256=model_sha256, content_type=content_type, frames=int(frames),
        kem=station_public_key.kem, station_key=station_public_key.fingerprint,
        nonce_prefix=os.urandom(NONCE_PREFIX_BYTES), segment_bytes=segment_bytes,
        metadata_bytes=len(metadata_bytes), video_bytes=len(video), plaintext_bytes=plaintext_len,
        segments=segments, ciphertext_bytes=plaintext_len + TAG_BYTES * segments)
    header_bytes = canonical_json(header.to_json())
    # Round-trip through the parser's checks, so the sealer can never emit what the station refuses.
    _header_from_bytes(header_bytes)
    head = _FIXED.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes
    header_digest = hashlib.sha256(head).digest()
    payload_key = os.urandom(32)
    wrapped = _suite(header.kem).encrypt(payload_key, station_public_key.to_cryptography(),
                                         info=KEY_INFO + header_digest)
    # One preallocated buffer; segments are encrypted straight into it (no per-segment copies).
    payload_start = len(head) + 2 + len(wrapped)
    signature_start = payload_start + header.ciphertext_bytes
    out = bytearray(signature_start + SIGNATURE_BYTES)
    out[:payload_start] = head + struct.pack(">H", len(wrapped)) + wrapped
    aead = AESGCM(payload_key)
    prelude = struct.pack(">I", len(metadata_bytes)) + metadata_bytes
    video_view = memoryview(video)
    out_view = memoryview(out)
    pos = payload_start
    chunk: bytes | memoryview
    for i in range(segments):
        lo, hi = i * segment_bytes, min((i + 1) * segment_bytes, plaintext_len)
        if hi <= len(prelude):
            chunk = prelude[lo:hi]
        elif lo >= len(prelude):
            chunk = video_view[lo - len(prelude):hi - len(prelude)]
        else:
            chunk = prelude[lo:] + bytes(video_view[:hi - len(prelude)])
        n = hi - lo + TAG_BYTES
        aead.encrypt_into(_nonce(header.nonce_prefix, i, i == segments - 1), chunk, header_digest,
                          out_view[pos:pos + n])
        pos += n
    assert pos == signature_start
    out_view.release()
    out[signature_start:] = signing_key.sign(_signed_message(out, signature_start))
    return bytes(out)
