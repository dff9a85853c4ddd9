"""The station's embedded SQLite database (WAL): one file, ``<station dir>/station.db``.

The default tier of :mod:`appliance.station.storage` (PostgreSQL is the other).

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

SCHEMA_VERSION = 1   # the migrations: appliance/station/storage/schema.py


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
