"""Durable storage of received envelopes: the bytes in a blob store, the index in a database.

An envelope is stored when its bytes are durable (a fsynced file under ``envelopes/<device>/``,
or an acknowledged object in the S3 bucket) and its index row is committed; only then does the
server acknowledge it. The bytes are the record: they name their device and sequence, so
:meth:`ClipStore.recover` (run at every start) re-indexes any envelope whose row a crash or
power loss took away. That is why the embedded index connection may commit with
``synchronous=NORMAL`` (no fsync per commit) without risking an acknowledged clip.

Exactly once: the row is inserted with ``ON CONFLICT DO NOTHING`` against the unique key
``(device_id, sequence)``. When two receivers race on one envelope (a device failed over
while its first attempt was still being stored) one insert wins and the other receiver
answers ``duplicate`` for the same bytes, or ``replayed_sequence`` for other bytes.

Which database and blob store: :mod:`appliance.station.storage` (SQLite + files by default,
PostgreSQL + S3 for several receivers).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError
from appliance.contracts.alarm import ParsedAlarm, alarm_id, split_alarm_id
from appliance.contracts.canonical import canonical_json
from appliance.contracts.envelope import (
    EnvelopeError,
    ParsedEnvelope,
    parse_envelope,
)
from appliance.contracts.identifiers import CLIP_ID_RE
from appliance.station.storage import Storage, StorageSettings, open_storage

MAX_CHECKPOINTS_PER_HEARTBEAT = 1000


@dataclass(frozen=True)
class StoredClip:
    clip_id: str
    device_id: str
    sequence: int
    envelope_sha256: str
    path: Path            # the envelope file (embedded tier) or Path("s3://bucket/key")
    bytes: int
    pattern: str
    created_unix_ms: int
    received_unix_ms: int
    header: dict[str, Any]
    location: str = ""    # the clips.path column: relative file path or object key


@dataclass(frozen=True)
class StoreResult:
    clip: StoredClip
    duplicate: bool   # True: this exact envelope was stored before (idempotent re-send)


@dataclass(frozen=True)
class StoredAlarm:
    """An alarm as the station holds it: the signed message (skeletons), the clip, or both."""

    alarm_id: str
    device_id: str
    sequence: int
    pattern: str
    created_unix_ms: int
    received_unix_ms: int
    updated_unix_ms: int
    message_sha256: str      # '' when only the clip arrived (a box without alarm messages)
    body: dict[str, Any]
    clip_id: str | None

    @property
    def has_message(self) -> bool:
        return bool(self.message_sha256)


class AlarmConflict(Exception):
    """A different alarm message already holds this alarm id (``replayed_sequence``)."""


@dataclass(frozen=True)
class DeviceSeen:
    device_id: str
    last_seen_unix_ms: int
    last_kind: str
    health: dict[str, Any]
    highest_sequence: int


class ClipStore:
    """Envelopes + index of a station. One instance per thread on SQLite; a shared
    ``storage`` (PostgreSQL pool) may serve several threads."""

    def __init__(self, station_dir: str | Path, *, storage: Storage | None = None,
                 settings: StorageSettings | None = None, must_exist: bool = False):
        self.station_dir = Path(station_dir)
        self._own = storage is None
        self.storage = storage or open_storage(self.station_dir, settings=settings, synchronous="NORMAL",
                                               must_exist=must_exist)
        self.db = self.storage.db
        self.blobs = self.storage.blobs

    def close(self) -> None:
        if self._own:
            self.storage.close()

    def recover(self) -> int:
        """Indexes stored envelopes that have no row (lost in a crash); returns how many."""
        known = {row[0] for row in self.db.execute("SELECT path FROM clips")}
        recovered = 0
        for location in self.blobs.locations():
            if location in known:
                continue
            where = self.blobs.describe(location)
            try:
                parsed = parse_envelope(self.blobs.get(location))
            except FileNotFoundError:
                continue       # deleted meanwhile (retention on another host)
            except EnvelopeError as exc:  # only verified envelopes are ever written here
                raise InputError(f"{where}: stored envelope does not parse ({exc.reason}): "
                                 f"storage damaged or tampered") from None
            expected = parsed.sha256 if self.blobs.kind == "s3" else f"-{parsed.sha256[:16]}.env"
            if not location.endswith(expected):
                raise InputError(f"{where}: content does not match its name: storage damaged or tampered")
            if self._insert(parsed, location):
                recovered += 1
        return recovered

    # -- clips ------------------------------------------------------------------------

    def _clip(self, row: Any) -> StoredClip:
        location = row["path"]
        path = self.station_dir / location if self.blobs.kind == "files" else Path(self.blobs.describe(location))
        return StoredClip(row["clip_id"], row["device_id"], row["sequence"], row["envelope_sha256"],
                          path, row["bytes"], row["pattern"], row["created_unix_ms"], row["received_unix_ms"],
                          json.loads(row["header_json"]), location)

    def _row_for(self, device_id: str, sequence: int) -> Any:
        return self.db.execute("SELECT * FROM clips WHERE device_id=? AND sequence=?",
                               (device_id, sequence)).fetchone()

    def _existing(self, parsed: ParsedEnvelope, row: Any) -> StoreResult:
        if row["envelope_sha256"] == parsed.sha256:
            return StoreResult(self._clip(row), duplicate=True)
        header = parsed.header
        raise EnvelopeError("replayed_sequence", f"{header.device_id}#{header.sequence} already stored with other content")

    def store(self, parsed: ParsedEnvelope) -> StoreResult:
        """Stores a parsed, *signature-verified* envelope; enforces the sequence rules.

        Raises :class:`EnvelopeError` ``replayed_sequence`` / ``old_sequence``.
        """
        header = parsed.header
        row = self._row_for(header.device_id, header.sequence)
        if row is not None:
            return self._existing(parsed, row)
        highest = self.highest_sequence(header.device_id)
        if header.sequence <= highest:
            # Another receiver may have committed this very (device, sequence) between the two
            # reads above: then it is a duplicate (or a replay), not an old sequence.
            row = self._row_for(header.device_id, header.sequence)
            if row is not None:
                return self._existing(parsed, row)
            raise EnvelopeError("old_sequence", f"{header.device_id}#{header.sequence} <= highest stored {highest}")
        location = self.blobs.put(header.device_id, header.sequence, parsed.sha256, parsed.data)
        if self._insert(parsed, location):
            return StoreResult(self._clip(self._row_for(header.device_id, header.sequence)), duplicate=False)
        # Another receiver stored this (device, sequence) between our check and our insert.
        row = self._row_for(header.device_id, header.sequence)
        if row["path"] != location and row["envelope_sha256"] != parsed.sha256:
            self.blobs.delete(location)   # our copy of the refused bytes must not linger unindexed
        return self._existing(parsed, row)

    def _insert(self, parsed: ParsedEnvelope, location: str) -> bool:
        """The row and the device's highest sequence in one commit; False if the unique key
        (device, sequence) or the clip id already had a row."""
        header, sha = parsed.header, parsed.sha256
        now = int(time.time() * 1000)
        with self.db.transaction() as tx:
            inserted = tx.execute(
                "INSERT INTO clips(clip_id, device_id, sequence, envelope_sha256, path, bytes, pattern, "
                "created_unix_ms, received_unix_ms, header_json) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT DO NOTHING RETURNING clip_id",
                (sha[:16], header.device_id, header.sequence, sha, location, len(parsed.data), header.pattern,
                 header.created_unix_ms, now, canonical_json(header.to_json()).decode("ascii"))).fetchone()
            if inserted is None:
                return False
            # Last-seen in the same commit: one fsync per stored clip, not two.
            tx.execute(
                "INSERT INTO devices_seen(device_id, highest_sequence, last_seen_unix_ms, last_kind) "
                "VALUES (?, ?, ?, 'envelope') ON CONFLICT(device_id) DO UPDATE SET "
                f"highest_sequence={tx.greatest('devices_seen.highest_sequence', 'excluded.highest_sequence')}, "
                "last_seen_unix_ms=excluded.last_seen_unix_ms, last_kind=excluded.last_kind",
                (header.device_id, header.sequence, now))
            # The clip attaches to its alarm (same device and sequence); a box that sends no alarm
            # messages still gets one alarm per clip, summarised from the signed header.
            summary = {"format": "appliance-clip-header", "pattern": header.pattern,
                       "profile": dict(header.profile), "event_window_ms": list(header.event_window_ms),
                       "event_wall_unix_ms": list(header.clip_wall_unix_ms), "frames": header.frames}
            tx.execute(
                "INSERT INTO alarms(alarm_id, device_id, sequence, pattern, created_unix_ms, received_unix_ms, "
                "updated_unix_ms, body_json, clip_id) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(alarm_id) DO UPDATE "
                "SET clip_id=excluded.clip_id, updated_unix_ms=excluded.updated_unix_ms",
                (alarm_id(header.device_id, header.sequence), header.device_id, header.sequence, header.pattern,
                 header.created_unix_ms, now, now, canonical_json(summary).decode("ascii"), sha[:16]))
        return True

    def highest_sequence(self, device_id: str) -> int:
        row = self.db.execute("SELECT highest_sequence FROM devices_seen WHERE device_id=?", (device_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def get(self, clip_id: str) -> StoredClip:
        """A clip by its alarm id (``walk-box-01#2``) or its envelope-hash clip id."""
        pair = split_alarm_id(clip_id) if isinstance(clip_id, str) else None
        if pair is not None:
            row = self._row_for(*pair)
        elif isinstance(clip_id, str) and CLIP_ID_RE.fullmatch(clip_id):
            row = self.db.execute("SELECT * FROM clips WHERE clip_id=?", (clip_id,)).fetchone()
        else:
            raise InputError(f"clip id {clip_id!r} is neither an alarm id (DEVICE#SEQUENCE) nor 16 lowercase hex "
                             "digits (fix: copy it from 'appliance station list')")
        if row is None:
            raise InputError(f"no stored clip {clip_id!r} (see 'appliance station list')")
        return self._clip(row)

    def list_clips(self, device_id: str | None = None, *, older_than_unix_ms: int | None = None) -> list[StoredClip]:
        sql, args = "SELECT * FROM clips WHERE 1=1", list[str | int]()
        if device_id is not None:
            sql += " AND device_id=?"
            args.append(device_id)
        if older_than_unix_ms is not None:
            sql += " AND received_unix_ms < ?"
            args.append(older_than_unix_ms)
        sql += " ORDER BY device_id, sequence"
        return [self._clip(r) for r in self.db.execute(sql, args)]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def read_envelope(self, clip: StoredClip) -> bytes:
        where = self.blobs.describe(clip.location)
        try:
            data = self.blobs.get(clip.location)
        except FileNotFoundError:
            raise InputError(f"{where}: the envelope is missing although indexed: storage damaged") from None
        if hashlib.sha256(data).hexdigest() != clip.envelope_sha256:
            raise InputError(f"{where}: file differs from the index (SHA-256 mismatch): storage tampered or damaged")
        return data

    def remove(self, clip_id: str) -> tuple[StoredClip, int]:
        """Removes the envelope's bytes (every copy), then its row (retention); the device's
        sequence floor stays; the alarm of the same id goes too. Returns the clip and how many
        files/object versions went."""
        clip = self.get(clip_id)
        removed = self.blobs.delete(clip.location)
        # The alarm message of the same id (its skeletons) goes with it: skeletons are personal
        # data too, kept no longer than the clip.
        with self.db.durable(), self.db.transaction() as tx:   # must not come back as a dangling row
            tx.execute("DELETE FROM clips WHERE clip_id=?", (clip.clip_id,))
            tx.execute("DELETE FROM alarms WHERE device_id=? AND sequence=?", (clip.device_id, clip.sequence))
        return clip, removed

    def delete_clip(self, clip_id: str) -> StoredClip:
        return self.remove(clip_id)[0]

    def remove_many(self, clip_ids: list[str]) -> dict[str, int | BaseException]:
        """:meth:`remove` for many clips: the bytes first (in parallel on S3, one fsync per
        directory for files), then the rows of those whose bytes went, in one commit. Returns
        clip id -> files/object versions removed, or the error that kept it."""
        outcome: dict[str, int | BaseException] = {}
        clips: dict[str, StoredClip] = {}
        for i in range(0, len(clip_ids), 500):
            part = clip_ids[i:i + 500]
            marks = ", ".join("?" for _ in part)
            for row in self.db.execute(f"SELECT * FROM clips WHERE clip_id IN ({marks})", part):
                clips[row["clip_id"]] = self._clip(row)
        for clip_id in clip_ids:
            if clip_id not in clips:
                outcome[clip_id] = InputError(f"no stored clip {clip_id!r}")
        removed = self.blobs.delete_many([c.location for c in clips.values()])
        gone = []
        for clip_id, clip in clips.items():
            outcome[clip_id] = removed[clip.location]
            if not isinstance(removed[clip.location], BaseException):
                gone.append(clip_id)
        with self.db.durable(), self.db.transaction() as tx:
            for clip_id in gone:
                tx.execute("DELETE FROM clips WHERE clip_id=?", (clip_id,))
                # the alarm's skeletons go with its clip (as in remove)
                tx.execute("DELETE FROM alarms WHERE device_id=? AND sequence=?",
                           (clips[clip_id].device_id, clips[clip_id].sequence))
        return outcome

    # -- alarms -----------------------------------------------------------------------

    def store_alarm(self, parsed: ParsedAlarm) -> tuple[StoredAlarm, bool]:
        """Stores a *signature-verified* alarm message; returns (alarm, duplicate).

        Raises :class:`AlarmConflict` when other bytes already hold this alarm id.
        """
        now = int(time.time() * 1000)
        body = parsed.body
        with self.db.transaction() as tx:
            row = tx.execute("SELECT message_sha256 FROM alarms WHERE alarm_id=?", (parsed.alarm_id,)).fetchone()
            if row is not None and row["message_sha256"]:
                if row["message_sha256"] != parsed.sha256:
                    raise AlarmConflict(f"{parsed.alarm_id} already holds another alarm message")
                duplicate = True
            else:
                duplicate = False
                # A clip that came first (it should not: alarms use the priority lane) keeps its
                # clip_id; the message replaces the header summary.
                tx.execute(
                    "INSERT INTO alarms(alarm_id, device_id, sequence, pattern, created_unix_ms, received_unix_ms, "
                    "updated_unix_ms, message_sha256, message, body_json) VALUES (?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(alarm_id) DO UPDATE SET message_sha256=excluded.message_sha256, "
                    "message=excluded.message, body_json=excluded.body_json, pattern=excluded.pattern, "
                    "created_unix_ms=excluded.created_unix_ms, updated_unix_ms=excluded.updated_unix_ms",
                    (parsed.alarm_id, parsed.device_id, parsed.sequence, body["pattern"], body["created_unix_ms"],
                     now, now, parsed.sha256, parsed.data, parsed.raw_body.decode("ascii")))
                tx.execute(
                    "INSERT INTO devices_seen(device_id, last_seen_unix_ms, last_kind) VALUES (?,?,'alarm') "
                    "ON CONFLICT(device_id) DO UPDATE SET last_seen_unix_ms=excluded.last_seen_unix_ms, "
                    "last_kind=excluded.last_kind", (parsed.device_id, now))
        return self.get_alarm(parsed.alarm_id), duplicate

    def get_alarm(self, alarm_id_: str) -> StoredAlarm:
        row = self.db.execute("SELECT * FROM alarms WHERE alarm_id=?", (alarm_id_,)).fetchone()
        if row is None:
            raise InputError(f"no alarm {alarm_id_!r} (see 'appliance station list')")
        return alarm_from_row(row)

    def alarm_message(self, alarm_id_: str) -> bytes | None:
        row = self.db.execute("SELECT message FROM alarms WHERE alarm_id=?", (alarm_id_,)).fetchone()
        return None if row is None or row["message"] is None else bytes(row["message"])

    def list_alarms(self, *, since_unix_ms: int | None = None) -> list[StoredAlarm]:
        sql, args = "SELECT * FROM alarms", []
        if since_unix_ms is not None:
            sql += " WHERE updated_unix_ms >= ?"
            args.append(since_unix_ms)
        return [alarm_from_row(r) for r in self.db.execute(sql + " ORDER BY received_unix_ms, alarm_id", args)]

    # -- devices seen, heartbeats, checkpoints -----------------------------------------

    def record_seen(self, device_id: str, kind: str, health: dict[str, Any] | None = None) -> None:
        now = int(time.time() * 1000)
        if health is None:
            self.db.execute(
                "INSERT INTO devices_seen(device_id, last_seen_unix_ms, last_kind) VALUES (?,?,?) "
                "ON CONFLICT(device_id) DO UPDATE SET last_seen_unix_ms=excluded.last_seen_unix_ms, "
                "last_kind=excluded.last_kind", (device_id, now, kind))
        else:
            self.db.execute(
                "INSERT INTO devices_seen(device_id, last_seen_unix_ms, last_kind, health_json) VALUES (?,?,?,?) "
                "ON CONFLICT(device_id) DO UPDATE SET last_seen_unix_ms=excluded.last_seen_unix_ms, "
                "last_kind=excluded.last_kind, health_json=excluded.health_json",
                (device_id, now, kind, canonical_json(health).decode("ascii")))

    def last_seen(self, device_id: str) -> DeviceSeen | None:
        row = self.db.execute("SELECT * FROM devices_seen WHERE device_id=?", (device_id,)).fetchone()
        if row is None:
            return None
        return DeviceSeen(row["device_id"], row["last_seen_unix_ms"], row["last_kind"],
                          json.loads(row["health_json"]), row["highest_sequence"])

    def add_checkpoints(self, device_id: str, checkpoints: list[Any]) -> int:
        """Stores each checkpoint not seen before for this device; returns how many were new."""
        now = int(time.time() * 1000)
        new = 0
        # Checkpoints exist only in this row once acked (the device stops re-sending): fsync them.
        with self.db.durable(), self.db.transaction() as tx:
            for cp in checkpoints[:MAX_CHECKPOINTS_PER_HEARTBEAT]:
                raw = canonical_json(cp).decode("ascii")
                cur = tx.execute(
                    "INSERT INTO checkpoints(device_id, received_unix_ms, checkpoint_sha256, "
                    "checkpoint_json) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                    (device_id, now, hashlib.sha256(raw.encode()).hexdigest(), raw))
                new += max(cur.rowcount, 0)
        return new

    def checkpoints_for(self, device_id: str) -> list[dict[str, Any]]:
        """The audit checkpoints received from a device, in arrival order.

        Each item: ``{"received_unix_ms": int, "checkpoint": <the device's JSON object>}``.
        """
        return [{"received_unix_ms": r["received_unix_ms"], "checkpoint": json.loads(r["checkpoint_json"])}
                for r in self.db.execute(
                    "SELECT received_unix_ms, checkpoint_json FROM checkpoints WHERE device_id=? ORDER BY id",
                    (device_id,))]


def alarm_from_row(row: Any) -> StoredAlarm:
    return StoredAlarm(row["alarm_id"], row["device_id"], row["sequence"], row["pattern"], row["created_unix_ms"],
                       row["received_unix_ms"], row["updated_unix_ms"], row["message_sha256"],
                       json.loads(row["body_json"]), row["clip_id"])


def checkpoints_for(station_dir: str | Path, device_id: str) -> list[dict[str, Any]]:
    """Convenience for the audit stage: the checkpoints a device sent to this station."""
    store = ClipStore(station_dir, must_exist=True)
    try:
        return store.checkpoints_for(device_id)
    finally:
        store.close()
