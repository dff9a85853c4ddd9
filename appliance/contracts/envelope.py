"""The sealed clip envelope, format versions 1 and 2 (spec: docs/envelope.md).

    seal_clip(clip, device_id=..., sequence=..., signing_key=..., station_public_key=...,
              evidence_public_key=None) -> bytes      v1, or v2 when an evidence key is given
    parse_envelope(data) -> ParsedEnvelope          structure only, no keys
    verify_envelope(data, keys) -> EnvelopeHeader    device signature (before any decryption)
    open_envelope(data, private_key, keys, rendition=None) -> OpenedEnvelope   verify, then decrypt

Version 2 carries two renditions: ``redacted`` (bystanders pixelated) for the station key and
``full`` for a separate evidence key. Every failure raises :class:`EnvelopeError` carrying one
reason code from the spec; parsing never raises anything else on any input (a fuzz test holds
it to that).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Mapping, Sequence
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
VERSION = 1            # what a box without an evidence key seals
VERSION_2 = 2          # two renditions (redacted → station key, full → evidence key)
VERSIONS = (VERSION, VERSION_2)
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
KEY_INFO_V2 = b"appliance-envelope-v2 key"
SIG_CONTEXT_V2 = b"appliance-envelope-v2 sig\x00"
KDF, AEAD = "HKDF_SHA256", "AES_256_GCM"
WRAPPED_KEY_BYTES = {"MLKEM768_X25519": 1120 + 32 + TAG_BYTES, "X25519": 32 + 32 + TAG_BYTES}
#: Rendition names (docs/envelope.md, "Format version 2"), in the v2 header's fixed order.
RENDITION_REDACTED = "redacted"
RENDITION_FULL = "full"
RENDITIONS_V2 = (RENDITION_REDACTED, RENDITION_FULL)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIXED = struct.Struct(">4sHI")  # magic, version, header length

#: Reason codes (docs/envelope.md).
REASONS = ("garbage", "unknown_version", "truncated", "malformed", "oversize", "unknown_device",
           "wrong_device", "bad_signature", "replayed_sequence", "old_sequence",
           "wrong_station_key", "decrypt_failed", "no_such_rendition", "wrong_key")


class EnvelopeError(ApplianceError):
    """An envelope was refused; ``reason`` is a code from docs/envelope.md."""

    exit_code = 4

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"envelope rejected: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class RenditionHeader:
    """One rendition's entry of the header: recipient, suite, STREAM parameters and sizes.

    A v1 envelope has one, named ``full``, whose recipient is the station key."""

    name: str
    recipient: str          # fingerprint of the HPKE public key the payload key is wrapped to
    kem: str
    nonce_prefix: bytes
    segment_bytes: int
    metadata_bytes: int
    video_bytes: int
    plaintext_bytes: int
    segments: int
    ciphertext_bytes: int

    def to_json(self) -> dict[str, Any]:
        """The v2 header's rendition object."""
        return {"name": self.name, "recipient": self.recipient,
                "suite": {"kem": self.kem, "kdf": KDF, "aead": AEAD}, **self._stream_and_sizes()}

    def _stream_and_sizes(self) -> dict[str, Any]:
        return {"stream": {"nonce_prefix": self.nonce_prefix.hex(), "segment_bytes": self.segment_bytes},
                "sizes": {"metadata_bytes": self.metadata_bytes, "video_bytes": self.video_bytes,
                          "plaintext_bytes": self.plaintext_bytes, "segments": self.segments,
                          "ciphertext_bytes": self.ciphertext_bytes}}


@dataclass(frozen=True)
class EnvelopeHeader:
    """The signed, cleartext header (all fields of docs/envelope.md).

    v1 and v2 share the clip fields; the per-rendition ones live in ``renditions`` (one for v1,
    ``redacted`` then ``full`` for v2). The v1 field names (``kem``, ``nonce_prefix``, sizes …)
    are properties of the first rendition, so v1 readers keep working."""

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
    station_key: str
    renditions: tuple[RenditionHeader, ...]
    version: int = VERSION

    def rendition(self, name: str) -> RenditionHeader:
        for r in self.renditions:
            if r.name == name:
                return r
        raise EnvelopeError("no_such_rendition", f"version {self.version} envelope has no {name!r} rendition "
                                                 f"(it has {', '.join(r.name for r in self.renditions)})")

    @property
    def rendition_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.renditions)

    # v1 names, for the first (v1: only) rendition
    @property
    def kem(self) -> str:
        return self.renditions[0].kem

    @property
    def nonce_prefix(self) -> bytes:
        return self.renditions[0].nonce_prefix

    @property
    def segment_bytes(self) -> int:
        return self.renditions[0].segment_bytes

    @property
    def metadata_bytes(self) -> int:
        return self.renditions[0].metadata_bytes

    @property
    def video_bytes(self) -> int:
        return self.renditions[0].video_bytes

    @property
    def plaintext_bytes(self) -> int:
        return self.renditions[0].plaintext_bytes

    @property
    def segments(self) -> int:
        return self.renditions[0].segments

    @property
    def ciphertext_bytes(self) -> int:
        return sum(r.ciphertext_bytes for r in self.renditions)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT, "version": self.version, "device_id": self.device_id,
            "sequence": self.sequence, "created_unix_ms": self.created_unix_ms,
            "pattern": self.pattern, "event_window_ms": list(self.event_window_ms),
            "clip_wall_unix_ms": list(self.clip_wall_unix_ms), "profile": dict(self.profile),
            "model_sha256": self.model_sha256, "content_type": self.content_type,
            "frames": self.frames, "station_key": self.station_key,
        }
        if self.version == VERSION:
            only = self.renditions[0]
            doc["suite"] = {"kem": only.kem, "kdf": KDF, "aead": AEAD}
            doc.update(only._stream_and_sizes())
        else:
            doc["renditions"] = [r.to_json() for r in self.renditions]
        return doc


@dataclass(frozen=True)
class RenditionSpan:
    """Where one rendition's wrapped key and ciphertext lie in the envelope bytes."""

    header: RenditionHeader
    key_start: int
    payload_start: int
    payload_end: int


@dataclass(frozen=True, eq=False)
class ParsedEnvelope:
    """An envelope split into its parts; nothing verified yet."""

    data: bytes
    header: EnvelopeHeader
    header_end: int      # offset just past the header (= end of the header digest input)
    spans: tuple[RenditionSpan, ...]
    signature_start: int

    @property
    def key_start(self) -> int:        # the first rendition's (v1: the only one)
        return self.spans[0].key_start

    @property
    def payload_start(self) -> int:
        return self.spans[0].payload_start

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

    def span(self, name: str) -> RenditionSpan:
        self.header.rendition(name)  # raises no_such_rendition
        return next(s for s in self.spans if s.header.name == name)


@dataclass(frozen=True, eq=False)
class OpenedEnvelope:
    """One decrypted rendition: ``video`` (WebM/VP8 bytes) and its ``metadata``.

    ``rendition`` is ``"full"`` for v1 (its one rendition has no bystander pixelation),
    ``"redacted"`` or ``"full"`` for v2."""

    header: EnvelopeHeader
    video: bytes
    metadata: dict[str, Any]
    rendition: str = RENDITION_FULL


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


_COMMON_KEYS = {"format", "version", "device_id", "sequence", "created_unix_ms", "pattern",
                "event_window_ms", "clip_wall_unix_ms", "profile", "model_sha256", "content_type",
                "frames", "station_key"}
_STREAM_KEYS = {"suite", "stream", "sizes"}
_TOP_KEYS = {1: _COMMON_KEYS | _STREAM_KEYS, 2: _COMMON_KEYS | {"renditions"}}
_RENDITION_KEYS = {"name", "recipient"} | _STREAM_KEYS


def _rendition_from_json(doc: dict, name: str, recipient: str, what: str) -> RenditionHeader:
    """Suite, stream and sizes (v1: top level; v2: one rendition object), consistency-checked."""
    suite = _obj(doc["suite"], {"kem", "kdf", "aead"}, f"{what}suite")
    _want(suite["kem"] in KEMS and suite["kdf"] == KDF and suite["aead"] == AEAD, f"{what}suite")
    stream = _obj(doc["stream"], {"nonce_prefix", "segment_bytes"}, f"{what}stream")
    _want(isinstance(stream["nonce_prefix"], str)
          and re.fullmatch(r"[0-9a-f]{14}", stream["nonce_prefix"]) is not None, f"{what}stream.nonce_prefix")
    _want(_int(stream["segment_bytes"], 1024, 2**24), f"{what}stream.segment_bytes")
    sizes = _obj(doc["sizes"], {"metadata_bytes", "video_bytes", "plaintext_bytes", "segments",
                                "ciphertext_bytes"}, f"{what}sizes")
    _want(all(_int(v, 0, 2**40) for v in sizes.values()), f"{what}sizes")
    seg = stream["segment_bytes"]
    _want(sizes["plaintext_bytes"] == 4 + sizes["metadata_bytes"] + sizes["video_bytes"]
          and sizes["segments"] == max(1, math.ceil(sizes["plaintext_bytes"] / seg))
          and sizes["ciphertext_bytes"] == sizes["plaintext_bytes"] + TAG_BYTES * sizes["segments"]
          and sizes["segments"] < 2**32, f"{what}sizes are inconsistent")
    return RenditionHeader(
        name=name, recipient=recipient, kem=suite["kem"], nonce_prefix=bytes.fromhex(stream["nonce_prefix"]),
        segment_bytes=seg, metadata_bytes=sizes["metadata_bytes"], video_bytes=sizes["video_bytes"],
        plaintext_bytes=sizes["plaintext_bytes"], segments=sizes["segments"],
        ciphertext_bytes=sizes["ciphertext_bytes"])


def _renditions_v2(value: Any, station_key: str) -> tuple[RenditionHeader, ...]:
    _want(isinstance(value, list) and len(value) == len(RENDITIONS_V2), "renditions: must be a list of two")
    out = []
    for expected, doc in zip(RENDITIONS_V2, value, strict=True):
        _want(isinstance(doc, dict) and set(doc) == _RENDITION_KEYS, "renditions: wrong fields")
        _want(doc["name"] == expected, f"renditions: must be {list(RENDITIONS_V2)} in this order")
        _want(_str(doc["recipient"], 64), f"renditions.{expected}.recipient")
        out.append(_rendition_from_json(doc, expected, doc["recipient"], f"renditions.{expected}."))
    redacted, full = out
    _want(redacted.recipient == station_key, "the redacted rendition must be sealed to station_key")
    _want(full.recipient != redacted.recipient, "the full rendition must not be sealed to the station key")
    _want(full.nonce_prefix != redacted.nonce_prefix, "the renditions' nonce prefixes must differ")
    return tuple(out)


def _header_from_bytes(raw: bytes, version: int = VERSION) -> EnvelopeHeader:
    try:
        doc = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("malformed", "header is not ASCII JSON") from None
    _want(isinstance(doc, dict), "header is not an object")
    if doc.get("version") != version and "version" in doc:
        raise EnvelopeError("unknown_version", f"header version {doc.get('version')!r}, binary {version}")
    _want(set(doc) == _TOP_KEYS[version], "header fields differ from the spec")
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
    _want(_str(doc["station_key"], 64), "station_key")
    if version == VERSION:
        renditions: tuple[RenditionHeader, ...] = (
            _rendition_from_json(doc, RENDITION_FULL, doc["station_key"], ""),)
    else:
        renditions = _renditions_v2(doc["renditions"], doc["station_key"])
    return EnvelopeHeader(
        device_id=doc["device_id"], sequence=doc["sequence"], created_unix_ms=doc["created_unix_ms"],
        pattern=doc["pattern"], event_window_ms=_pair(doc["event_window_ms"], "event_window_ms"),
        clip_wall_unix_ms=_pair(doc["clip_wall_unix_ms"], "clip_wall_unix_ms", 0),
        profile=dict(profile), model_sha256=doc["model_sha256"], content_type=doc["content_type"],
        frames=doc["frames"], station_key=doc["station_key"], renditions=renditions, version=version)


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
    if version not in VERSIONS:
        raise EnvelopeError("unknown_version", f"format version {version}")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise EnvelopeError("malformed", f"header length {header_len}")
    header_end = _FIXED.size + header_len
    if len(data) < header_end + 2:
        raise EnvelopeError("truncated", "header cut short")
    header = _header_from_bytes(data[_FIXED.size:header_end], version)
    spans = []
    pos = header_end
    for rendition in header.renditions:
        if len(data) < pos + 2:
            raise EnvelopeError("truncated", f"{rendition.name}: wrapped-key length cut short")
        (key_len,) = struct.unpack_from(">H", data, pos)
        if key_len != WRAPPED_KEY_BYTES[rendition.kem]:
            raise EnvelopeError("malformed", f"{rendition.name}: wrapped key is {key_len} bytes, {rendition.kem} "
                                             f"needs {WRAPPED_KEY_BYTES[rendition.kem]}")
        key_start = pos + 2
        payload_start = key_start + key_len
        pos = payload_start + rendition.ciphertext_bytes
        spans.append(RenditionSpan(rendition, key_start, payload_start, pos))
    signature_start = pos
    expected = signature_start + SIGNATURE_BYTES
    if len(data) < expected:
        raise EnvelopeError("truncated", f"{len(data)} of {expected} bytes")
    if len(data) > expected:
        raise EnvelopeError("malformed", f"{len(data) - expected} trailing bytes")
    return ParsedEnvelope(data, header, header_end, tuple(spans), signature_start)


def _signed_message(data: bytes | bytearray, signature_start: int, version: int = VERSION) -> bytes:
    context = SIG_CONTEXT if version == VERSION else SIG_CONTEXT_V2
    return context + hashlib.sha256(memoryview(data)[:signature_start]).digest()


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
        public.verify(parsed.signature, _signed_message(parsed.data, parsed.signature_start, parsed.header.version))
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


def _bindings(version: int, header_digest: bytes, name: str) -> tuple[bytes, bytes]:
    """(HPKE info, STREAM aad) of a rendition: v1 binds the header, v2 the header and the name."""
    if version == VERSION:
        return KEY_INFO + header_digest, header_digest
    tail = header_digest + b"\x00" + name.encode("ascii")
    return KEY_INFO_V2 + tail, tail


def _choose_rendition(header: EnvelopeHeader, fingerprint: str, rendition: str | None) -> RenditionHeader:
    """The rendition to open: the named one, else the one sealed to this key (v1: the only one)."""
    if rendition is not None:
        return header.rendition(rendition)
    if header.version == VERSION:
        return header.renditions[0]
    for r in header.renditions:
        if r.recipient == fingerprint:
            return r
    raise EnvelopeError("wrong_key", f"key {fingerprint} is the recipient of no rendition "
                                     f"(redacted: {header.renditions[0].recipient}, "
                                     f"full: {header.renditions[1].recipient})")


def open_envelope(data: bytes, private_key: HpkePrivateKey, keys: Ed25519PublicKey | SigningKeys, *,
                  rendition: str | None = None, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> OpenedEnvelope:
    """Verifies the signature, then decrypts one rendition: (header, WebM bytes, metadata, name).

    ``rendition=None`` opens the rendition sealed to ``private_key`` (v1: its only one, ``full``;
    v2 with the station key: ``redacted``; with the evidence key: ``full``). A named rendition
    the key is not the recipient of raises ``wrong_key`` (v1: ``wrong_station_key``)."""
    parsed = parse_envelope(data, max_bytes=max_bytes)
    header = verify_parsed(parsed, keys)
    fingerprint = private_key.public_key().fingerprint
    chosen = _choose_rendition(header, fingerprint, rendition)
    if chosen.kem != private_key.kem or chosen.recipient != fingerprint:
        reason = "wrong_station_key" if header.version == VERSION else "wrong_key"
        raise EnvelopeError(reason, f"the {chosen.name} rendition is sealed to {chosen.recipient}, "
                                    f"not to {fingerprint}")
    span = parsed.span(chosen.name)
    info, aad = _bindings(header.version, parsed.header_digest, chosen.name)
    try:
        payload_key = _suite(chosen.kem).decrypt(parsed.data[span.key_start:span.payload_start],
                                                 private_key.to_cryptography(), info=info)
    except (InvalidTag, ValueError):  # a bad encapsulation or tag; ValueError for a malformed enc
        raise EnvelopeError("decrypt_failed", f"{chosen.name}: payload key does not unwrap") from None
    if len(payload_key) != 32:
        raise EnvelopeError("decrypt_failed", "payload key has the wrong length")
    out = _decrypt_stream(parsed.data, span, payload_key, aad)
    (metadata_len,) = struct.unpack_from(">I", out)
    if metadata_len != chosen.metadata_bytes:
        raise EnvelopeError("decrypt_failed", "metadata length differs from the header")
    try:
        metadata = json.loads(bytes(out[4:4 + metadata_len]))
    except ValueError:
        raise EnvelopeError("decrypt_failed", "metadata is not JSON") from None
    if header.version != VERSION and (not isinstance(metadata, dict) or metadata.get("rendition") != chosen.name):
        raise EnvelopeError("decrypt_failed", f"the {chosen.name} rendition's metadata names another rendition")
    return OpenedEnvelope(header, bytes(out[4 + metadata_len:]), metadata, chosen.name)


def _decrypt_stream(data: bytes, span: RenditionSpan, payload_key: bytes, aad: bytes) -> bytearray:
    r = span.header
    aead = AESGCM(payload_key)
    view = memoryview(data)
    out = bytearray(r.plaintext_bytes)
    out_view = memoryview(out)
    pos = span.payload_start
    for i in range(r.segments):
        lo = i * r.segment_bytes
        n = min(r.segment_bytes, r.plaintext_bytes - lo)
        try:
            aead.decrypt_into(_nonce(r.nonce_prefix, i, i == r.segments - 1), view[pos:pos + n + TAG_BYTES],
                              aad, out_view[lo:lo + n])
        except InvalidTag:
            raise EnvelopeError("decrypt_failed", f"{r.name}: segment {i} does not authenticate") from None
        pos += n + TAG_BYTES
    out_view.release()
    return out


# ---------------------------------------------------------------------------------------
# Seal


def clip_metadata(clip: Clip, rendition: str | None = None) -> dict[str, Any]:
    """The JSON metadata sealed next to the video (docs/envelope.md, "Metadata").

    ``rendition=None``: the v1 metadata of ``clip.video``. ``"full"`` / ``"redacted"``: the v2
    metadata of that rendition (its own frame hashes, the involved persons' boxes, what was
    pixelated)."""
    d = clip.trigger.decision
    meta: dict[str, Any] = {
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
    if rendition is None:
        return meta
    meta["version"] = VERSION_2
    meta["rendition"] = rendition
    meta["involved_boxes"] = {k: [list(b) for b in v] for k, v in clip.involved_boxes.items()}
    if rendition == RENDITION_FULL:
        meta.update(pixelated_tracks=[], redaction={"method": "none"})
    elif rendition == RENDITION_REDACTED:
        redacted = clip.redacted
        if redacted is None:
            raise EnvelopeError("malformed", "the clip has no redacted rendition (build it with bystander "
                                             "pixelation before sealing version 2)")
        meta.update(frame_sha256=list(redacted.frame_sha256), pixelated_tracks=list(redacted.pixelated_tracks),
                    redaction=dict(redacted.redaction))
    else:
        raise EnvelopeError("no_such_rendition", rendition)
    return meta


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def seal_clip(clip: Clip, *, device_id: str, sequence: int, signing_key: Ed25519PrivateKey,
              station_public_key: HpkePublicKey, kem: str | None = None,
              evidence_public_key: HpkePublicKey | None = None,
              created_unix_ms: int | None = None) -> bytes:
    """Encrypts ``clip`` and signs it as ``device_id``; returns the envelope.

    Without ``evidence_public_key``: version 1, ``clip.video`` sealed to the station. With it:
    version 2, ``clip.redacted`` sealed to the station and ``clip.video`` (full) to the evidence
    key only. ``kem``, if given (from ``seal.kem`` in the config), must match the station key's
    KEM, so a wrong key file is caught here rather than by an operator years later.
    """
    if kem is not None and kem != station_public_key.kem:
        raise EnvelopeError("malformed", f"seal.kem is {kem} but the station key is {station_public_key.kem}")
    event = clip.trigger.event
    profile = clip.trigger.decision.profile
    walls = clip.frame_wall or (time.time(),)
    common: dict[str, Any] = dict(
        device_id=device_id, sequence=sequence, signing_key=signing_key, created_unix_ms=created_unix_ms,
        pattern=event.pattern.value, event_window_ms=(_ms(event.start_t), _ms(event.end_t)),
        clip_wall_unix_ms=(_ms(min(walls)), _ms(max(walls))),
        profile={"id": profile.id, "version": profile.version, "sha256": profile.sha256},
        model_sha256=clip.model_sha256, content_type=clip.content_type, frames=len(clip.frame_times))
    if evidence_public_key is None:
        return seal_bytes(clip.video, clip_metadata(clip), station_public_key=station_public_key, **common)
    if clip.redacted is None:
        raise EnvelopeError("malformed", "sealing version 2 needs the clip's redacted rendition")
    return seal_renditions([
        RenditionPlain(RENDITION_REDACTED, clip.redacted.video, clip_metadata(clip, RENDITION_REDACTED),
                       station_public_key),
        RenditionPlain(RENDITION_FULL, clip.video, clip_metadata(clip, RENDITION_FULL), evidence_public_key),
    ], **common)


@dataclass(frozen=True)
class RenditionPlain:
    """What :func:`seal_renditions` seals for one rendition."""

    name: str
    video: bytes
    metadata: Mapping[str, Any]
    recipient: HpkePublicKey


def _rendition_header(name: str, recipient: HpkePublicKey, metadata_len: int, video_len: int,
                      segment_bytes: int) -> RenditionHeader:
    plaintext_len = 4 + metadata_len + video_len
    segments = max(1, math.ceil(plaintext_len / segment_bytes))
    return RenditionHeader(
        name=name, recipient=recipient.fingerprint, kem=recipient.kem,
        nonce_prefix=os.urandom(NONCE_PREFIX_BYTES), segment_bytes=segment_bytes,
        metadata_bytes=metadata_len, video_bytes=video_len, plaintext_bytes=plaintext_len,
        segments=segments, ciphertext_bytes=plaintext_len + TAG_BYTES * segments)


def seal_bytes(video: bytes, metadata: Mapping[str, Any], *, device_id: str, sequence: int,
               signing_key: Ed25519PrivateKey, station_public_key: HpkePublicKey, pattern: str,
               event_window_ms: tuple[int, int], clip_wall_unix_ms: tuple[int, int],
               profile: Mapping[str, str], model_sha256: str, content_type: str, frames: int,
               created_unix_ms: int | None = None, segment_bytes: int = SEGMENT_BYTES) -> bytes:
    """The sharp core of :func:`seal_clip`, version 1: seals arbitrary video bytes and metadata."""
    return _seal([RenditionPlain(RENDITION_FULL, video, metadata, station_public_key)], VERSION,
                 device_id=device_id, sequence=sequence, signing_key=signing_key,
                 station_key=station_public_key.fingerprint, pattern=pattern, event_window_ms=event_window_ms,
                 clip_wall_unix_ms=clip_wall_unix_ms, profile=profile, model_sha256=model_sha256,
                 content_type=content_type, frames=frames, created_unix_ms=created_unix_ms,
                 segment_bytes=segment_bytes)


def seal_renditions(renditions: Sequence[RenditionPlain], *, device_id: str, sequence: int,
                    signing_key: Ed25519PrivateKey, pattern: str, event_window_ms: tuple[int, int],
                    clip_wall_unix_ms: tuple[int, int], profile: Mapping[str, str], model_sha256: str,
                    content_type: str, frames: int, created_unix_ms: int | None = None,
                    segment_bytes: int = SEGMENT_BYTES) -> bytes:
    """The sharp core of :func:`seal_clip`, version 2: ``redacted`` (to the station key) then
    ``full`` (to the evidence key). Refuses what the parser would refuse (e.g. ``full`` sealed to
    the station key)."""
    if tuple(r.name for r in renditions) != RENDITIONS_V2:
        raise EnvelopeError("malformed", f"version 2 seals the renditions {list(RENDITIONS_V2)} in this order")
    return _seal(renditions, VERSION_2, device_id=device_id, sequence=sequence, signing_key=signing_key,
                 station_key=renditions[0].recipient.fingerprint, pattern=pattern,
                 event_window_ms=event_window_ms, clip_wall_unix_ms=clip_wall_unix_ms, profile=profile,
                 model_sha256=model_sha256, content_type=content_type, frames=frames,
                 created_unix_ms=created_unix_ms, segment_bytes=segment_bytes)


def _seal(renditions: Sequence[RenditionPlain], version: int, *, device_id: str, sequence: int,
          signing_key: Ed25519PrivateKey, station_key: str, pattern: str, event_window_ms: tuple[int, int],
          clip_wall_unix_ms: tuple[int, int], profile: Mapping[str, str], model_sha256: str,
          content_type: str, frames: int, created_unix_ms: int | None, segment_bytes: int) -> bytes:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise EnvelopeError("malformed", f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
    metadata_bytes = [canonical_json(r.metadata) for r in renditions]
    rendition_headers = tuple(_rendition_header(r.name, r.recipient, len(m), len(r.video), segment_bytes)
                              for r, m in zip(renditions, metadata_bytes, strict=True))
    header = EnvelopeHeader(
        device_id=device_id, sequence=int(sequence),
        created_unix_ms=int(time.time() * 1000) if created_unix_ms is None else int(created_unix_ms),
        pattern=pattern, event_window_ms=cast(tuple[int, int], tuple(event_window_ms)),
        clip_wall_unix_ms=cast(tuple[int, int], tuple(clip_wall_unix_ms)),
        profile=dict(profile), model_sha256=model_sha256, content_type=content_type, frames=int(frames),
        station_key=station_key, renditions=rendition_headers, version=version)
    header_bytes = canonical_json(header.to_json())
    # Round-trip through the parser's checks, so the sealer can never emit what the station refuses.
    _header_from_bytes(header_bytes, version)
    head = _FIXED.pack(MAGIC, version, len(header_bytes)) + header_bytes
    header_digest = hashlib.sha256(head).digest()
    # One preallocated buffer; segments are encrypted straight into it (no per-segment copies).
    total = len(head) + sum(2 + WRAPPED_KEY_BYTES[rh.kem] + rh.ciphertext_bytes for rh in rendition_headers)
    out = bytearray(total + SIGNATURE_BYTES)
    out[:len(head)] = head
    out_view = memoryview(out)
    pos = len(head)
    for plain, rh, meta in zip(renditions, rendition_headers, metadata_bytes, strict=True):
        info, aad = _bindings(version, header_digest, rh.name)
        payload_key = os.urandom(32)
        key = _suite(rh.kem).encrypt(payload_key, plain.recipient.to_cryptography(), info=info)
        out[pos:pos + 2 + len(key)] = struct.pack(">H", len(key)) + key
        pos += 2 + len(key)
        pos = _encrypt_stream(out_view, pos, rh, payload_key, aad, meta, plain.video)
    assert pos == total
    out_view.release()
    out[total:] = signing_key.sign(_signed_message(out, total, version))
    return bytes(out)


def _encrypt_stream(out_view: memoryview, pos: int, rh: RenditionHeader, payload_key: bytes, aad: bytes,
                    metadata_bytes: bytes, video: bytes) -> int:
    """Encrypts ``u32 len ‖ metadata ‖ video`` as STREAM segments into ``out_view`` at ``pos``."""
    aead = AESGCM(payload_key)
    prelude = struct.pack(">I", len(metadata_bytes)) + metadata_bytes
    video_view = memoryview(video)
    chunk: bytes | memoryview
    for i in range(rh.segments):
        lo, hi = i * rh.segment_bytes, min((i + 1) * rh.segment_bytes, rh.plaintext_bytes)
        if hi <= len(prelude):
            chunk = prelude[lo:hi]
        elif lo >= len(prelude):
            chunk = video_view[lo - len(prelude):hi - len(prelude)]
        else:
            chunk = prelude[lo:] + bytes(video_view[:hi - len(prelude)])
        n = hi - lo + TAG_BYTES
        aead.encrypt_into(_nonce(rh.nonce_prefix, i, i == rh.segments - 1), chunk, aad, out_view[pos:pos + n])
        pos += n
    return pos
