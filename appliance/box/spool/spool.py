"""The on-disk queue of sealed envelopes between the pixel process and the uplink.

Layout of the spool directory (one device per box)::

    <dir>/<sequence:016d>.<device_id>.env   pending envelopes, sent in sequence order
    <dir>/<sequence:016d>.<device_id>.alarm pending alarm messages (docs/alarm-message.md): the
                                            priority lane, sent before any envelope
    <dir>/tmp/                              half-written files (removed at start-up)
    <dir>/rejected/                         envelopes the station refused permanently (kept)
    <dir>/quarantine/                       envelopes larger than the station accepts (kept)
    <dir>/sequence/<device_id>              last sequence number handed out (monotonic)

Writes are atomic (temporary file, fsync, rename, fsync of the directory), so a crash leaves
either the whole envelope or nothing. An envelope is removed only by :meth:`Spool.ack` (the
station confirmed it stored it) or an explicit :meth:`Spool.delete` with a reason.

Full policy: when an envelope would push the spool (pending + rejected) over ``max_bytes``,
:meth:`Spool.put` refuses it with :class:`SpoolFullError` and the spool reports ``full`` in
its health until space is freed. Nothing already spooled is ever dropped to make room: the
newest clip is refused loudly (the pixel process logs it, audits it and raises a health alarm)
rather than older evidence being lost silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.durable import atomic_write, fsync_dir
from appliance.common.errors import ApplianceError
from appliance.contracts.identifiers import DEVICE_ID_RE

log = logging.getLogger("appliance.spool")

STALE_TMP_S = 600.0  # a put() takes well under a second; older temp files are wreckage
#: A write that fails with one of these is a full disk: the clip is refused, not lost silently.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NAME_RE = re.compile(r"(\d{16})\.(" + DEVICE_ID_RE.pattern + r")\.env")
_ALARM_RE = re.compile(r"(\d{16})\.(" + DEVICE_ID_RE.pattern + r")\.alarm")
_DEVICE_RE = DEVICE_ID_RE


class SpoolFullError(ApplianceError):
    """The spool has no room for another envelope; the clip was NOT stored."""

    exit_code = 5


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    device_id: str
    sequence: int
    size: int

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class SpoolHealth:
    pending: int
    pending_bytes: int
    rejected: int
    used_bytes: int
    max_bytes: int
    quarantined: int = 0
    alarms_pending: int = 0   # alarm messages waiting in the priority lane

    @property
    def full_fraction(self) -> float:
        return self.used_bytes / self.max_bytes

    def to_json(self) -> dict[str, Any]:
        return {"spool_depth": self.pending, "spool_bytes": self.pending_bytes,
                "spool_rejected": self.rejected, "spool_used_bytes": self.used_bytes,
                "spool_max_bytes": self.max_bytes,
                "spool_full_fraction": round(self.full_fraction, 4), "spool_quarantined": self.quarantined,
                "spool_alarms": self.alarms_pending}


class Spool:
    """A bounded directory of envelopes; safe to share between one writer and one sender process.

    ``audit``: optional object with ``append(kind, **fields)``; receives ``spool.insert``,
    ``spool.refused``, ``spool.ack``, ``spool.delete`` and ``spool.rejected``.
    """

    def __init__(self, directory: str | Path, max_bytes: int, *, audit: Any = None):
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.audit = audit
        self._tmp = self.dir / "tmp"
        self._rejected = self.dir / "rejected"
        self._quarantine = self.dir / "quarantine"
        self._seq_dir = self.dir / "sequence"
        for d in (self.dir, self._tmp, self._rejected, self._quarantine, self._seq_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o770)
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        # Leftovers of a put() that crashed before its rename (put() never returned for them).
        # Only a dead writer's (pid in the name) AND stale ones go: the pixel and uplink
        # processes may live in different PID namespaces, so the pid alone proves nothing.
        now = time.time()
        for p in self._tmp.glob(".*.tmp"):
            try:
                pid = int(p.name.split(".")[-3])   # .<name>.<pid>.<serial>.tmp (common/durable.py)
                stale = now - p.stat().st_mtime > STALE_TMP_S
            except (ValueError, FileNotFoundError):
                continue
            if stale and pid != os.getpid() and not _pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(kind, **fields)

    # -- sequence numbers -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Read-only is enough for flock: the uplink (another user, same group) may not write a
        # lock file the pixel process created.
        fd = os.open(self._seq_dir / ".lock", os.O_RDONLY | os.O_CREAT, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def last_sequence(self, device_id: str) -> int:
        path = self._seq_dir / device_id
        try:
            stored = int(path.read_text().strip() or 0)
        except FileNotFoundError:
            stored = 0
        except ValueError:
            raise ApplianceError(f"{path}: corrupt sequence file; refusing to guess "
                                 f"(fix: write the highest sequence the station holds into it)") from None
        spooled = max((e.sequence for e in self._scan(self.dir) if e.device_id == device_id), default=0)
        return max(stored, spooled)

    def next_sequence(self, device_id: str) -> int:
        """Hands out the next sequence number for ``device_id``, durably (never reused).

        Raises :class:`SpoolFullError` (audited ``spool.refused``) when the disk is full."""
        if not _DEVICE_RE.fullmatch(device_id):
            raise ApplianceError(f"device id {device_id!r} must match {_DEVICE_RE.pattern}")
        with self._locked():
            n = self.last_sequence(device_id) + 1
            try:
                atomic_write(self._seq_dir / device_id, f"{n}\n".encode(), self._tmp)
            except OSError as exc:
                self._refuse_disk_full(exc, device_id, n, 0)
        return n

    def _refuse_disk_full(self, exc: OSError, device_id: str, sequence: int, size: int) -> None:
        """Turns a full disk into a loud, audited refusal; re-raises any other OSError."""
        if exc.errno not in _DISK_FULL:
            raise exc
        try:  # the audit log may well live on the same full disk
            self._audit("spool.refused", device_id=device_id, sequence=sequence, bytes=size,
                        reason="disk_full", error=os.strerror(exc.errno))
        except Exception as audit_exc:
            log.error("could not audit the refusal of %s#%d either: %s", device_id, sequence, audit_exc)
        raise SpoolFullError(
            f"disk of spool {self.dir} is full ({os.strerror(exc.errno)}): clip {device_id}#{sequence} NOT "
            f"stored (fix: free space on that filesystem; the spool itself is within spool.max_bytes)") from None

    def resync_sequence(self, device_id: str, station_highest: int) -> int | None:
        """Moves the sequence counter above the station's highest stored sequence for this device.

        A spool or sequence file lost on the box (a replaced disk, a wiped state directory)
        would restart numbering at 1 and every new clip would be refused as ``old_sequence``.
        Returns the new last sequence, or None when the counter was already above it. Audited
        (``spool.resync``)."""
        if not _DEVICE_RE.fullmatch(device_id) or not 0 <= station_highest < 10**16:
            raise ApplianceError(f"cannot resync {device_id!r} to {station_highest!r}")
        with self._locked():
            local = self.last_sequence(device_id)
            if station_highest <= local:
                return None
            atomic_write(self._seq_dir / device_id, f"{station_highest}\n".encode(), self._tmp)
        self._audit("spool.resync", device_id=device_id, local_last=local, station_highest=station_highest)
        log.warning("sequence of %s re-synchronised with the station: local last %d, station holds up to %d; "
                    "the next clip is #%d", device_id, local, station_highest, station_highest + 1)
        return station_highest

    # -- envelopes --------------------------------------------------------------------

    @staticmethod
    def _scan(directory: Path, pattern: re.Pattern[str] = _NAME_RE) -> list[SpoolEntry]:
        entries = []
        for p in directory.iterdir():
            m = pattern.fullmatch(p.name)
            if not m:
                continue
            try:
                size = p.stat().st_size
            except FileNotFoundError:  # acked by the sender meanwhile
                continue
            entries.append(SpoolEntry(p, m.group(2), int(m.group(1)), size))
        entries.sort(key=lambda e: (e.sequence, e.device_id))
        return entries

    def pending(self) -> list[SpoolEntry]:
        """Envelopes waiting for the station's ack, oldest (lowest sequence) first."""
        return self._scan(self.dir)

    def rejected(self) -> list[SpoolEntry]:
        return self._scan(self._rejected) + self._scan(self._rejected, _ALARM_RE)

    def pending_alarms(self) -> list[SpoolEntry]:
        """Alarm messages waiting for the station's ack (the priority lane), oldest first."""
        return self._scan(self.dir, _ALARM_RE)

    def put_alarm(self, message: bytes, *, device_id: str, sequence: int) -> SpoolEntry:
        """Stores a signed alarm message for ``device_id#sequence`` (the sequence its clip will carry).

        Alarm messages are small (skeletons only) and are never refused for space: an alarm
        must reach the black monitor even when the spool is full of clips.
        """
        if not _DEVICE_RE.fullmatch(device_id):
            raise ApplianceError(f"device id {device_id!r} must match {_DEVICE_RE.pattern}")
        path = self.dir / f"{sequence:016d}.{device_id}.alarm"
        with self._locked():
            if path.exists() or (self._rejected / path.name).exists():
                raise ApplianceError(f"{path.name}: alarm {device_id}#{sequence} is already spooled")
            try:
                atomic_write(path, message, self._tmp)
            except OSError as exc:
                self._refuse_disk_full(exc, device_id, sequence, len(message))
        self._audit("spool.insert", device_id=device_id, sequence=sequence, bytes=len(message), lane="alarm")
        return SpoolEntry(path, device_id, sequence, len(message))

    def quarantined(self) -> list[SpoolEntry]:
        return self._scan(self._quarantine)

    def health(self) -> SpoolHealth:
        pending, rejected, quarantined = self.pending(), self.rejected(), self.quarantined()
        pending_bytes = sum(e.size for e in pending)
        return SpoolHealth(len(pending), pending_bytes, len(rejected),
                           pending_bytes + sum(e.size for e in rejected) + sum(e.size for e in quarantined),
                           self.max_bytes, len(quarantined),
                           len(self.pending_alarms()))

    def put(self, envelope: bytes, *, device_id: str, sequence: int) -> SpoolEntry:
        """Stores an envelope durably; raises :class:`SpoolFullError` if it does not fit."""
        if not _DEVICE_RE.fullmatch(device_id):
            raise ApplianceError(f"device id {device_id!r} must match {_DEVICE_RE.pattern}")
        if not 0 < sequence < 10**16:
            raise ApplianceError(f"sequence {sequence} out of range")
        path = self.dir / f"{sequence:016d}.{device_id}.env"
        with self._locked():
            if path.exists() or (self._rejected / path.name).exists() or (self._quarantine / path.name).exists():
                raise ApplianceError(f"{path.name}: sequence {sequence} is already spooled; "
                                     f"sequence numbers are never reused")
            used = self.health().used_bytes
            if used + len(envelope) > self.max_bytes:
                self._audit("spool.refused", device_id=device_id, sequence=sequence,
                            bytes=len(envelope), used_bytes=used, max_bytes=self.max_bytes)
                raise SpoolFullError(
                    f"spool {self.dir} is full ({used} of {self.max_bytes} bytes used, envelope "
                    f"{len(envelope)} bytes): clip {device_id}#{sequence} NOT stored (fix: restore the "
                    f"link to the station or raise spool.max_bytes)")
            try:
                atomic_write(path, envelope, self._tmp)
            except OSError as exc:
                self._refuse_disk_full(exc, device_id, sequence, len(envelope))
        self._audit("spool.insert", device_id=device_id, sequence=sequence, bytes=len(envelope))
        return SpoolEntry(path, device_id, sequence, len(envelope))

    def ack(self, entry: SpoolEntry, *, envelope_sha256: str = "", status: str = "stored") -> None:
        """The station stored it: remove it from the spool."""
        self._remove(entry.path)
        self._audit("spool.ack", device_id=entry.device_id, sequence=entry.sequence,
                    envelope_sha256=envelope_sha256, status=status)

    def delete(self, entry: SpoolEntry, *, reason: str) -> None:
        """Removes an envelope that was NOT acknowledged; requires a reason (audited)."""
        if not reason.strip():
            raise ApplianceError("deleting an unacknowledged envelope needs a reason")
        self._remove(entry.path)
        self._audit("spool.delete", device_id=entry.device_id, sequence=entry.sequence, reason=reason)

    def move_to_rejected(self, entry: SpoolEntry, *, reason: str) -> SpoolEntry:
        """Keeps an envelope the station refused permanently, out of the send queue."""
        target = self._rejected / entry.path.name
        os.rename(entry.path, target)
        fsync_dir(self.dir)
        fsync_dir(self._rejected)
        self._audit("spool.rejected", device_id=entry.device_id, sequence=entry.sequence, reason=reason)
        return SpoolEntry(target, entry.device_id, entry.sequence, entry.size)

    def quarantine(self, entry: SpoolEntry, *, reason: str, **fields: Any) -> SpoolEntry:
        """Keeps an envelope the station can never accept as it is (e.g. larger than its limit)
        out of the send queue, so the clips behind it still leave; audited, shown in health."""
        target = self._quarantine / entry.path.name
        os.rename(entry.path, target)
        fsync_dir(self.dir)
        fsync_dir(self._quarantine)
        self._audit("spool.quarantined", device_id=entry.device_id, sequence=entry.sequence, bytes=entry.size,
                    reason=reason, **fields)
        return SpoolEntry(target, entry.device_id, entry.sequence, entry.size)

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):  # already acked (idempotent)
            path.unlink()
        fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
