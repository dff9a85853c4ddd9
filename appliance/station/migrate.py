"""`appliance station migrate`: moves a site from the embedded tier (SQLite + files) to
PostgreSQL + an S3-compatible store, keeping every row's times (retention counts from the
original reception) and every envelope's bytes (checked against the index's SHA-256).

    appliance station migrate --dir /var/lib/appliance-station \\
        --to-db postgresql://station@db.example/appliance \\
        --to-store 's3://appliance-clips?endpoint=https://s3.example' [--remove-source]

Safe to re-run: rows already in the target are left as they are (``ON CONFLICT DO NOTHING``),
objects are content-addressed. While it runs it holds the write lock of ``station.db``, so a
receiver still running on the directory waits (and its devices re-send later) instead of
storing a clip the migration would miss. At the end it writes ``<dir>/storage.toml``, so
every command on the directory uses the new tier, and records ``station.migrated`` in the
station's audit log. ``--remove-source`` then deletes the envelope files (fsynced), recorded in
the same record: copies of clips must not outlive their retention in a directory nobody reads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError
from appliance.station import db as station_db
from appliance.station.retention import HOLDS_FILE
from appliance.station.storage import (
    Storage,
    StorageSettings,
    open_storage,
    read_storage_file,
    schema,
    write_storage_file,
)
from appliance.station.storage.blobs import EnvelopeFiles
from appliance.station.storage.database import Database, SqliteDatabase

log = logging.getLogger("appliance.station.migrate")

#: Tables copied as they are, in this order, with their columns (ids kept, so hold numbers stay).
_TABLES = {
    "devices": ("device_id", "signing_public", "curve_public", "description", "added_unix_ms", "enabled"),
    "devices_seen": ("device_id", "last_seen_unix_ms", "last_kind", "health_json", "highest_sequence"),
    "checkpoints": ("id", "device_id", "received_unix_ms", "checkpoint_sha256", "checkpoint_json"),
    "alarms": ("alarm_id", "device_id", "sequence", "pattern", "created_unix_ms", "received_unix_ms",
               "updated_unix_ms", "message_sha256", "message", "body_json", "clip_id"),
}
_HOLD_COLUMNS = ("id", "clip_id", "reason", "set_by", "set_at", "until", "released_at", "released_by",
                 "release_reason")
_CLIP_COLUMNS = ("clip_id", "device_id", "sequence", "envelope_sha256", "path", "bytes", "pattern",
                 "created_unix_ms", "received_unix_ms", "header_json")


@dataclass(frozen=True)
class MigrationResult:
    rows: dict[str, int]          # table -> rows copied (new in the target)
    clips: int                    # envelopes in the source
    clips_copied: int             # new in the target
    bytes: int
    source_files_removed: int
    storage_file: Path


def _copy_rows(src: Database, dst: Database, table: str, columns: tuple[str, ...], *, order: str) -> int:
    rows = src.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
    placeholders = ", ".join("?" for _ in columns)
    new = 0
    with dst.transaction() as tx:
        for row in rows:
            values = [bytes(v) if isinstance(v, memoryview) else v for v in row]
            cur = tx.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
                             f"ON CONFLICT DO NOTHING", values)
            new += max(cur.rowcount, 0)
        if "id" in columns and dst.dialect == "postgresql":   # later inserts continue after the copied ids
            tx.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                       f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))")
    return new


def migrate_site(station_dir: str | Path, target: StorageSettings, *, audit: Any = None,
                 remove_source: bool = False, progress: Callable[[int, int], None] | None = None) -> MigrationResult:
    station_dir = Path(station_dir)
    if target.embedded or not target.db or not target.store:
        raise InputError("station migrate needs both --to-db postgresql://... and --to-store s3://...")
    current = read_storage_file(station_dir)
    if not current.embedded and current != target:   # the same target again: a resumed run
        raise InputError(f"{station_dir} already uses {current.describe()} (fix: nothing to migrate; "
                         f"give that same --to-db/--to-store to finish an interrupted run)")
    if not station_db.db_path(station_dir).exists():
        raise InputError(f"no station database in {station_dir} (fix: give the station's directory)")
    source = SqliteDatabase(station_db.db_path(station_dir), schema.STATION_SQLITE)
    files = EnvelopeFiles(station_dir)
    dest: Storage = open_storage(station_dir, settings=target)
    try:
        with source.transaction():   # the write lock: a running receiver waits, its devices retry
            rows = {t: _copy_rows(source, dest.db, t, cols, order=cols[0]) for t, cols in _TABLES.items()}
            holds_path = station_dir / HOLDS_FILE
            if holds_path.exists():
                holds = SqliteDatabase(holds_path, schema.HOLDS_SQLITE)
                try:
                    rows["legal_holds"] = _copy_rows(holds, dest.db, "legal_holds", _HOLD_COLUMNS, order="id")
                finally:
                    holds.close()
            clips = source.execute(f"SELECT {', '.join(_CLIP_COLUMNS)} FROM clips ORDER BY received_unix_ms, "
                                   f"clip_id").fetchall()
            copied = total_bytes = 0
            for i, row in enumerate(clips, 1):
                data = files.get(row["path"])
                if hashlib.sha256(data).hexdigest() != row["envelope_sha256"]:
                    raise InputError(f"{files.describe(row['path'])}: differs from the index (SHA-256): storage "
                                     f"damaged or tampered; nothing was switched over (fix: restore it from a "
                                     f"backup, then run the migration again)")
                key = dest.blobs.put(row["device_id"], row["sequence"], row["envelope_sha256"], data)
                values = [key if c == "path" else row[c] for c in _CLIP_COLUMNS]
                cur = dest.db.execute(f"INSERT INTO clips ({', '.join(_CLIP_COLUMNS)}) VALUES "
                                      f"({', '.join('?' for _ in _CLIP_COLUMNS)}) ON CONFLICT DO NOTHING", values)
                copied += max(cur.rowcount, 0)
                total_bytes += len(data)
                if progress is not None:
                    progress(i, len(clips))
            indexed = dest.db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
            in_target = {r[0] for r in dest.db.execute("SELECT clip_id FROM clips")}
            missing = [r["clip_id"] for r in clips if r["clip_id"] not in in_target]
            if missing:
                raise InputError(f"{len(missing)} clip(s) not in the target after copying (e.g. {missing[0]}): "
                                 f"nothing was switched over (fix: check the target database, then run again)")
            storage_file = write_storage_file(station_dir, target)
            removed = 0
            if remove_source:
                for row in clips:
                    removed += files.delete(row["path"])
            if audit is not None:
                audit.append("station.migrated", target=target.describe(), clips=len(clips), clips_copied=copied,
                             clips_in_target=int(indexed), bytes=total_bytes, rows=rows,
                             source_files_removed=removed)
    finally:
        dest.close()
        source.close()
    return MigrationResult(rows, len(clips), copied, total_bytes, removed, storage_file)
