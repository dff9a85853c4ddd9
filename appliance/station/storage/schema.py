"""Versioned migrations of the station's metadata, one list per dialect, same version numbers.

To add a table (e.g. the console's alarms) append ``(N, sql)`` to BOTH ``STATION_SQLITE`` and
``STATION_POSTGRESQL``; every receiver applies what it lacks at start-up, PostgreSQL under an
advisory lock. Never edit a migration that has shipped.

Version 1 is the schema the station has always had in ``station.db`` (SQLite files written
before migrations existed carry ``user_version = 1`` and are left as they are). On
PostgreSQL the legal holds live in the same database; on SQLite they keep their own file,
``holds.sqlite`` (``HOLDS_SQLITE``).

Exactly-once: ``clips`` has ``UNIQUE (device_id, sequence)``. Two receivers racing on the same
envelope both try the insert; the database lets one win and the other answers "duplicate".
"""

from __future__ import annotations

_STATION_SQLITE_1 = """
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

_STATION_POSTGRESQL_1 = """
CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,
    signing_public BYTEA NOT NULL,
    curve_public   TEXT NOT NULL UNIQUE,
    description    TEXT NOT NULL DEFAULT '',
    added_unix_ms  BIGINT NOT NULL,
    enabled        INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE clips (
    clip_id          TEXT PRIMARY KEY,
    device_id        TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    envelope_sha256  TEXT NOT NULL,
    path             TEXT NOT NULL,
    bytes            BIGINT NOT NULL,
    pattern          TEXT NOT NULL,
    created_unix_ms  BIGINT NOT NULL,
    received_unix_ms BIGINT NOT NULL,
    header_json      TEXT NOT NULL,
    UNIQUE (device_id, sequence)
);
CREATE INDEX clips_received ON clips (received_unix_ms);
CREATE INDEX clips_envelope ON clips (envelope_sha256);
CREATE TABLE devices_seen (
    device_id         TEXT PRIMARY KEY,
    last_seen_unix_ms BIGINT NOT NULL DEFAULT 0,
    last_kind         TEXT NOT NULL DEFAULT '',
    health_json       TEXT NOT NULL DEFAULT '{}',
    highest_sequence  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE checkpoints (
    id                BIGSERIAL PRIMARY KEY,
    device_id         TEXT NOT NULL,
    received_unix_ms  BIGINT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    checkpoint_json   TEXT NOT NULL,
    UNIQUE (device_id, checkpoint_sha256)
);
CREATE TABLE legal_holds (
    id             BIGSERIAL PRIMARY KEY,
    clip_id        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    set_by         TEXT NOT NULL,
    set_at         DOUBLE PRECISION NOT NULL,
    until          DOUBLE PRECISION NOT NULL,
    released_at    DOUBLE PRECISION,
    released_by    TEXT,
    release_reason TEXT
);
CREATE INDEX legal_holds_clip ON legal_holds (clip_id)
"""

_HOLDS_SQLITE_1 = """
CREATE TABLE IF NOT EXISTS legal_holds (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    set_by         TEXT NOT NULL,
    set_at         REAL NOT NULL,
    until          REAL NOT NULL,
    released_at    REAL,
    released_by    TEXT,
    release_reason TEXT
);
CREATE INDEX IF NOT EXISTS legal_holds_clip ON legal_holds (clip_id)
"""

# Version 2 (issue 13): the alarms, one row per alarm id "<device_id>#<sequence>": the signed
# alarm message (docs/alarm-message.md) sent when the trigger fired, and the clip (same device
# and sequence) once it arrived. The console reads it; retention deletes a row with its clip.
_STATION_SQLITE_2 = """
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id          TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL,
    sequence          INTEGER NOT NULL,
    pattern           TEXT NOT NULL,
    created_unix_ms   INTEGER NOT NULL,
    received_unix_ms  INTEGER NOT NULL,
    updated_unix_ms   INTEGER NOT NULL,
    message_sha256    TEXT NOT NULL DEFAULT '',
    message           BLOB,
    body_json         TEXT NOT NULL,
    clip_id           TEXT,
    UNIQUE (device_id, sequence)
);
CREATE INDEX IF NOT EXISTS alarms_updated ON alarms (updated_unix_ms)
"""

_STATION_POSTGRESQL_2 = """
CREATE TABLE alarms (
    alarm_id          TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL,
    sequence          BIGINT NOT NULL,
    pattern           TEXT NOT NULL,
    created_unix_ms   BIGINT NOT NULL,
    received_unix_ms  BIGINT NOT NULL,
    updated_unix_ms   BIGINT NOT NULL,
    message_sha256    TEXT NOT NULL DEFAULT '',
    message           BYTEA,
    body_json         TEXT NOT NULL,
    clip_id           TEXT,
    UNIQUE (device_id, sequence)
);
CREATE INDEX alarms_updated ON alarms (updated_unix_ms)
"""

STATION_SQLITE: list[tuple[int, str]] = [(1, _STATION_SQLITE_1), (2, _STATION_SQLITE_2)]
STATION_POSTGRESQL: list[tuple[int, str]] = [(1, _STATION_POSTGRESQL_1), (2, _STATION_POSTGRESQL_2)]
HOLDS_SQLITE: list[tuple[int, str]] = [(1, _HOLDS_SQLITE_1)]

assert [v for v, _ in STATION_SQLITE] == [v for v, _ in STATION_POSTGRESQL], "one version list per dialect"
