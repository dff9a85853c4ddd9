"""The station's metadata database behind one small interface, in two dialects.

Code above this module writes its SQL once, with ``?`` placeholders and the subset of SQL
that SQLite and PostgreSQL share (``INSERT ... ON CONFLICT``, ``RETURNING``); the only
dialect-specific spellings go through :meth:`Database.greatest`. Tables are created and
changed only by the versioned migrations in :mod:`appliance.station.storage.schema`, one
list per dialect with the same version numbers.

    db = open_database("sqlite:///var/lib/appliance-station/station.db")   # the embedded default
    db = open_database("postgresql://station@db.example/appliance")        # several receivers
    row = db.execute("SELECT * FROM clips WHERE clip_id=?", (clip_id,)).fetchone()
    with db.transaction() as tx:          # one commit; on PostgreSQL one pooled connection
        tx.execute("INSERT ...", (...))

Rows support both ``row["column"]`` and ``row[0]`` in both dialects.

SQLite: one connection per instance and thread (as ``sqlite3`` wants), WAL, the schema
version in ``PRAGMA user_version``. PostgreSQL: a thread-safe ``psycopg_pool`` pool in
autocommit mode; migrations are applied under an advisory lock so N receivers starting at
once migrate once, and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from appliance.common.errors import ApplianceError, InputError
from appliance.common.urls import redact_url

log = logging.getLogger("appliance.station.storage")

#: Serialises migrations across receivers (any constant; "appl" in ASCII).
_MIGRATION_LOCK = 0x6170706C


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """What the station's stores need from a database."""

    dialect: str          # "sqlite" | "postgresql"
    thread_safe: bool     # False: one instance per thread (SQLite)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def transaction(self) -> contextlib.AbstractContextManager[Database]: ...

    def durable(self) -> contextlib.AbstractContextManager[None]: ...

    def greatest(self, a: str, b: str) -> str: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------
# SQLite


class SqliteDatabase:
    dialect = "sqlite"
    thread_safe = False

    def __init__(self, path: str | Path, migrations: Sequence[tuple[int, str]], *, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(synchronous)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Never world-readable, whatever the umask (SQLite gives -wal and -shm the same mode);
            # group-readable for the console (appliance-console, in the station's group).
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o640))
        self._synchronous = synchronous
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._migrate(migrations)

    def _migrate(self, migrations: Sequence[tuple[int, str]]) -> None:
        latest = migrations[-1][0] if migrations else 0
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > latest:
            raise ApplianceError(f"{self.path}: schema version {version}, this software knows {latest} "
                                 f"(fix: run the newer software, or restore a backup)")
        pending = [(v, sql) for v, sql in migrations if v > version]
        if not pending:
            return
        with self.transaction():
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            for v, sql in pending:
                if v <= version:
                    continue
                for statement in _statements(sql):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={int(v)}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, tuple(params))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteDatabase]:
        with self.conn:     # commits on success, rolls back on an exception
            self.conn.execute("BEGIN IMMEDIATE")
            yield self

    @contextlib.contextmanager
    def durable(self) -> Iterator[None]:
        """Commits inside are fsynced even on a connection opened with ``synchronous=NORMAL``."""
        if self._synchronous == "FULL":
            yield
            return
        self.conn.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA synchronous={self._synchronous}")

    def greatest(self, a: str, b: str) -> str:
        return f"MAX({a}, {b})"

    def close(self) -> None:
        self.conn.close()


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


# ---------------------------------------------------------------------------------------
# PostgreSQL


class _Result:
    """A fetched result (the pooled connection is back in the pool already)."""

    def __init__(self, rows: list[Any], rowcount: int):
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class Row(tuple):
    """A result row addressable by position and by column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase:
    dialect = "postgresql"
    thread_safe = True

    def __init__(self, url: str, migrations: Sequence[tuple[int, str]], *, min_size: int = 1,
                 max_size: int = 8, connect_timeout_s: float = 15.0,
                 migrations_table: str = "schema_migrations"):
        """``migrations_table``: where this migration list's versions are recorded (the console's
        tables have a list of their own in the same database)."""
        if not re.fullmatch(r"[a-z_]+", migrations_table):
            raise ValueError(migrations_table)
        self._migrations_table = migrations_table
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise InputError("PostgreSQL storage needs psycopg 3 and psycopg_pool (fix: pip install "
                             "'appliance[scale]')") from None
        self.url = url
        self._psycopg = psycopg
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                                   name="appliance-station",
                                   kwargs={"autocommit": True, "row_factory": _row_factory})
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except (PoolTimeout, psycopg.Error) as exc:
            self.pool.close()
            raise InputError(f"cannot connect to the station database {redact_url(url, keep_username=True)}: {exc} (fix: start "
                             f"PostgreSQL, check host, port, user and password in --db)") from None
        self._migrate(migrations)

    def _migrate(self, migrations: Sequence[tuple[int, str]]) -> None:
        latest = migrations[-1][0] if migrations else 0
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            table = self._migrations_table
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, "
                         "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            row = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table}").fetchone()
            version = row[0] if row is not None else 0
            if version > latest:
                raise ApplianceError(f"{redact_url(self.url, keep_username=True)}: schema version {version}, this software knows "
                                     f"{latest} (fix: run the newer software on every receiver)")
            for v, sql in migrations:
                if v > version:
                    log.info("migrating the station database to schema version %d", v)
                    for statement in _statements(sql):
                        conn.execute(statement)
                    conn.execute(f"INSERT INTO {table}(version) VALUES (%s)", (v,))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        with self.pool.connection() as conn:
            return _run(conn, sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Connection]:
        with self.pool.connection() as conn, conn.transaction():
            yield _Connection(conn, self)

    @contextlib.contextmanager
    def durable(self) -> Iterator[None]:
        yield   # every PostgreSQL commit is durable (synchronous_commit = on)

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def close(self) -> None:
        self.pool.close()


def _run(conn: Any, sql: str, params: Sequence[Any]) -> _Result:
    cur = conn.execute(_pg_sql(sql), tuple(params))
    rows = cur.fetchall() if cur.description is not None else []
    return _Result(rows, cur.rowcount)


class _Connection:
    """One pooled connection inside a transaction, with the :class:`Database` methods."""

    dialect = "postgresql"
    thread_safe = False

    def __init__(self, conn: Any, db: PostgresDatabase):
        self._conn, self._db = conn, db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return _run(self._conn, sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Connection]:
        with self._conn.transaction():   # a savepoint
            yield self

    def durable(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def greatest(self, a: str, b: str) -> str:
        return self._db.greatest(a, b)

    def close(self) -> None:
        pass


@functools.cache
def storage_errors() -> tuple[type[BaseException], ...]:
    """What a database or object store raises when it fails (for jobs that go on past one
    failure); imports the optional clients only when asked."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
        errors.append(psycopg.Error)
    except ImportError:
        pass
    try:
        import botocore.exceptions
        errors.extend([botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError])
    except ImportError:
        pass
    return tuple(errors)

