"""Canonical bytes, hashes, times and keys shared by the log, checkpoints and verify.

See docs/audit-log.md §1-2: the line on disk *is* the canonical form, so what was hashed
and what is stored are the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.common.errors import InputError
from appliance.contracts.canonical import canonical_json_utf8

FORMAT_VERSION = 1
GENESIS_PREV = "0" * 64
RECORD_DOMAIN = b"appliance-audit-record-v1\n"
CHECKPOINT_DOMAIN = b"appliance-audit-checkpoint-v1\n"

#: The serialisation every audit hash and signature is computed over (docs/audit-log.md §1).
canonical = canonical_json_utf8


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(RECORD_DOMAIN + canonical(body)).hexdigest()


def utc_iso(unix_s: float) -> str:
    """Unix seconds → ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width, sorts as text)."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """ISO-8601 (``Z`` or offset; date only = midnight UTC; naive = UTC) → Unix seconds."""
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise InputError(f"not an ISO-8601 time: {text!r} (fix: e.g. 2026-11-26 or 2026-11-26T08:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex of SHA-256 of the raw public key: short enough to read aloud."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def public_key_from_raw_b64(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(unb64(text))


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Reads an Ed25519 public key: PEM SubjectPublicKeyInfo, a PEM/raw private key (its
    public half is used), 32 raw bytes, or their base64 text."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read key {path}: {exc.strerror or exc}") from None
    key: Any = None
    try:
        if b"PUBLIC KEY" in data:
            key = serialization.load_pem_public_key(data)
        elif b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        elif len(data) == 32:
            key = Ed25519PublicKey.from_public_bytes(data)
        else:
            raw = unb64(data.strip().decode("ascii"))
            key = Ed25519PublicKey.from_public_bytes(raw[-32:] if len(raw) in (32, 44) else raw)
    except (ValueError, TypeError, UnicodeDecodeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path} is not an Ed25519 public key (fix: give the device's PEM public key)")
    return key


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
