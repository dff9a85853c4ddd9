"""The station's SQLite database (WAL): one file, ``<station dir>/station.db``.

Tables (schema version 1):

    devices        enrolled devices: signing key, CURVE key, enabled flag
    clips          one row per stored envelope (the ciphertext lives in a file beside it)
    devices_seen   last-seen time, last health, highest stored sequence per device
    checkpoints    audit-log checkpoints carried by heartbeats, once each
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from pathlib import Path

from appliance.common.errors import InputError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id      TEXT PRIMARY KEY,
    signing_public BLOB NOT NULL,
    curve_public   TEXT NOT NULL UNIQUE,
    description    TEXT NOT NULL DEFAULT '',
    added_unix_ms  INTEGER NOT NULL,
    enabled        INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS clips (
    clip_id          TEXT PRIMARY KEY,
    device_id        TEXT NOT NULL,
    sequence         INTEGER NOT NULL,
    envelope_sha256  TEXT NOT NULL,
    path             TEXT NOT NULL,
    bytes            INTEGER NOT NULL,
    pattern          TEXT NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    header_json      TEXT NOT NULL,
    UNIQUE (device_id, sequence)
);
CREATE TABLE IF NOT EXISTS devices_seen (
    device_id         TEXT PRIMARY KEY,
    last_seen_unix_ms INTEGER NOT NULL DEFAULT 0,
    last_kind         TEXT NOT NULL DEFAULT '',
    health_json       TEXT NOT NULL DEFAULT '{}',
    highest_sequence  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id         TEXT NOT NULL,
    received_unix_ms  INTEGER NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    checkpoint_json   TEXT NOT NULL,
    UNIQUE (device_id, checkpoint_sha256)
);
"""


def db_path(station_dir: str | Path) -> Path:
    return Path(station_dir) / "station.db"


def require_owner(station_dir: str | Path) -> None:
    """Refuses root in a station directory that belongs to another user (the units' user).

    Whatever root creates there (a new audit-log segment, the database's -wal and -shm files, a
    holds file) is root's, 0600: appliance-station.service could no longer open it and would
    stop receiving clips. Run the command as the directory's owner instead.
    """
    if os.geteuid() != 0:
        return   # anyone else simply gets "permission denied" on what they may not touch
    try:
        owner = Path(station_dir).stat().st_uid
    except FileNotFoundError:
        return   # keygen is creating it
    if owner != 0:
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise InputError(f"{station_dir} belongs to {name}, and files root creates there would lock the "
                         f"station service out (fix: run the command as that user, e.g. "
                         f"'runuser -u {name} -- appliance ...')")


def connect(station_dir: str | Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Opens (creating if needed) the station database in WAL mode.

    ``synchronous="FULL"`` (default) fsyncs every commit. The clip store uses ``NORMAL``:
    there the fsynced envelope *file* is the durable record and the ``clips`` rows are an
    index that :meth:`ClipStore.recover` rebuilds from the files at start-up.
    """
    require_owner(station_dir)
    path = db_path(station_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(synchronous)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    elif version != SCHEMA_VERSION:
        from appliance.common.errors import ApplianceError
        raise ApplianceError(f"{path}: schema version {version}, this software knows {SCHEMA_VERSION}")
    return conn
