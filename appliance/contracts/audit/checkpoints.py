"""Signed checkpoints: (log id, index, record count, head hash, time), Ed25519.

A checkpoint travels as a plain JSON object (docs/audit-log.md §2) so the uplink and the
station can carry and store it without understanding it; :func:`parse_checkpoint` is the
one place that checks its shape, :func:`check_signature` its signature.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.common.errors import InputError
from appliance.contracts.audit.canonical import (
    CHECKPOINT_DOMAIN,
    FORMAT_VERSION,
    b64,
    canonical,
    key_id,
    unb64,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
CHECKPOINT_KEYS = frozenset({"v", "type", "log", "n", "count", "head", "time", "key_id", "sig"})


class MalformedCheckpoint(ValueError):
    """A checkpoint object that does not have the v1 shape."""


@dataclass(frozen=True)
class Checkpoint:
    log: str
    n: int
    count: int
    head: str
    time: str
    key_id: str
    sig: str

    def to_json(self) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "type": "audit-checkpoint", "log": self.log, "n": self.n,
                "count": self.count, "head": self.head, "time": self.time,
                "key_id": self.key_id, "sig": self.sig}

    def signed_bytes(self) -> bytes:
        body = self.to_json()
        del body["sig"]
        return CHECKPOINT_DOMAIN + canonical(body)

    def describe(self) -> str:
        return f"checkpoint #{self.n} (count {self.count}, signed {self.time} by key {self.key_id})"


def sign_checkpoint(key: Ed25519PrivateKey, *, log: str, n: int, count: int, head: str,
                    time: str) -> Checkpoint:
    unsigned = Checkpoint(log, n, count, head, time, key_id(key), "")
    return Checkpoint(log, n, count, head, time, unsigned.key_id, b64(key.sign(unsigned.signed_bytes())))


def parse_checkpoint(obj: Any) -> Checkpoint:
    """Checks the shape of a checkpoint object; raises ValueError saying what is wrong."""
    if not isinstance(obj, Mapping):
        raise MalformedCheckpoint(f"a checkpoint must be a JSON object, got {type(obj).__name__}")
    if set(obj) != CHECKPOINT_KEYS:
        raise MalformedCheckpoint(f"checkpoint members must be {sorted(CHECKPOINT_KEYS)}, got {sorted(obj)}")
    if obj["v"] != FORMAT_VERSION or obj["type"] != "audit-checkpoint":
        raise MalformedCheckpoint(f"not a v{FORMAT_VERSION} audit checkpoint (v={obj['v']!r}, type={obj['type']!r})")
    for name in ("n", "count"):
        if not isinstance(obj[name], int) or isinstance(obj[name], bool) or obj[name] < 0:
            raise MalformedCheckpoint(f"checkpoint {name} must be a non-negative integer, got {obj[name]!r}")
    checks = (("log", _HEX32), ("head", _HEX64), ("key_id", _HEX16))
    for name, pattern in checks:
        if not isinstance(obj[name], str) or not pattern.match(obj[name]):
            raise MalformedCheckpoint(f"checkpoint {name} is malformed: {obj[name]!r}")
    if not isinstance(obj["time"], str) or not isinstance(obj["sig"], str):
        raise MalformedCheckpoint("checkpoint time and sig must be strings")
    return Checkpoint(obj["log"], obj["n"], obj["count"], obj["head"], obj["time"], obj["key_id"], obj["sig"])


def check_signature(cp: Checkpoint, trusted: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None when ``cp`` is signed by one of ``trusted`` (key id → key), else why not."""
    key = trusted.get(cp.key_id)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        return f"signed by unknown key {cp.key_id} (trusted: {known}): re-signed with another key"
    try:
        key.verify(unb64(cp.sig), cp.signed_bytes())
    except (InvalidSignature, ValueError):
        return f"bad signature by key {cp.key_id}: the checkpoint was altered or re-signed"
    return None


def load_checkpoints_file(path: str | Path) -> list[Any]:
    """Reads station-held checkpoints: a JSON list, a JSON object with a ``checkpoints``
    list, or JSON Lines; items may be wrapped as the station stores them
    (``{"received_unix_ms": ..., "checkpoint": {...}}``). Items are returned unparsed so
    verify can name a malformed one."""
    return [_unwrap(item) for item in _load_items(Path(path))]


def _unwrap(item: Any) -> Any:
    if isinstance(item, Mapping) and "checkpoint" in item and "sig" not in item:
        return item["checkpoint"]
    return item


def _load_items(path: Path) -> list[Any]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read checkpoints {path}: {getattr(exc, 'strerror', None) or exc}") from None
    stripped = text.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
        if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
            return list(data["checkpoints"])
        if isinstance(data, list):
            return data
        return [data]
    except json.JSONDecodeError:
        pass
    items = []
    for number, line in enumerate(stripped.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not JSON (fix: export the station's checkpoints "
                             "as a JSON list or JSON Lines)") from None
    return items


def sequence_problems(checkpoints: Iterable[Checkpoint]) -> list[str]:
    """Rollback/fork checks over a station's checkpoints of one log, in received order:
    ``n`` must not repeat with other content, and ``count`` must never go down as ``n`` rises."""
    problems: list[str] = []
    by_n: dict[int, Checkpoint] = {}
    for cp in checkpoints:
        seen = by_n.get(cp.n)
        if seen is not None and seen != cp:
            problems.append(f"checkpoint rollback: station holds two different checkpoints #{cp.n} "
                            f"(count {seen.count} head {seen.head[:12]} and count {cp.count} "
                            f"head {cp.head[:12]}): the log was reset and re-signed")
        by_n.setdefault(cp.n, cp)
    ordered = sorted(by_n.values(), key=lambda c: c.n)
    for before, after in itertools.pairwise(ordered):
        if after.count < before.count:
            problems.append(f"checkpoint rollback: {after.describe()} covers fewer records than "
                            f"{before.describe()}")
        elif after.count == before.count and after.head != before.head:
            problems.append(f"checkpoint rollback: {after.describe()} and {before.describe()} "
                            "cover the same count with different heads")
    return problems
