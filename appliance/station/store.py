"""Durable storage of received envelopes: files for the ciphertext, SQLite (WAL) for the index.

An envelope is stored when its file is durable under ``envelopes/<device>/`` (temporary file,
fsync, rename, fsync of the directory) and its index row is committed; only then does the
server acknowledge it. The file is the record: it names its device and sequence, so
:meth:`ClipStore.recover` (run at every start) re-indexes any file whose row a crash or power
loss took away. That is why the index connection may commit with ``synchronous=NORMAL``
(no fsync per commit) without risking an acknowledged clip.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.durable import atomic_write, fsync_dir
from appliance.common.errors import InputError
from appliance.contracts.envelope import (
    EnvelopeError,
    ParsedEnvelope,
    canonical_json,
    parse_envelope,
)
from appliance.station import db

MAX_CHECKPOINTS_PER_HEARTBEAT = 1000


@dataclass(frozen=True)
class StoredClip:
    clip_id: str
    device_id: str
    sequence: int
    envelope_sha256: str
    path: Path
    bytes: int
    pattern: str
    created_unix_ms: int
    received_unix_ms: int
    header: dict[str, Any]


@dataclass(frozen=True)
class StoreResult:
    clip: StoredClip
    duplicate: bool   # True: this exact envelope was stored before (idempotent re-send)


@dataclass(frozen=True)
class DeviceSeen:
    device_id: str
    last_seen_unix_ms: int
    last_kind: str
    health: dict[str, Any]
    highest_sequence: int


class ClipStore:
    """Envelope files + index under a station directory. One instance per thread."""

    def __init__(self, station_dir: str | Path):
        self.station_dir = Path(station_dir)
        self.envelope_dir = self.station_dir / "envelopes"
        self._tmp = self.station_dir / "tmp"
        for d in (self.envelope_dir, self._tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn = db.connect(self.station_dir, synchronous="NORMAL")

    def close(self) -> None:
        self._conn.close()

    def recover(self) -> int:
        """Indexes envelope files that have no row (lost in a crash); returns how many."""
        known = {row[0] for row in self._conn.execute("SELECT path FROM clips")}
        for leftover in self._tmp.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        recovered = 0
        for device_dir in sorted(p for p in self.envelope_dir.iterdir() if p.is_dir()):
            for path in sorted(device_dir.glob("*.env")):
                rel = str(path.relative_to(self.station_dir))
                if rel in known:
                    continue
                try:
                    parsed = parse_envelope(path.read_bytes())
                except EnvelopeError as exc:  # only verified envelopes are ever written here
                    raise InputError(f"{path}: stored envelope does not parse ({exc.reason}): "
                                     f"storage damaged or tampered") from None
                if not path.name.endswith(f"-{parsed.sha256[:16]}.env"):
                    raise InputError(f"{path}: content does not match its name: storage damaged or tampered")
                self._index(parsed, Path(rel))
                recovered += 1
        return recovered

    # -- clips ------------------------------------------------------------------------

    def _clip(self, row: sqlite3.Row) -> StoredClip:
        return StoredClip(row["clip_id"], row["device_id"], row["sequence"], row["envelope_sha256"],
                          self.station_dir / row["path"], row["bytes"], row["pattern"],
                          row["created_unix_ms"], row["received_unix_ms"], json.loads(row["header_json"]))

    def store(self, parsed: ParsedEnvelope) -> StoreResult:
        """Stores a parsed, *signature-verified* envelope; enforces the sequence rules.

        Raises :class:`EnvelopeError` ``replayed_sequence`` / ``old_sequence``.
        """
        header = parsed.header
        sha = parsed.sha256
        row = self._conn.execute("SELECT * FROM clips WHERE device_id=? AND sequence=?",
                                 (header.device_id, header.sequence)).fetchone()
        if row is not None:
            if row["envelope_sha256"] == sha:
                return StoreResult(self._clip(row), duplicate=True)
            raise EnvelopeError("replayed_sequence",
                                f"{header.device_id}#{header.sequence} already stored with other content")
        highest = self.highest_sequence(header.device_id)
        if header.sequence <= highest:
            raise EnvelopeError("old_sequence", f"{header.device_id}#{header.sequence} <= highest stored {highest}")
        device_dir = self.envelope_dir / header.device_id
        if not device_dir.exists():
            device_dir.mkdir(parents=True, mode=0o700)
            fsync_dir(self.envelope_dir)
        rel = Path("envelopes") / header.device_id / f"{header.sequence:016d}-{sha[:16]}.env"
        atomic_write(self.station_dir / rel, parsed.data, self._tmp)
        return StoreResult(self._index(parsed, rel), duplicate=False)

    def _index(self, parsed: ParsedEnvelope, rel: Path) -> StoredClip:
        header, sha = parsed.header, parsed.sha256
        clip_id = sha[:16]
        now = int(time.time() * 1000)
        with self._conn:  # one transaction: the row and the device's highest sequence together
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO clips(clip_id, device_id, sequence, envelope_sha256, path, bytes, pattern, "
                "created_unix_ms, received_unix_ms, header_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (clip_id, header.device_id, header.sequence, sha, str(rel), len(parsed.data), header.pattern,
                 header.created_unix_ms, now, canonical_json(header.to_json()).decode("ascii")))
            # Last-seen in the same commit: one fsync per stored clip, not two.
            self._conn.execute(
                "INSERT INTO devices_seen(device_id, highest_sequence, last_seen_unix_ms, last_kind) "
                "VALUES (?, ?, ?, 'envelope') ON CONFLICT(device_id) DO UPDATE SET "
                "highest_sequence=MAX(highest_sequence, excluded.highest_sequence), "
                "last_seen_unix_ms=excluded.last_seen_unix_ms, last_kind=excluded.last_kind",
                (header.device_id, header.sequence, now))
        return self._clip(self._conn.execute("SELECT * FROM clips WHERE clip_id=?", (clip_id,)).fetchone())

    def highest_sequence(self, device_id: str) -> int:
        row = self._conn.execute("SELECT highest_sequence FROM devices_seen WHERE device_id=?",
                                 (device_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def get(self, clip_id: str) -> StoredClip:
        row = self._conn.execute("SELECT * FROM clips WHERE clip_id=?", (clip_id,)).fetchone()
        if row is None:
            raise InputError(f"no stored clip {clip_id!r} (see 'appliance station list')")
        return self._clip(row)

    def list_clips(self, device_id: str | None = None, *, older_than_unix_ms: int | None = None) -> list[StoredClip]:
        sql, args = "SELECT * FROM clips WHERE 1=1", []
        if device_id is not None:
            sql += " AND device_id=?"
            args.append(device_id)
        if older_than_unix_ms is not None:
            sql += " AND received_unix_ms < ?"
            args.append(older_than_unix_ms)
        sql += " ORDER BY device_id, sequence"
        return [self._clip(r) for r in self._conn.execute(sql, args)]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def read_envelope(self, clip: StoredClip) -> bytes:
        data = clip.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != clip.envelope_sha256:
            raise InputError(f"{clip.path}: file differs from the index (SHA-256 mismatch): storage tampered or damaged")
        return data

    def delete_clip(self, clip_id: str) -> StoredClip:
        """Removes the envelope file and its row (retention); the device's sequence floor stays."""
        clip = self.get(clip_id)
        clip.path.unlink(missing_ok=True)
        fsync_dir(clip.path.parent)
        self._conn.execute("PRAGMA synchronous=FULL")  # a deletion must not come back as a dangling row
        self._conn.execute("DELETE FROM clips WHERE clip_id=?", (clip_id,))
        self._conn.execute("PRAGMA synchronous=NORMAL")
        return clip

    # -- devices seen, heartbeats, checkpoints -----------------------------------------

    def record_seen(self, device_id: str, kind: str, health: dict[str, Any] | None = None) -> None:
        now = int(time.time() * 1000)
        if health is None:
            self._conn.execute(
                "INSERT INTO devices_seen(device_id, last_seen_unix_ms, last_kind) VALUES (?,?,?) "
                "ON CONFLICT(device_id) DO UPDATE SET last_seen_unix_ms=excluded.last_seen_unix_ms, "
                "last_kind=excluded.last_kind", (device_id, now, kind))
        else:
            self._conn.execute(
                "INSERT INTO devices_seen(device_id, last_seen_unix_ms, last_kind, health_json) VALUES (?,?,?,?) "
                "ON CONFLICT(device_id) DO UPDATE SET last_seen_unix_ms=excluded.last_seen_unix_ms, "
                "last_kind=excluded.last_kind, health_json=excluded.health_json",
                (device_id, now, kind, canonical_json(health).decode("ascii")))

    def last_seen(self, device_id: str) -> DeviceSeen | None:
        row = self._conn.execute("SELECT * FROM devices_seen WHERE device_id=?", (device_id,)).fetchone()
        if row is None:
            return None
        return DeviceSeen(row["device_id"], row["last_seen_unix_ms"], row["last_kind"],
                          json.loads(row["health_json"]), row["highest_sequence"])

    def add_checkpoints(self, device_id: str, checkpoints: list[Any]) -> int:
        """Stores each checkpoint not seen before for this device; returns how many were new."""
        now = int(time.time() * 1000)
        new = 0
        # Checkpoints exist only in this row once acked (the device stops re-sending): fsync them.
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for cp in checkpoints[:MAX_CHECKPOINTS_PER_HEARTBEAT]:
                raw = canonical_json(cp).decode("ascii")
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO checkpoints(device_id, received_unix_ms, checkpoint_sha256, "
                    "checkpoint_json) VALUES (?,?,?,?)",
                    (device_id, now, hashlib.sha256(raw.encode()).hexdigest(), raw))
                new += cur.rowcount
        self._conn.execute("PRAGMA synchronous=NORMAL")
        return new

    def checkpoints_for(self, device_id: str) -> list[dict[str, Any]]:
        """The audit checkpoints received from a device, in arrival order.

        Each item: ``{"received_unix_ms": int, "checkpoint": <the device's JSON object>}``.
        """
        return [{"received_unix_ms": r["received_unix_ms"], "checkpoint": json.loads(r["checkpoint_json"])}
                for r in self._conn.execute(
                    "SELECT received_unix_ms, checkpoint_json FROM checkpoints WHERE device_id=? ORDER BY id",
                    (device_id,))]


def checkpoints_for(station_dir: str | Path, device_id: str) -> list[dict[str, Any]]:
    """Convenience for the audit stage: the checkpoints a device sent to this station."""
    store = ClipStore(station_dir)
    try:
        return store.checkpoints_for(device_id)
    finally:
        store.close()
