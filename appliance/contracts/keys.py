"""Key generation, storage and fingerprints for the device and the station (docs/keys.md).

Small functions over pyca/cryptography: each writes or reads one file. Private key files are
created ``0600`` with ``O_EXCL`` (never silently overwritten) and their contents are never
printed or logged; humans compare :func:`public_key_fingerprint` values.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.common.durable import atomic_write
from appliance.common.errors import InputError

KEMS = ("MLKEM768_X25519", "X25519")
DEFAULT_KEM = "MLKEM768_X25519"

_MLKEM_SEED = 64
_MLKEM_PUBLIC = 1184
_X25519 = 32
_PRIVATE_LEN = {"X25519": _X25519, "MLKEM768_X25519": _MLKEM_SEED + _X25519}
_PUBLIC_LEN = {"X25519": _X25519, "MLKEM768_X25519": _MLKEM_PUBLIC + _X25519}


class KeyFileError(InputError):
    """A key file is missing, unreadable, of the wrong kind, or would be overwritten."""


# ---------------------------------------------------------------------------------------
# Files


def write_private_file(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Writes ``data`` to a new file with mode 0600 (refuses to replace one unless asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, data, mode=0o600, exact_mode=True, replace=overwrite)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key "
                           f"(move it away first if you really mean to replace it)") from None
    return path


def write_public_file(path: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite it")
    atomic_write(path, data, mode=0o644, exact_mode=True)
    return path


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def fingerprint_bytes(raw: bytes) -> str:
    """First 16 hex digits of SHA-256(raw), grouped by four: ``3fa2:91c0:7be4:0d15``."""
    h = hashlib.sha256(raw).hexdigest()[:16]
    return ":".join(h[i:i + 4] for i in range(0, 16, 4))


# ---------------------------------------------------------------------------------------
# Ed25519 signing keys (device and station)


def generate_signing_key(path: str | Path, *, public_path: str | Path | None = None,
                         overwrite: bool = False) -> Ed25519PublicKey:
    """Creates an Ed25519 private key file (0600) and, if asked, its public key file."""
    key = Ed25519PrivateKey.generate()
    write_private_file(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), overwrite=overwrite)
    public = key.public_key()
    if public_path is not None:
        save_signing_public_key(public_path, public)
    return public


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    data = _read(path, "Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: is a {type(key).__name__}, expected an Ed25519 private key")
    return key


def load_signing_key_if_readable(path: str | Path | None) -> Ed25519PrivateKey | None:
    """The key when this process may read it (a technician as root can; the uplink user cannot)."""
    if not path:
        return None
    try:
        return load_signing_key(path)
    except (KeyFileError, OSError, ValueError):
        return None


def save_signing_public_key(path: str | Path, public: Ed25519PublicKey) -> Path:
    return write_public_file(path, public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def signing_public_from_bytes(data: bytes) -> Ed25519PublicKey:
    """Accepts a PEM public key or the 32 raw bytes."""
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError("not a PEM public key nor 32 raw Ed25519 bytes") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"is a {type(key).__name__}, expected an Ed25519 public key")
    return key


def load_signing_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        return signing_public_from_bytes(_read(path, "Ed25519 public key"))
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------------------
# HPKE keys (station)


@dataclass(frozen=True)
class HpkePublicKey:
    """The station's HPKE public key: KEM name plus the raw layout of docs/keys.md."""

    kem: str
    raw: bytes

    def __post_init__(self) -> None:
        if self.kem not in KEMS:
            raise KeyFileError(f"unknown HPKE KEM {self.kem!r} (use one of {', '.join(KEMS)})")
        if len(self.raw) != _PUBLIC_LEN[self.kem]:
            raise KeyFileError(f"{self.kem} public key must be {_PUBLIC_LEN[self.kem]} bytes, got {len(self.raw)}")

    def to_cryptography(self) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        """The object ``hpke.Suite.encrypt`` takes."""
        if self.kem == "X25519":
            return x25519.X25519PublicKey.from_public_bytes(self.raw)
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:_MLKEM_PUBLIC]),
            x25519.X25519PublicKey.from_public_bytes(self.raw[_MLKEM_PUBLIC:]))

    @property
    def fingerprint(self) -> str:
        return fingerprint_bytes(self.raw)


@dataclass(frozen=True)
class HpkePrivateKey:
    kem: str
    raw: bytes

    def __post_init__(self) -> None:
        if self.kem not in KEMS:
            raise KeyFileError(f"unknown HPKE KEM {self.kem!r} (use one of {', '.join(KEMS)})")
        if len(self.raw) != _PRIVATE_LEN[self.kem]:
            raise KeyFileError(f"{self.kem} private key has the wrong length")

    def __repr__(self) -> str:  # never show key bytes
        return f"HpkePrivateKey(kem={self.kem!r}, public={self.public_key().fingerprint})"

    @classmethod
    def generate(cls, kem: str = DEFAULT_KEM) -> HpkePrivateKey:
        x = x25519.X25519PrivateKey.generate().private_bytes_raw()
        if kem == "X25519":
            return cls(kem, x)
        if kem == "MLKEM768_X25519":
            return cls(kem, mlkem.MLKEM768PrivateKey.generate().private_bytes_raw() + x)
        raise KeyFileError(f"unknown HPKE KEM {kem!r} (use one of {', '.join(KEMS)})")

    def _parts(self) -> tuple[mlkem.MLKEM768PrivateKey | None, x25519.X25519PrivateKey]:
        if self.kem == "X25519":
            return None, x25519.X25519PrivateKey.from_private_bytes(self.raw)
        return (mlkem.MLKEM768PrivateKey.from_seed_bytes(self.raw[:_MLKEM_SEED]),
                x25519.X25519PrivateKey.from_private_bytes(self.raw[_MLKEM_SEED:]))

    def to_cryptography(self) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        """The object ``hpke.Suite.decrypt`` takes."""
        m, x = self._parts()
        return x if m is None else hpke.MLKEM768X25519PrivateKey(m, x)

    def public_key(self) -> HpkePublicKey:
        m, x = self._parts()
        xpub = x.public_key().public_bytes_raw()
        return HpkePublicKey(self.kem, xpub if m is None else m.public_key().public_bytes_raw() + xpub)


def _armour(label: str, raw: bytes) -> bytes:
    b64 = base64.b64encode(raw).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def _unarmour(data: bytes, path: str | Path, kind: str) -> tuple[str, bytes]:
    try:
        lines = data.decode("ascii").strip().splitlines()
        first, last = lines[0].strip(), lines[-1].strip()
        prefix, suffix = "-----BEGIN APPLIANCE HPKE ", f" {kind} KEY-----"
        if not (first.startswith(prefix) and first.endswith(suffix)):
            raise ValueError
        kem = first[len(prefix):-len(suffix)]
        if last != f"-----END APPLIANCE HPKE {kem} {kind} KEY-----":
            raise ValueError
        raw = base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except (ValueError, IndexError, UnicodeDecodeError):
        raise KeyFileError(f"{path}: not an APPLIANCE HPKE {kind} KEY file") from None
    return kem, raw


def generate_hpke_key(private_path: str | Path, public_path: str | Path, *, kem: str = DEFAULT_KEM,
                      overwrite: bool = False) -> HpkePublicKey:
    """Creates the station's HPKE key pair; returns the public key (goes to every device)."""
    key = HpkePrivateKey.generate(kem)
    write_private_file(private_path, _armour(f"APPLIANCE HPKE {kem} PRIVATE KEY", key.raw),
                       overwrite=overwrite)
    public = key.public_key()
    save_hpke_public_key(public_path, public)
    return public


def save_hpke_public_key(path: str | Path, public: HpkePublicKey) -> Path:
    return write_public_file(path, _armour(f"APPLIANCE HPKE {public.kem} PUBLIC KEY", public.raw))


def hpke_public_from_bytes(data: bytes, source: str = "<bytes>") -> HpkePublicKey:
    kem, raw = _unarmour(data, source, "PUBLIC")
    try:
        return HpkePublicKey(kem, raw)
    except KeyFileError as exc:
        raise KeyFileError(f"{source}: {exc}") from None


def load_hpke_public_key(path: str | Path) -> HpkePublicKey:
    return hpke_public_from_bytes(_read(path, "HPKE public key"), str(path))


def load_hpke_private_key(path: str | Path) -> HpkePrivateKey:
    kem, raw = _unarmour(_read(path, "HPKE private key"), path, "PRIVATE")
    try:
        return HpkePrivateKey(kem, raw)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------


def public_key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey | HpkePrivateKey | HpkePublicKey | bytes) -> str:
    """Short human fingerprint of an Ed25519 public/private key, HPKE key, or raw bytes."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return fingerprint_bytes(raw_public(key))
    if isinstance(key, HpkePrivateKey):
        key = key.public_key()
    if isinstance(key, HpkePublicKey):
        return key.fingerprint
    if isinstance(key, (bytes, bytearray)):
        return fingerprint_bytes(bytes(key))
    raise TypeError(f"cannot fingerprint a {type(key).__name__}")
