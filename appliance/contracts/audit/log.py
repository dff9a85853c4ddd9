"""The append-only, hash-chained, checkpointed audit log (docs/audit-log.md).

    log = AuditLog(path, signer=device_key, origin="appliance", device="mannheim-03")
    log.append("trigger.permitted", pattern="strike", clip_id=..., ciphertext_sha256=...)
    log.checkpoints_since(last_acked_n)   # for the uplink heartbeat

Every append is one ``write(2)`` of one canonical line on an ``O_APPEND`` descriptor plus
``fsync(2)``, under a thread lock and an ``flock`` so several threads and several processes
(pixel process, uplink process) can share one file. A process without the signing key
appends records but never checkpoints; the key holder checkpoints over everyone's records.

When the active file reaches ``segment_max_bytes`` the key holder seals it (docs/audit-log.md
§9): ``audit.segment_end`` + a checkpoint, rename to ``<name>.<first>-<last>``, fsync of the
directory, and a new active file whose first record, ``audit.segment_start``, continues the
same chain. Every process checks after taking the ``flock`` that its descriptor is still the
file at ``path`` and follows a rename; whoever finds an interrupted rotation finishes it.
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

from appliance.common.durable import fsync_dir
from appliance.common.errors import ApplianceError
from appliance.contracts.audit.canonical import (
    FORMAT_VERSION,
    GENESIS_PREV,
    b64,
    canonical,
    key_id,
    raw_public,
    record_hash,
    utc_iso,
)
from appliance.contracts.audit.checkpoints import Checkpoint, parse_checkpoint, sign_checkpoint
from appliance.contracts.audit.segments import list_segments, log_files, parse_segment_name, segment_path

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
#: Station actions on a clip's content: refused without an operator and a reason.
ACCESS_KINDS = frozenset({"station.decrypt", "station.view", "station.export"})
MIN_REASON_CHARS = 1
ORIGINS = ("appliance", "station")
_READ_CHUNK = 1 << 20
#: Default size at which the active file is sealed into a segment (docs/audit-log.md §9).
DEFAULT_SEGMENT_MAX_BYTES = 16 * 1024 * 1024


class AuditError(ApplianceError):
    """The audit log cannot be written, or a record was refused."""

    exit_code = 4


class NoGenesisYet(AuditError):
    """The log does not exist yet and this writer cannot sign: only a key holder creates it."""


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
                 checkpoint_interval_s: float = 300.0, clock: Callable[[], float] = time.time,
                 segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES, create_unsigned: bool = False):
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if segment_max_bytes < 0:
            raise ValueError("segment_max_bytes must be >= 0 (0 = never rotate)")
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
        self._max_bytes = segment_max_bytes
        self._file_first: int | None = None     # seq of the first record in the current file
        self._closed = False                     # the current file holds audit.segment_end
        # A genesis without a key makes every later checkpoint "signed by unknown key" (a false
        # TAMPERED): only the key holder may create the log (docs/audit-log.md §2).
        # The log exists once it has an active file *or* a sealed segment: between a key
        # holder's rename of the full file and its creation of the next one, only segments do.
        refuse_genesis = signer is None and not create_unsigned
        if refuse_genesis and not self.path.exists() and not list_segments(self.path):
            raise self._no_genesis()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open_active()
        with self._locked():
            if self._count == 0 and refuse_genesis:   # the key holder created it a moment ago
                fd, self._fd = self._fd, -1
                os.close(fd)
                raise self._no_genesis()
            if self._count == 0:
                fsync_dir(self.path.parent)     # the new file's name survives a power cut too
                self._write("audit.genesis", {
                    "log": secrets.token_hex(16), "origin": origin, "device": device,
                    "public_key": b64(raw_public(signer.public_key())) if signer else None,
                    "key_id": key_id(signer) if signer else None,
                })

    def _no_genesis(self) -> NoGenesisYet:
        return NoGenesisYet(f"{self.path}: the audit log does not exist yet and this process holds no "
                            "signing key; only the key holder creates it (on the box: the pixel process, "
                            "'appliance run')")

    @classmethod
    def from_config(cls, cfg: Any, *, signer: Ed25519PrivateKey | None = None,
                    origin: str = "appliance", clock: Callable[[], float] = time.time) -> AuditLog:
        """Opens ``cfg.audit_log`` with the cadence from ``cfg.audit`` (an AppConfig)."""
        return cls(cfg.audit_log, signer=signer, origin=origin, device=cfg.device.id,
                   checkpoint_every=cfg.audit.checkpoint_every,
                   checkpoint_interval_s=cfg.audit.checkpoint_interval_s, clock=clock,
                   segment_max_bytes=cfg.audit.segment_max_bytes)

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
            self._maybe_rotate()
            return record

    def checkpoint(self) -> dict[str, Any] | None:
        """Signs a checkpoint over every record so far; None if nothing new or no key."""
        with self._locked():
            if self._signer is None or self._uncovered() == 0:
                return None
            cp = self._write_checkpoint().to_json()
            self._maybe_rotate()
            return cp

    def maybe_checkpoint(self) -> dict[str, Any] | None:
        """A checkpoint if one is due by count or age (call it from a periodic timer so a
        quiet log's tail is anchored too)."""
        with self._locked():
            if not self._checkpoint_due():
                self._maybe_rotate()      # a keyless writer may have filled the file
                return None
            cp = self._write_checkpoint().to_json()
            self._maybe_rotate()
            return cp

    def checkpoints_since(self, after_n: int = -1, limit: int | None = None) -> list[dict[str, Any]]:
        """Checkpoints with index ``n > after_n``, oldest first, as JSON objects (what the
        uplink heartbeat carries). Picks up checkpoints other processes wrote."""
        with self._locked():
            if self._checkpoints and self._checkpoints[0].n <= after_n + 1:
                found = [c.to_json() for c in self._checkpoints if c.n > after_n]
            else:   # older than this segment's: read the sealed segments (under our lock)
                found = read_checkpoints(self.path, after_n)
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
        if written != len(line):
            # E.g. disk full. The partial line is not counted, so the next append (by this process
            # or another) finds it past the known end, cuts it off and records audit.recovered.
            raise AuditError(f"audit log {self.path}: short write ({written} of {len(line)} bytes)")
        self._size += written
        self._note(record)
        return record

    def _note(self, record: dict[str, Any]) -> None:
        self._count = record["seq"] + 1
        self._head = record["hash"]
        if self._file_first is None:
            self._file_first = record["seq"]
        if record["kind"] in ("audit.genesis", "audit.segment_start"):
            self._log_id = record["fields"]["log"]
        elif record["kind"] == "audit.segment_end":
            self._closed = True
        elif record["kind"] == "audit.checkpoint":
            self._checkpoints.append(parse_checkpoint(record["fields"]))
            self._last_checkpoint_at = self._clock()

    # -- segments (docs/audit-log.md §9) ---------------------------------------------

    def _open_active(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror or exc}") from None

    def _is_current(self) -> bool:
        """Whether our descriptor is still the file named ``path`` (not renamed away)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        fst = os.fstat(self._fd)
        return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)

    def _switch_to_active(self, *, keep_old_locked: bool = False) -> None:
        """Opens (creating if need be) the file now named ``path`` and makes it ours, locked.
        The old descriptor is a sealed segment by now; its lock is held until the new one is
        taken when ``keep_old_locked`` (the rotating writer), released first otherwise."""
        old = self._fd
        if not keep_old_locked:
            fcntl.flock(old, fcntl.LOCK_UN)
        new = self._open_active()
        try:
            fcntl.flock(new, fcntl.LOCK_EX)
        except BaseException:
            os.close(new)
            raise
        if keep_old_locked:
            fcntl.flock(old, fcntl.LOCK_UN)
        os.close(old)
        self._fd = new
        self._size = 0
        self._file_first = None
        self._closed = False

    def _acquire(self) -> None:
        """flock, catch up, follow renames, finish an interrupted rotation, start a new
        segment if the file is empty; leaves the lock held on the current active file."""
        self._pending_recovery = None
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if self._count == 0 and self._size == 0:
                self._preload()
            self._catch_up()
            if self._is_current():
                break
            # Another writer sealed this file while we waited: it is a segment now. We have
            # read all of it; continue in the file that now has the name.
            self._switch_to_active()
        if self._closed:        # crash (or a keyless writer) after audit.segment_end: finish
            self._finish_rotation()
        if self._size == 0 and self._count > 0:
            self._write_segment_start()

    def _preload(self) -> None:
        """A fresh writer whose active file continues a sealed segment (it starts with
        audit.segment_start, or is empty while segments exist) reads that segment first, so
        seq, head, log id and the checkpoint index carry on."""
        first = _first_line(self._fd)
        if first is None:
            segments = list_segments(self.path)
            if not segments:
                return
            sealed = segments[-1].path
        else:
            record = _parse_trusted_line(first, self.path, 0)
            if record.get("kind") != "audit.segment_start":
                return
            name = record["fields"].get("segment")
            if not isinstance(name, str) or parse_segment_name(self.path, name) is None:
                raise AuditError(f"audit log {self.path}: audit.segment_start names no valid segment "
                                 f"({name!r}); refusing to append (run 'appliance audit verify')")
            sealed = self.path.with_name(name)
        try:
            fd = os.open(sealed, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: the previous segment {sealed.name} cannot be read "
                             f"({exc.strerror or exc}); refusing to append (run 'appliance audit verify')") from None
        try:
            first_record = _first_line(fd)
            if first_record is None:
                raise AuditError(f"audit log segment {sealed} is empty; refusing to append "
                                 "(run 'appliance audit verify')")
            start = _parse_trusted_line(first_record, sealed, 0)
            self._count, self._head = start["seq"], start["prev"]    # trusted: the writer's own file
            self._read_records(fd, sealed)
        finally:
            os.close(fd)
        if not self._closed:
            raise AuditError(f"audit log segment {sealed} has no audit.segment_end record; refusing to "
                             "append (run 'appliance audit verify')")
        if not self._checkpoints:       # the segment was sealed by a keyless writer: look further back
            earlier = read_checkpoints(self.path, -1, files=[s.path for s in list_segments(self.path)
                                                             if s.path != sealed], newest_only=True)
            if earlier:
                self._checkpoints.append(parse_checkpoint(earlier[-1]))
        self._checkpoints = self._checkpoints[-1:]
        self._size, self._file_first, self._closed = 0, None, False

    def _read_records(self, fd: int, path: Path) -> None:
        """Notes every complete record of a sealed segment (chain-checked from the first)."""
        offset, carry = 0, b""
        size = os.fstat(fd).st_size
        while offset + len(carry) < size:
            start = offset + len(carry)
            chunk = carry + os.pread(fd, min(_READ_CHUNK, size - start), start)
            end = chunk.rfind(b"\n") + 1
            for line in chunk[:end].splitlines():
                record = _parse_trusted_line(line, path, offset)
                if record["seq"] != self._count or record["prev"] != self._head:
                    raise AuditError(f"audit log segment {path}: record at byte {offset} does not continue "
                                     "the chain; refusing to append (run 'appliance audit verify')")
                self._note(record)
                offset += len(line) + 1
            carry = chunk[end:]

    def _file_digest(self, size: int) -> str:
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            chunk = os.pread(self._fd, min(_READ_CHUNK, size - offset), offset)
            if not chunk:
                raise AuditError(f"audit log {self.path} ended at byte {offset} while sealing")
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def _maybe_rotate(self) -> None:
        """Seals the active file once it holds ``segment_max_bytes``. Only the key holder
        rotates (the sealed segment ends with a checkpoint over its closing record)."""
        if self._signer is None or self._max_bytes <= 0 or self._size < self._max_bytes:
            return
        assert self._file_first is not None
        self._write("audit.segment_end", {"first": self._file_first, "last": self._count - 1,
                                          "bytes": self._size, "sha256": self._file_digest(self._size)})
        self._finish_rotation()

    def _finish_rotation(self) -> None:
        """After audit.segment_end: checkpoint (if we hold the key), rename, fsync the
        directory, open the new active file and write its audit.segment_start."""
        if self._signer is not None and self._uncovered() > 0:
            self._write_checkpoint()
        assert self._file_first is not None
        sealed = segment_path(self.path, self._file_first, self._count - 1)
        if sealed.exists():
            raise AuditError(f"audit log {self.path}: cannot seal, {sealed.name} already exists; "
                             "refusing to append (run 'appliance audit verify')")
        try:
            os.rename(self.path, sealed)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditError(f"cannot seal audit log {self.path}: {exc.strerror or exc}") from None
        self._switch_to_active(keep_old_locked=True)
        self._checkpoints = self._checkpoints[-1:]       # older ones are read from disk on demand
        self._catch_up()            # a fresh process may have started the new file already
        if self._size == 0:
            self._write_segment_start()

    def _write_segment_start(self) -> None:
        previous = [s for s in list_segments(self.path) if s.last == self._count - 1]
        if not previous:
            raise AuditError(f"audit log {self.path}: no sealed segment ends at seq {self._count - 1}; "
                             "refusing to start a new segment (run 'appliance audit verify')")
        fsync_dir(self.path.parent)     # the new file's name survives a power cut too
        seg = previous[-1]
        self._write("audit.segment_start", {"log": self._log_id, "segment": seg.name,
                                            "first": seg.first, "last": seg.last})

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
                if self._closed and record.get("kind") != "audit.checkpoint":
                    raise AuditError(f"audit log {self.path}: record at byte {self._size} follows "
                                     "audit.segment_end; refusing to append (run 'appliance audit verify')")
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
                self.log._acquire()
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


def _first_line(fd: int) -> bytes | None:
    """The first complete line of a file (None if it has none yet)."""
    head = b""
    while b"\n" not in head:
        chunk = os.pread(fd, _READ_CHUNK, len(head))
        if not chunk:
            return None
        head += chunk
    return head[:head.index(b"\n")]


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes without newline); a final unterminated line too."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            yield number, line[:-1] if line.endswith(b"\n") else line


def read_checkpoints(path: str | Path, after_n: int = -1, *, files: list[Path] | None = None,
                     newest_only: bool = False) -> list[dict[str, Any]]:
    """Checkpoints of a log with ``n > after_n``, oldest first, across its sealed segments and
    the active file (for a process without an AuditLog open). Reads the files newest first and
    stops at one holding a checkpoint with ``n <= after_n``. Without locking: an unterminated
    last line is skipped. ``newest_only``: stop at the first file that has any checkpoint."""
    found: list[dict[str, Any]] = []
    for file in reversed(log_files(path) if files is None else files):
        mine, older = [], False
        with open(file, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n") or b'"kind":"audit.checkpoint"' not in line:
                    continue
                fields = json.loads(line)["fields"]
                if fields.get("n", -1) > after_n:
                    mine.append(fields)
                else:
                    older = True
        found = mine + found
        if older or (newest_only and mine):
            break
    return found
