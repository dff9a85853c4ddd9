"""The station's embedded SQLite database (WAL): one file, ``<station dir>/station.db``.

The default tier of :mod:`appliance.station.storage` (PostgreSQL is the other).

Tables (schema version 2; the migrations are in appliance/station/storage/schema.py):

    devices        enrolled devices: signing key, CURVE key, enabled flag
    clips          one row per stored envelope (the ciphertext lives in a file beside it)
    devices_seen   last-seen time, last health, highest stored sequence per device
    checkpoints    audit-log checkpoints carried by heartbeats, once each
    alarms         (v2) one row per alarm id ``<device>#<sequence>``: the signed alarm message
                   (docs/alarm-message.md) and/or the clip that carries the same sequence
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from pathlib import Path

from appliance.common.errors import InputError

SCHEMA_VERSION = 2   # the migrations: appliance/station/storage/schema.py


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
    """The embedded station database's raw connection (WAL, migrated); prefer
    :func:`appliance.station.storage.open_storage`, which also serves PostgreSQL."""
    from appliance.station.storage import schema
    from appliance.station.storage.database import SqliteDatabase

    require_owner(station_dir)
    return SqliteDatabase(db_path(station_dir), schema.STATION_SQLITE, synchronous=synchronous).conn


def connect_readonly(station_dir: str | Path) -> sqlite3.Connection:
    """A read-only connection to the embedded database (the console): refuses to write, never
    creates or migrates (the receiver migrates at its start)."""
    path = db_path(station_dir)
    if not path.exists():
        raise InputError(f"{path}: no station database (fix: point --station-dir at a station directory "
                         f"made by 'appliance station keygen' and served by 'appliance station serve')")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn
