"""Signed health statements: the pixel process vouches for its own health, the uplink carries it.

The pixel process (which holds the device signing key) writes ``<state_dir>/health.json``::

    {"statement": "<canonical JSON text>", "signature": "<base64 Ed25519>"}

    statement = {"type": "health", "device_id": str, "unix_ms": int, "health": {...}}
    signature = Ed25519(device signing key, "appliance-health-v1\\0" ‖ statement)

The uplink process cannot read the signing key (its sandbox hides the pixel directory) and so
cannot forge this; it forwards the statement verbatim in its heartbeats, and the station
verifies it with the device's enrolled key (docs/wire-protocol.md, "Heartbeats").
A plain JSON object in health.json (no statement) is forwarded as unsigned health.

The optional ``tamper`` member of ``health`` (camera tamper state, docs/wire-protocol.md) is
read by :meth:`CameraTamper.from_health`; the station trusts it only from a signed statement.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.common.durable import atomic_write
from appliance.contracts.canonical import canonical_json

HEALTH_CONTEXT = b"appliance-health-v1\x00"
MAX_STATEMENT_BYTES = 64 * 1024


class HealthStatementError(ValueError):
    pass


def sign_health(health: dict[str, Any], *, device_id: str, signing_key: Ed25519PrivateKey,
                unix_ms: int | None = None) -> dict[str, str]:
    statement = canonical_json({"type": "health", "device_id": device_id,
                                "unix_ms": int(time.time() * 1000) if unix_ms is None else unix_ms,
                                "health": health}).decode("ascii")
    signature = signing_key.sign(HEALTH_CONTEXT + statement.encode("ascii"))
    return {"statement": statement, "signature": base64.b64encode(signature).decode("ascii")}


def write_signed_health(path: str | Path, health: dict[str, Any], *, device_id: str,
                        signing_key: Ed25519PrivateKey) -> None:
    """Atomically replaces ``path`` with a signed statement of ``health`` (pixel process)."""
    path = Path(path)
    signed = json.dumps(sign_health(health, device_id=device_id, signing_key=signing_key))
    atomic_write(path, signed.encode("utf-8"), mode=0o666)


def verify_health(signed: Any, device_id: str, public: Ed25519PublicKey) -> dict[str, Any]:
    """Returns the statement ({type, device_id, unix_ms, health}) or raises HealthStatementError."""
    if not isinstance(signed, dict) or set(signed) != {"statement", "signature"}:
        raise HealthStatementError("not a signed health statement")
    statement, signature = signed["statement"], signed["signature"]
    if not isinstance(statement, str) or not isinstance(signature, str) or len(statement) > MAX_STATEMENT_BYTES:
        raise HealthStatementError("malformed signed health statement")
    try:
        raw = statement.encode("ascii")
        public.verify(base64.b64decode(signature, validate=True), HEALTH_CONTEXT + raw)
        doc = json.loads(raw)
    except (UnicodeEncodeError, ValueError, InvalidSignature):
        raise HealthStatementError("health statement signature does not verify") from None
    if not isinstance(doc, dict) or doc.get("type") != "health" or doc.get("device_id") != device_id \
            or not isinstance(doc.get("health"), dict) or not isinstance(doc.get("unix_ms"), int):
        raise HealthStatementError("health statement names another device or is malformed")
    return doc


def read_health_file(path: str | Path) -> tuple[dict[str, str] | None, dict[str, Any]]:
    """(signed statement or None, plain health or problem note) from the pixel process's file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, {"pixel_health": "missing"}
    except (OSError, ValueError) as exc:
        return None, {"pixel_health": f"unreadable: {exc}"[:200]}
    if isinstance(data, dict) and set(data) == {"statement", "signature"}:
        return data, {}
    if isinstance(data, dict):
        return None, data
    return None, {"pixel_health": "not an object"}


#: The tamper kinds a box reports (appliance/box/tamper); unknown ones are kept, as text.
TAMPER_KINDS = ("blinded", "covered", "defocused", "moved", "frozen")


@dataclass(frozen=True)
class CameraTamper:
    """The ``tamper`` member of a health statement: is the camera covered, blinded, defocused,
    moved or frozen right now (a box without tamper detection sends none)."""

    tampered: bool
    kinds: tuple[str, ...]          # the raised kinds, sorted
    since: dict[str, float]         # kind -> Unix seconds it was raised
    mode: str                       # "day" | "night" | "unknown"

    @staticmethod
    def from_health(health: Any) -> CameraTamper | None:
        """None when the statement carries no (or no well-formed) tamper state."""
        doc = health.get("tamper") if isinstance(health, dict) else None
        if not isinstance(doc, dict) or doc.get("state") not in ("ok", "tampered"):
            return None
        kinds = doc.get("kinds", [])
        if not isinstance(kinds, list) or not all(isinstance(k, str) and len(k) <= 32 for k in kinds):
            return None
        since = doc.get("since", {})
        since = {str(k): float(v) for k, v in since.items() if isinstance(v, (int, float))} \
            if isinstance(since, dict) else {}
        mode = doc.get("mode")
        return CameraTamper(doc["state"] == "tampered" and bool(kinds), tuple(sorted(kinds)), since,
                            mode[:16] if isinstance(mode, str) else "unknown")

    def describe(self) -> str:
        if not self.tampered:
            return "camera ok"
        return "TAMPER " + ",".join(self.kinds)

    def to_json(self) -> dict[str, Any]:
        return {"tampered": self.tampered, "kinds": list(self.kinds),
                "since": {k: round(v, 3) for k, v in sorted(self.since.items())}, "mode": self.mode}


def signed_pixel_tamper(recorded: Any) -> CameraTamper | None:
    """The camera tamper state of a heartbeat's recorded health, only from a verified statement
    (the uplink could otherwise forge or hide it)."""
    if not isinstance(recorded, dict) or recorded.get("pixel_signed") is not True:
        return None
    return CameraTamper.from_health(recorded.get("pixel"))
