"""The append-only, hash-chained, checkpointed audit log (docs/audit-log.md).

    log = AuditLog(path, signer=device_key, origin="appliance", device="mannheim-03")
    log.append("trigger.permitted", pattern="strike", clip_id=..., ciphertext_sha256=...)
    log.checkpoints_since(last_acked_n)   # for the uplink heartbeat

Every append is one ``write(2)`` of one canonical line on an ``O_APPEND`` descriptor plus
``fsync(2)``, under a thread lock and an ``flock`` so several threads and several processes
(pixel process, uplink process) can share one file. A process without the signing key
appends records but never checkpoints; the key holder checkpoints over everyone's records.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.audit.canonical import (
    FORMAT_VERSION,
    GENESIS_PREV,
    b64,
    canonical,
    key_id,
    raw_public,
    record_hash,
    utc_iso,
)
from appliance.audit.checkpoints import Checkpoint, parse_checkpoint, sign_checkpoint
from appliance.durable import fsync_dir
from appliance.errors import ApplianceError

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
#: Station actions on a clip's content: refused without an operator and a reason.
ACCESS_KINDS = frozenset({"station.decrypt", "station.view", "station.export"})
MIN_REASON_CHARS = 1
ORIGINS = ("appliance", "station")
_READ_CHUNK = 1 << 20


class AuditError(ApplianceError):
    """The audit log cannot be written, or a record was refused."""

    exit_code = 4


class AccessRefused(AuditError):
    """An access to a clip without an operator or a reason."""

    exit_code = 2


def check_access(operator: Any, reason: Any) -> None:
    """Raises :class:`AccessRefused` unless both an operator and a real reason are given.
    The station calls this (or appends the access record, which calls it) *before* it
    decrypts, views or exports anything."""
    if not isinstance(operator, str) or not operator.strip():
        raise AccessRefused("access refused: no operator identity given (fix: --operator NAME)")
    if not isinstance(reason, str) or len(reason.strip()) < MIN_REASON_CHARS:
        raise AccessRefused("access refused: a reason is mandatory for every decryption, view or export "
                            "(fix: --reason 'case number and why')")


class AuditLog:
    """One audit log file. Thread-safe; safe for several processes on the same file."""

    def __init__(self, path: str | Path, *, signer: Ed25519PrivateKey | None = None,
                 origin: str = "appliance", device: str = "", checkpoint_every: int = 100,
                 checkpoint_interval_s: float = 300.0, clock: Callable[[], float] = time.time):
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        self.path = Path(path)
        self._signer = signer
        self._origin = origin
        self._device = device
        self._every = checkpoint_every
        self._interval_s = checkpoint_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._head = GENESIS_PREV
        self._size = 0                           # bytes of the file we have read/written
        self._log_id = ""
        self._checkpoints: list[Checkpoint] = []
        self._last_checkpoint_at = clock()       # time-based checkpoints count from opening
        self._pending_recovery: dict[str, Any] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror or exc}") from None
        with self._locked():
            if self._count == 0:
                fsync_dir(self.path.parent)     # the new file's name survives a power cut too
                self._write("audit.genesis", {
                    "log": secrets.token_hex(16), "origin": origin, "device": device,
                    "public_key": b64(raw_public(signer.public_key())) if signer else None,
                    "key_id": key_id(signer) if signer else None,
                })

    @classmethod
    def from_config(cls, cfg: Any, *, signer: Ed25519PrivateKey | None = None,
                    origin: str = "appliance", clock: Callable[[], float] = time.time) -> AuditLog:
        """Opens ``cfg.audit_log`` with the cadence from ``cfg.audit`` (an AppConfig)."""
        return cls(cfg.audit_log, signer=signer, origin=origin, device=cfg.device.id,
                   checkpoint_every=cfg.audit.checkpoint_every,
                   checkpoint_interval_s=cfg.audit.checkpoint_interval_s, clock=clock)

    # -- public API ------------------------------------------------------------------

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Appends one record, durably (fsync) before returning it; may add a checkpoint."""
        if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
            raise AuditError(f"audit record kind {kind!r} must be dotted lowercase, e.g. 'spool.insert'")
        if kind.startswith("audit."):
            raise AuditError(f"audit record kind {kind!r} is reserved for the log itself")
        if kind in ACCESS_KINDS:
            check_access(fields.get("operator"), fields.get("reason"))
        try:
            canonical(fields)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit record {kind}: fields are not plain JSON: {exc}") from None
        with self._locked():
            record = self._write(kind, fields)
            if self._checkpoint_due():
                self._write_checkpoint()
            return record

    def checkpoint(self) -> dict[str, Any] | None:
        """Signs a checkpoint over every record so far; None if nothing new or no key."""
        with self._locked():
            if self._signer is None or self._uncovered() == 0:
                return None
            return self._write_checkpoint().to_json()

    def maybe_checkpoint(self) -> dict[str, Any] | None:
        """A checkpoint if one is due by count or age (call it from a periodic timer so a
        quiet log's tail is anchored too)."""
        with self._locked():
            if not self._checkpoint_due():
                return None
            return self._write_checkpoint().to_json()

    def checkpoints_since(self, after_n: int = -1, limit: int | None = None) -> list[dict[str, Any]]:
        """Checkpoints with index ``n > after_n``, oldest first, as JSON objects (what the
        uplink heartbeat carries). Picks up checkpoints other processes wrote."""
        with self._locked():
            found = [c.to_json() for c in self._checkpoints if c.n > after_n]
        return found if limit is None else found[:limit]

    def latest_checkpoint(self) -> dict[str, Any] | None:
        with self._locked():
            return self._checkpoints[-1].to_json() if self._checkpoints else None

    def rotate_key(self, new_key: Ed25519PrivateKey, purpose: str = "audit") -> None:
        """Announces ``new_key`` under a checkpoint signed by the current key, then signs
        with the new one (docs/audit-log.md §2)."""
        if self._signer is None:
            raise AuditError("cannot rotate: this log was opened without a signing key")
        with self._locked():
            self._write("audit.key_rotation", {
                "purpose": purpose, "old_key_id": key_id(self._signer), "new_key_id": key_id(new_key),
                "public_key": b64(raw_public(new_key.public_key())),
            })
            self._write_checkpoint()
            self._signer = new_key

    @property
    def log_id(self) -> str:
        return self._log_id

    @property
    def count(self) -> int:
        with self._locked():
            return self._count

    @property
    def head(self) -> str:
        with self._locked():
            return self._head

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.checkpoint()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _locked(self) -> _Held:
        return _Held(self)

    def _uncovered(self) -> int:
        covered = self._checkpoints[-1].count + 1 if self._checkpoints else 0
        return self._count - covered

    def _checkpoint_due(self) -> bool:
        if self._signer is None:
            return False
        uncovered = self._uncovered()
        if uncovered <= 0:
            return False
        return uncovered >= self._every or self._clock() - self._last_checkpoint_at >= self._interval_s

    def _write_checkpoint(self) -> Checkpoint:
        assert self._signer is not None
        cp = sign_checkpoint(self._signer, log=self._log_id,
                             n=self._checkpoints[-1].n + 1 if self._checkpoints else 0,
                             count=self._count, head=self._head, time=utc_iso(self._clock()))
        self._write("audit.checkpoint", cp.to_json())
        return cp

    def _write(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if self._fd < 0:
            raise AuditError(f"audit log {self.path} is closed")
        record = {"v": FORMAT_VERSION, "seq": self._count, "time": utc_iso(self._clock()),
                  "kind": kind, "fields": fields, "prev": self._head}
        record["hash"] = record_hash(record)
        line = canonical(record) + b"\n"
        try:
            written = os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
        self._size += written
        if written != len(line):    # e.g. disk full: the torn line is cut off on the next append
            raise AuditError(f"audit log {self.path}: short write ({written} of {len(line)} bytes)")
        self._note(record)
        return record

    def _note(self, record: dict[str, Any]) -> None:
        self._count = record["seq"] + 1
        self._head = record["hash"]
        if record["kind"] == "audit.genesis":
            self._log_id = record["fields"]["log"]
        elif record["kind"] == "audit.checkpoint":
            self._checkpoints.append(parse_checkpoint(record["fields"]))
            self._last_checkpoint_at = self._clock()

    def _catch_up(self) -> None:
        """Reads what other processes appended since our last look (all of it at open),
        in bounded chunks so a long log does not need its size in RAM."""
        size = os.fstat(self._fd).st_size
        if size < self._size:
            raise AuditError(f"audit log {self.path} shrank from {self._size} to {size} bytes "
                             "while open: run 'appliance audit verify'")
        carry = b""
        while self._size + len(carry) < size:
            start = self._size + len(carry)
            chunk = carry + os.pread(self._fd, min(_READ_CHUNK, size - start), start)
            end = chunk.rfind(b"\n") + 1
            for line in chunk[:end].splitlines():
                record = _parse_trusted_line(line, self.path, self._size)
                if record["seq"] != self._count or record["prev"] != self._head:
                    raise AuditError(f"audit log {self.path}: record at byte {self._size} does not "
                                     "continue the chain; refusing to append (run 'appliance audit verify')")
                self._note(record)
                self._size += len(line) + 1
            carry = chunk[end:]
        if carry:
            self._cut_torn_tail(carry, size)

    def _cut_torn_tail(self, torn: bytes, size: int) -> None:
        keep = size - len(torn)
        os.ftruncate(self._fd, keep)
        os.fsync(self._fd)
        self._pending_recovery = {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest(),
                                  "at_byte": keep}


class _Held:
    """Thread lock + exclusive flock; catches up with other writers on entry."""

    def __init__(self, log: AuditLog):
        self.log = log

    def __enter__(self) -> None:
        self.log._lock.acquire()
        try:
            if self.log._fd >= 0:
                fcntl.flock(self.log._fd, fcntl.LOCK_EX)
                self.log._pending_recovery = None
                self.log._catch_up()
                if self.log._pending_recovery is not None and self.log._count > 0:
                    self.log._write("audit.recovered", self.log._pending_recovery)
        except BaseException:
            self._release()
            raise

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        try:
            if self.log._fd >= 0:
                fcntl.flock(self.log._fd, fcntl.LOCK_UN)
        finally:
            self.log._lock.release()


def _parse_trusted_line(line: bytes, path: Path, offset: int) -> dict[str, Any]:
    """A writer's check of an existing line: valid JSON record whose hash matches."""
    try:
        record = json.loads(line)
        ok = (isinstance(record, dict) and isinstance(record.get("seq"), int)
              and isinstance(record.get("fields"), dict) and record.get("hash") == record_hash(record))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise AuditError(f"audit log {path}: unreadable or altered record at byte {offset}; "
                         "refusing to append (run 'appliance audit verify')")
    return record



def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes without newline); a final unterminated line too."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            yield number, line[:-1] if line.endswith(b"\n") else line


def read_checkpoints(path: str | Path, after_n: int = -1) -> list[dict[str, Any]]:
    """Checkpoints in a log file with ``n > after_n`` (for a process without an AuditLog
    open). Reads without locking: an unterminated last line is skipped."""
    found = []
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n") or b'"kind":"audit.checkpoint"' not in line:
                continue
            fields = json.loads(line)["fields"]
            if fields.get("n", -1) > after_n:
                found.append(fields)
    return found
