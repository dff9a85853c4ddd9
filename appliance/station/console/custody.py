"""Custody of the evidence key in the console: wrapped under each supervisor's password.

The full rendition of a clip (envelope version 2, docs/envelope.md) is encrypted to the station's
*evidence* HPKE key, whose private half lives offline (``appliance station evidence-key init``
writes it to one file only). The console must be able to open one clip's full rendition when a
supervisor approves a request (four eyes), and must never hold the key at rest in usable form.
So a key custodian wraps it once per supervisor, with that supervisor typing their password:

    kek     = argon2id(password, salt, t, m, p) -> 32 bytes     (own random salt per wrap)
    wrapped = AES-256-GCM(kek, nonce, armoured key, aad)
    aad     = "appliance-console-evidence-wrap-v1\\0" user "\\0" fingerprint "\\0" kem

Only the wrap (salt, parameters, nonce, ciphertext; JSON) is stored, in the console database
(table ``evidence_wraps``). The AAD binds it to the user and to the key's fingerprint: a wrap
copied to another user's row, or relabelled as another key, does not open. Unwrapping needs the
supervisor's password, which the console never stores (its ``users`` table holds an argon2id
*verification* hash with a different salt: it does not give the wrapping key).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.common.errors import InputError
from appliance.contracts.keys import HpkePrivateKey, load_hpke_private_key

WRAP_FORMAT = "appliance-console-evidence-wrap"
WRAP_VERSION = 1
AAD_CONTEXT = b"appliance-console-evidence-wrap-v1\x00"
#: RFC 9106 "low memory" (the same cost as a login): 64 MiB, 3 passes, 4 lanes.
KDF_PARAMS = {"t": 3, "m_kib": 65536, "p": 4}
#: Each derivation takes 64 MiB for tens of ms: approvals queue behind one another.
_KDF_SLOTS = threading.BoundedSemaphore(2)


class WrongPassword(InputError):
    """The password does not open this wrap (or the wrap was altered)."""


@dataclass(frozen=True)
class EvidenceWrap:
    """One supervisor's wrap of the evidence private key, as stored (no secret in it)."""

    username: str
    fingerprint: str       # of the evidence public key (docs/keys.md)
    kem: str
    blob: str              # JSON: format, version, kdf parameters, salt, nonce, ciphertext (base64)
    created_unix_ms: int = 0
    created_by: str = ""

    def to_row(self) -> dict[str, Any]:
        return {"username": self.username, "fingerprint": self.fingerprint, "kem": self.kem,
                "created_unix_ms": self.created_unix_ms, "created_by": self.created_by}


def _aad(username: str, fingerprint: str, kem: str) -> bytes:
    return AAD_CONTEXT + "\x00".join((username, fingerprint, kem)).encode()


def _kek(password: str, salt: bytes, params: dict[str, int]) -> bytes:
    with _KDF_SLOTS:
        return hash_secret_raw(password.encode(), salt, time_cost=params["t"], memory_cost=params["m_kib"],
                               parallelism=params["p"], hash_len=32, type=Type.ID)


def wrap_key(key: HpkePrivateKey, username: str, password: str, *, created_unix_ms: int = 0,
             created_by: str = "") -> EvidenceWrap:
    """Wraps ``key`` for ``username`` under a key derived from ``password`` (fresh salt and nonce)."""
    fingerprint = key.public_key().fingerprint
    salt, nonce = os.urandom(16), os.urandom(12)
    ciphertext = AESGCM(_kek(password, salt, KDF_PARAMS)).encrypt(nonce, key.raw, _aad(username, fingerprint, key.kem))
    blob = {"format": WRAP_FORMAT, "version": WRAP_VERSION, "kdf": {"name": "argon2id", **KDF_PARAMS},
            "salt": _b64(salt), "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    return EvidenceWrap(username, fingerprint, key.kem, json.dumps(blob, sort_keys=True), created_unix_ms,
                        created_by)


def unwrap_key(wrap: EvidenceWrap, password: str) -> HpkePrivateKey:
    """The evidence private key, in memory; :class:`WrongPassword` if the password (or anything
    in the wrap, its user or its fingerprint) is not the one it was made with."""
    try:
        blob = json.loads(wrap.blob)
        if blob.get("format") != WRAP_FORMAT or blob.get("version") != WRAP_VERSION:
            raise ValueError("unknown wrap format")
        params = {k: int(blob["kdf"][k]) for k in KDF_PARAMS}
        if blob["kdf"].get("name") != "argon2id" or not (1 <= params["t"] <= 10 and 8192 <= params["m_kib"] <= 1 << 20
                                                        and 1 <= params["p"] <= 16):
            raise ValueError("unsupported key derivation")
        salt, nonce, ciphertext = (base64.b64decode(blob[k], validate=True) for k in ("salt", "nonce", "ciphertext"))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the evidence-key wrap of {wrap.username} is damaged ({exc}): wrap the key again "
                         f"('appliance station console evidence-key wrap --user {wrap.username} ...')") from None
    try:
        raw = AESGCM(_kek(password, salt, params)).decrypt(nonce, ciphertext,
                                                           _aad(wrap.username, wrap.fingerprint, wrap.kem))
    except InvalidTag:
        raise WrongPassword("the password does not open this supervisor's evidence-key wrap") from None
    key = HpkePrivateKey(wrap.kem, raw)
    if key.public_key().fingerprint != wrap.fingerprint:   # cannot happen with an authentic wrap
        raise InputError("the unwrapped evidence key does not match its recorded fingerprint")
    return key


def load_evidence_private_key(path: str | Path, expected_fingerprint: str | None = None) -> HpkePrivateKey:
    """The custodian's offline key file; checked against the station's ``keys/evidence.pub``."""
    key = load_hpke_private_key(path)
    if expected_fingerprint is not None and key.public_key().fingerprint != expected_fingerprint:
        raise InputError(f"{path}: this key ({key.public_key().fingerprint}) is not the station's evidence key "
                         f"({expected_fingerprint}, keys/evidence.pub): boxes seal full renditions to that one "
                         "(fix: give the file 'appliance station evidence-key init' wrote)")
    return key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
