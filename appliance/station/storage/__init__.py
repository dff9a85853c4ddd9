"""The station's storage: metadata in a database, envelopes in a blob store, chosen by configuration.

Two tiers, the same code paths above this package (receiver, listing, export, devices,
retention, legal holds, the audit stage's checkpoints):

    embedded (default)   SQLite (WAL) ``<dir>/station.db`` + files ``<dir>/envelopes/``
    scale-out            PostgreSQL (psycopg 3 pool) + an S3-compatible object store (boto3)

Which one a station directory uses is resolved, first match wins, from

    1. ``--db URL`` / ``--store URL`` on the command line,
    2. ``$APPLIANCE_STATION_DB`` / ``$APPLIANCE_STATION_STORE``,
    3. ``<station dir>/storage.toml``::

           [storage]
           db = "postgresql://station@db.example/appliance"
           store = "s3://appliance-clips?endpoint=https://s3.example&lock_days=3"

    4. the embedded default.

The station directory always holds the keys and this receiver's audit log; with the
scale-out tier every receiver (and the retention job, the console) points at the same
database and bucket. docs/storage.md describes both tiers and ``appliance station migrate``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.common.errors import InputError
from appliance.common.urls import redact_url
from appliance.station.storage import schema
from appliance.station.storage.blobs import EnvelopeBlobs, open_blobs
from appliance.station.storage.database import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
)

STORAGE_FILE = "storage.toml"
DB_ENV = "APPLIANCE_STATION_DB"
STORE_ENV = "APPLIANCE_STATION_STORE"


@dataclass(frozen=True)
class StorageSettings:
    db: str = ""      # "" = SQLite <dir>/station.db; else postgresql://...
    store: str = ""   # "" = files under <dir>/envelopes; else s3://...

    @property
    def embedded(self) -> bool:
        return not self.db and not self.store

    def describe(self) -> str:
        return (f"database {redact_url(self.db, keep_username=True) if self.db else 'SQLite station.db'}, "
                f"envelopes {self.store or 'files in envelopes/'}")


def read_storage_file(station_dir: str | Path) -> StorageSettings:
    path = Path(station_dir) / STORAGE_FILE
    if not path.exists():
        return StorageSettings()
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not readable TOML: {exc} (fix: [storage] with db = \"postgresql://...\" "
                         f"and store = \"s3://...\")") from None
    problems = [f"{path}: {key}: unknown (fix: only a [storage] table)" for key in doc if key != "storage"]
    table = doc.get("storage", {})
    if not isinstance(table, dict):
        table, problems = {}, [*problems, f"{path}: storage: must be a table [storage]"]
    for key, value in table.items():
        if key not in ("db", "store"):
            problems.append(f"{path}: storage.{key}: unknown key (fix: remove it or use db, store)")
        elif not isinstance(value, str):
            problems.append(f"{path}: storage.{key} = {value!r}: must be a string URL")
    if problems:
        raise InputError("; ".join(problems))
    return _checked(StorageSettings(table.get("db", ""), table.get("store", "")), str(path))


def _checked(settings: StorageSettings, source: str) -> StorageSettings:
    if settings.db and not settings.db.startswith(("postgresql://", "postgres://")):
        raise InputError(f"{source}: db = {redact_url(settings.db, keep_username=True)!r}: not a postgresql:// URL (fix: e.g. "
                         f"postgresql://station@127.0.0.1:5432/appliance, or leave it out for SQLite)")
    if settings.store and not settings.store.startswith("s3://"):
        raise InputError(f"{source}: store = {settings.store!r}: not an s3:// URL (fix: e.g. "
                         f"s3://appliance-clips?endpoint=http://127.0.0.1:8333, or leave it out for files)")
    if bool(settings.db) != bool(settings.store):
        raise InputError(f"{source}: give both db (PostgreSQL) and store (S3) or neither: a shared database "
                         f"with envelope files on one host would lose clips received elsewhere")
    return settings


def resolve_settings(station_dir: str | Path, db: str | None = None, store: str | None = None) -> StorageSettings:
    if db or store:
        return _checked(StorageSettings(db or "", store or ""), "command line")
    env_db, env_store = os.environ.get(DB_ENV, ""), os.environ.get(STORE_ENV, "")
    if env_db or env_store:
        return _checked(StorageSettings(env_db, env_store), f"${DB_ENV}/${STORE_ENV}")
    return read_storage_file(station_dir)


def write_storage_file(station_dir: str | Path, settings: StorageSettings) -> Path:
    import tomli_w

    from appliance.common.durable import atomic_write
    path = Path(station_dir) / STORAGE_FILE
    body = ("# Which storage this station directory's commands use (docs/storage.md).\n"
            + tomli_w.dumps({"storage": {"db": settings.db, "store": settings.store}}))
    atomic_write(path, body.encode(), path.parent, mode=0o600)
    return path


class Storage:
    """An open database + blob store. ``db`` is thread-safe on PostgreSQL, per-thread on SQLite."""

    def __init__(self, station_dir: str | Path, settings: StorageSettings, db: Database, blobs: EnvelopeBlobs):
        self.station_dir = Path(station_dir)
        self.settings = settings
        self.db = db
        self.blobs = blobs

    def close(self) -> None:
        self.db.close()
        self.blobs.close()


def open_database(station_dir: str | Path, settings: StorageSettings, *, synchronous: str = "FULL",
                  pool_size: int = 8) -> Database:
    if settings.db:
        return PostgresDatabase(settings.db, schema.STATION_POSTGRESQL, max_size=pool_size)
    from appliance.station import db as station_db
    station_db.require_owner(station_dir)
    return SqliteDatabase(station_db.db_path(station_dir), schema.STATION_SQLITE, synchronous=synchronous)


def open_storage(station_dir: str | Path, *, db: str | None = None, store: str | None = None,
                 settings: StorageSettings | None = None, synchronous: str = "FULL",
                 must_exist: bool = False) -> Storage:
    """Opens the station directory's storage (see the module docstring for how it is chosen).

    ``must_exist``: for read-side commands, refuse a directory that holds no station database
    instead of creating an empty one.
    """
    settings = settings or resolve_settings(station_dir, db, store)
    if must_exist and not settings.db:
        from appliance.station import db as station_db
        if not station_db.db_path(station_dir).exists():
            raise InputError(f"no station database in {station_dir} (fix: give the station's directory, or "
                             f"--db/--store for a PostgreSQL + S3 station)")
    database = open_database(station_dir, settings, synchronous=synchronous)
    try:
        blobs = open_blobs(station_dir, settings.store)
    except BaseException:
        database.close()
        raise
    return Storage(station_dir, settings, database, blobs)
