"""Retention: delete every stored clip past its profile's period unless a legal hold keeps it.

    job = RetentionJob(StationClipStore(station_dir), RetentionPolicy.from_config(cfg.audit),
                       audit=station_log, holds=LegalHolds.open(station_dir))
    result = job.run()          # deletes, and records each deletion with its ciphertext hash

The job works over a small :class:`ClipStore` protocol so it can be tested on an injected
clock and any store. Deletion is ``unlink`` + ``fsync`` of the directory, not an overwrite:
each clip is encrypted under its own key that exists only HPKE-wrapped inside its envelope,
so once the envelope file is gone the clip is unrecoverable even where flash keeps old
blocks (docs/audit-log.md §5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.common.durable import fsync_dir
from appliance.common.errors import ApplianceError, InputError
from appliance.contracts.audit.canonical import utc_iso
from appliance.station.storage.database import Database, storage_errors

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 72.0
HOLDS_FILE = "holds.sqlite"
MIN_HOLD_REASON_CHARS = 1
#: Deletions per batch where the store offers ``delete_clips``.
DELETE_BATCH = 500


def _legal_max() -> float:
    from appliance.contracts.settings import LEGAL_MAX_RETENTION_HOURS
    return LEGAL_MAX_RETENTION_HOURS


@dataclass(frozen=True)
class RetainedClip:
    """What retention needs to know about one stored clip."""

    clip_id: str
    device_id: str
    profile_id: str
    received_at: float          # Unix seconds at the station
    envelope_sha256: str        # SHA-256 of the stored envelope (the proof of what is deleted)
    pattern: str = ""


class ClipStore(Protocol):
    """The store operations retention uses. ``delete_clip`` must remove every file holding the
    envelope or a wrapped key, durably (see :func:`delete_files_durably`), and the index row,
    and return the number of files unlinked."""

    def list_clips(self) -> Iterable[RetainedClip]: ...

    def delete_clip(self, clip_id: str) -> int: ...


def delete_files_durably(paths: Iterable[str | Path]) -> int:
    """Unlinks the files that exist, then fsyncs each parent directory once so the unlinks
    survive a power cut. Returns how many files were removed."""
    removed = 0
    parents: set[Path] = set()
    for p in map(Path, paths):
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        parents.add(p.parent)
    for d in parents:
        fsync_dir(d)
    return removed


# ---------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True)
class RetentionPolicy:
    """Retention hours per legal profile id; ``default_hours`` for any other profile."""

    default_hours: float = DEFAULT_RETENTION_HOURS
    per_profile: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        limit = _legal_max()
        for name, hours in [("default", self.default_hours), *self.per_profile.items()]:
            if not (0 < hours <= limit):
                raise InputError(f"retention for {name}: {hours} h is outside 0 < h <= {limit:g} "
                                 "(the declared legal maximum)")

    def hours_for(self, profile_id: str) -> float:
        return float(self.per_profile.get(profile_id, self.default_hours))

    def expires_at(self, clip: RetainedClip) -> float:
        return clip.received_at + self.hours_for(clip.profile_id) * 3600.0

    @classmethod
    def from_config(cls, audit_cfg: Any, profiles_dir: str | Path | None = None) -> RetentionPolicy:
        """Config ``[[audit.retention]]`` overrides, then each bundled/installed profile's own
        ``retention_hours``, then ``audit.retention_hours``."""
        per: dict[str, float] = {}
        try:
            from appliance.contracts.profile import available_profiles, load_profile
            for pid in available_profiles(profiles_dir):
                try:
                    per[pid] = float(load_profile(pid, profiles_dir).retention_hours)
                except ApplianceError as exc:     # a broken profile must not stop deletions
                    log.warning("profile %s not usable for retention: %s", pid, exc)
        except (ImportError, OSError, ApplianceError) as exc:
            log.warning("legal profiles not readable for retention: %s", exc)
        for rule in audit_cfg.retention:
            per[rule.profile] = float(rule.hours)
        return cls(float(audit_cfg.retention_hours), per)


# ---------------------------------------------------------------------------------------
# Legal holds


@dataclass(frozen=True)
class Hold:
    id: int
    clip_id: str
    reason: str
    by: str
    set_at: float
    until: float
    released_at: float | None = None
    released_by: str | None = None
    release_reason: str | None = None

    def active(self, now: float) -> bool:
        return self.released_at is None and now < self.until

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "clip_id": self.clip_id, "reason": self.reason, "by": self.by,
                "set_at": utc_iso(self.set_at), "until": utc_iso(self.until),
                "released_at": utc_iso(self.released_at) if self.released_at else None,
                "released_by": self.released_by, "release_reason": self.release_reason}


class LegalHolds:
    """Legal holds, each change audited before it is committed: their own SQLite file
    ``holds.sqlite`` beside the embedded station database, or the ``legal_holds`` table of the
    shared PostgreSQL database (every receiver and the retention job see the same holds)."""

    def __init__(self, database: Database | str | Path, *, audit: Any = None,
                 clock: Callable[[], float] = time.time):
        from appliance.station.storage import schema
        from appliance.station.storage.database import SqliteDatabase
        if isinstance(database, (str, Path)):
            database = SqliteDatabase(database, schema.HOLDS_SQLITE)
        self._db = database
        self._audit = audit
        self._clock = clock

    @classmethod
    def open(cls, station_dir: str | Path, *, settings: Any = None, **kwargs: Any) -> LegalHolds:
        from appliance.station.storage import open_database, resolve_settings
        settings = settings or resolve_settings(station_dir)
        if settings.db:
            return cls(open_database(station_dir, settings), **kwargs)
        return cls(Path(station_dir) / HOLDS_FILE, **kwargs)

    def set(self, clip_id: str, *, reason: str, by: str, until: float) -> Hold:
        now = self._clock()
        if not by.strip():
            raise InputError("legal hold refused: who sets it is mandatory (fix: --by NAME)")
        if len(reason.strip()) < MIN_HOLD_REASON_CHARS:
            raise InputError("legal hold refused: a reason is mandatory (fix: --reason 'case number, court order')")
        if until <= now:
            raise InputError(f"legal hold refused: until {utc_iso(until)} is not in the future")
        if self._audit is not None:
            self._audit.append("hold.set", clip_id=clip_id, reason=reason, by=by, until=utc_iso(until))
        row = self._db.execute("INSERT INTO legal_holds (clip_id, reason, set_by, set_at, until) "
                               "VALUES (?, ?, ?, ?, ?) RETURNING id", (clip_id, reason, by, now, until)).fetchone()
        return Hold(int(row[0]), clip_id, reason, by, now, until)

    def release(self, clip_id: str, *, reason: str, by: str) -> int:
        """Releases every active hold of ``clip_id``; returns how many."""
        now = self._clock()
        if not by.strip() or len(reason.strip()) < MIN_HOLD_REASON_CHARS:
            raise InputError("hold release refused: --by and a --reason are mandatory")
        active = [h for h in self.holds(clip_id) if h.active(now)]
        if not active:
            return 0
        if self._audit is not None:
            self._audit.append("hold.release", clip_id=clip_id, reason=reason, by=by)
        self._db.execute("UPDATE legal_holds SET released_at=?, released_by=?, release_reason=? "
                         "WHERE clip_id=? AND released_at IS NULL AND until > ?",
                         (now, by, reason, clip_id, now))
        return len(active)

    def holds(self, clip_id: str | None = None) -> list[Hold]:
        sql = ("SELECT id, clip_id, reason, set_by, set_at, until, released_at, released_by, release_reason "
               "FROM legal_holds")
        rows = (self._db.execute(sql + " WHERE clip_id=? ORDER BY id", (clip_id,)) if clip_id is not None
                else self._db.execute(sql + " ORDER BY id"))
        return [Hold(*row) for row in rows]

    def active(self, now: float | None = None) -> dict[str, Hold]:
        """clip id → the active hold lasting longest."""
        now = self._clock() if now is None else now
        found: dict[str, Hold] = {}
        for h in self.holds():
            if h.active(now) and (h.clip_id not in found or h.until > found[h.clip_id].until):
                found[h.clip_id] = h
        return found

    def close(self) -> None:
        self._db.close()


# ---------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class Deletion:
    clip: RetainedClip
    expires_at: float
    deleted_at: float
    files: int


@dataclass(frozen=True)
class Scheduled:
    """When a clip the job left in place will be deleted: at its expiry, or when the longest
    active legal hold on it ends, whichever is later."""
    clip: RetainedClip
    expires_at: float
    hold: Hold | None
    delete_after: float


@dataclass(frozen=True)
class RetentionResult:
    deleted: tuple[Deletion, ...]
    held: tuple[tuple[RetainedClip, Hold], ...]   # expired, kept by a legal hold
    kept: int                       # not yet expired
    errors: tuple[str, ...]
    dry_run: bool = False
    schedule: tuple[Scheduled, ...] = ()          # every clip left in place (held or not yet expired)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": [{"clip_id": d.clip.clip_id, "device_id": d.clip.device_id, "profile_id": d.clip.profile_id,
                         "envelope_sha256": d.clip.envelope_sha256, "expires_at": utc_iso(d.expires_at),
                         "deleted_at": utc_iso(d.deleted_at), "files": d.files} for d in self.deleted],
            "held": [{"clip_id": c.clip_id, "until": utc_iso(h.until), "reason": h.reason, "by": h.by}
                     for c, h in self.held],
            "kept": self.kept, "errors": list(self.errors),
            "schedule": [{"clip_id": x.clip.clip_id, "device_id": x.clip.device_id, "pattern": x.clip.pattern,
                          "expires_at": utc_iso(x.expires_at), "delete_after": utc_iso(x.delete_after),
                          "hold": None if x.hold is None else {"id": x.hold.id, "until": utc_iso(x.hold.until),
                                                               "by": x.hold.by, "reason": x.hold.reason}}
                         for x in self.schedule],
        }


class RetentionJob:
    """Deletes expired, unheld clips from ``store`` and records each deletion in ``audit``."""

    def __init__(self, store: ClipStore, policy: RetentionPolicy, *, audit: Any,
                 holds: LegalHolds | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.policy = policy
        self.audit = audit
        self.holds = holds
        self.clock = clock

    def run(self, *, dry_run: bool = False) -> RetentionResult:
        now = self.clock()
        active = self.holds.active(now) if self.holds is not None else {}
        deleted: list[Deletion] = []
        held: list[tuple[RetainedClip, Hold]] = []
        errors: list[str] = []
        schedule: list[Scheduled] = []
        due: list[tuple[RetainedClip, float]] = []
        kept = 0
        failures: tuple[type[BaseException], ...] = (OSError, ApplianceError, *storage_errors())
        for clip in sorted(self.store.list_clips(), key=lambda c: (c.received_at, c.clip_id)):
            expires = self.policy.expires_at(clip)
            hold = active.get(clip.clip_id)
            if now < expires or hold is not None:
                schedule.append(Scheduled(clip, expires, hold, max(expires, hold.until) if hold else expires))
            if now < expires:
                kept += 1
                continue
            if hold is not None:
                held.append((clip, hold))
                continue
            if dry_run:
                deleted.append(Deletion(clip, expires, now, 0))
                continue
            due.append((clip, expires))
        # In batches where the store can (bytes removed in parallel or with one fsync per
        # directory, rows in one commit); each deletion is still recorded on its own.
        batch_delete = getattr(self.store, "delete_clips", None)
        step = DELETE_BATCH if batch_delete is not None else 1
        for i in range(0, len(due), step):
            chunk = due[i:i + step]
            if batch_delete is not None:
                outcomes = batch_delete([c.clip_id for c, _ in chunk])
            else:
                outcomes = {}
                for c, _ in chunk:
                    try:
                        outcomes[c.clip_id] = self.store.delete_clip(c.clip_id)
                    except failures as exc:
                        outcomes[c.clip_id] = exc
            for clip, expires in chunk:
                files = outcomes.get(clip.clip_id, ApplianceError("not deleted"))
                if isinstance(files, BaseException):
                    errors.append(f"{clip.clip_id}: {files}")
                    log.error("retention: could not delete %s: %s", clip.clip_id, files)
                    continue
                deleted_at = self.clock()
                # Recorded after the deletion succeeded: a record never claims a deletion that
                # did not happen (docs/audit-log.md §5).
                self.audit.append(
                    "retention.delete", clip_id=clip.clip_id, device_id=clip.device_id, profile_id=clip.profile_id,
                    pattern=clip.pattern, envelope_sha256=clip.envelope_sha256,
                    received_at=utc_iso(clip.received_at), expires_at=utc_iso(expires),
                    retention_hours=self.policy.hours_for(clip.profile_id), files=files)
                deleted.append(Deletion(clip, expires, deleted_at, files))
        if not dry_run:
            self.audit.append("retention.run", deleted=len(deleted), held=len(held), kept=kept,
                              errors=len(errors), held_clips=sorted(c.clip_id for c, _ in held))
        return RetentionResult(tuple(deleted), tuple(held), kept, tuple(errors), dry_run, tuple(schedule))


# ---------------------------------------------------------------------------------------
# Adapter to the station's store (appliance/station/store.py)


class StationClipStore:
    """:class:`ClipStore` over the station's own store (:mod:`appliance.station.store`), whichever
    tier it is: its ``delete_clip`` removes the envelope's bytes (the file, fsynced directory;
    or every version of the S3 object), which hold the only wrapped copy of the clip's key,
    then the row."""

    def __init__(self, station_dir: str | Path, *, settings: Any = None):
        from appliance.station.store import ClipStore as StationStore
        self.station_dir = Path(station_dir)
        self._store = StationStore(self.station_dir, settings=settings, must_exist=True)

    def list_clips(self) -> Iterable[RetainedClip]:
        for c in self._store.list_clips():
            profile = c.header.get("profile") if isinstance(c.header, dict) else None
            profile_id = str(profile.get("id", "")) if isinstance(profile, dict) else str(profile or "")
            yield RetainedClip(c.clip_id, c.device_id, profile_id, c.received_unix_ms / 1000.0,
                               c.envelope_sha256, c.pattern)

    def delete_clip(self, clip_id: str) -> int:
        return self._store.remove(clip_id)[1]

    def delete_clips(self, clip_ids: list[str]) -> dict[str, int | BaseException]:
        return self._store.remove_many(clip_ids)

    def close(self) -> None:
        self._store.close()
