"""CurveZMQ key pairs (docs/keys.md): ``zmq.auth`` certificate files.

``NAME.key`` holds the Z85 public key, ``NAME.key_secret`` both keys (chmod 0600).
Keys are passed around as Z85 ``bytes`` (40 characters), as pyzmq's socket options take them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import zmq
import zmq.auth

from appliance.common.durable import atomic_write
from appliance.contracts.keys import KeyFileError, fingerprint_bytes


def generate_curve_keypair(directory: str | Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Writes ``NAME.key`` and ``NAME.key_secret`` (0600); returns (public_file, secret_file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not overwrite and (public_file.exists() or secret_file.exists()):
        raise KeyFileError(f"{secret_file}: already exists; refusing to overwrite a key")
    # zmq.auth writes the certificate files (its format) into a private 0700 directory; they
    # are then put in place durably, the secret one 0600 (never world-readable on the way).
    with tempfile.TemporaryDirectory(dir=directory, prefix=".curve-") as tmp:
        pub, sec = zmq.auth.create_certificates(tmp, name)
        atomic_write(secret_file, Path(sec).read_bytes(), mode=0o600, exact_mode=True, replace=overwrite)
        atomic_write(public_file, Path(pub).read_bytes(), mode=0o666, replace=overwrite)
    return public_file, secret_file


def load_curve_public(path: str | Path) -> bytes:
    """The Z85 public key from a ``.key`` or ``.key_secret`` certificate file."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a CURVE certificate: {exc}") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path}: no CURVE public key in it")
    return public


def load_curve_keypair(secret_path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 from a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{secret_path}: not a CURVE certificate: {exc}") from None
    if not secret:
        raise KeyFileError(f"{secret_path}: holds no CURVE secret key (use the .key_secret file)")
    return public, secret


def curve_fingerprint(public_z85: bytes | str) -> str:
    """Fingerprint of the 32-byte key (not of its Z85 text)."""
    if isinstance(public_z85, str):
        public_z85 = public_z85.encode("ascii")
    return fingerprint_bytes(zmq.utils.z85.decode(public_z85))
