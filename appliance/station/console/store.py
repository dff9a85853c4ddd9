"""The console's own tables, and read-only access to the station's store.

The console process runs under its own user: it *reads* the station database (alarms, clips,
devices, health; ``mode=ro``) and *writes* only its own tables: ``<console dir>/console.db``
(SQLite WAL) on the embedded tier, or the same tables in PostgreSQL when the console is given
a database (``$APPLIANCE_STATION_DB`` or ``<console dir>/storage.toml``, docs/storage.md), so
that several console hosts share users, claims and verdicts:

    users        accounts: role, argon2id hash, lock-out counters
    sessions     login sessions (SHA-256 of the cookie token, CSRF token, expiry)
    workflow     per alarm id: new -> claimed(owner) -> closed(verdict, reason code, note)
    disclosures  requests for the full video (operator) and their approval (supervisor)
    console_alarms  alarms the console raises itself (a device gone stale, a camera tampered)
    evidence_wraps  the evidence private key wrapped under a supervisor's password (custody.py)
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.errors import ApplianceError, InputError
from appliance.station.console.custody import EvidenceWrap
from appliance.station.storage import StorageSettings, resolve_settings
from appliance.station.storage.database import Database, PostgresDatabase, SqliteDatabase

ROLES = ("operator", "supervisor", "dpo", "admin")
VERDICTS = ("true", "false", "unclear")
#: Reason codes per verdict: what the training export and the officer's statistics group by.
REASON_CODES: dict[str, tuple[str, ...]] = {
    "true": ("violence_confirmed", "other_offence", "medical_emergency"),
    "false": ("sport_or_play", "greeting_or_hug", "dance", "pose_error", "tracking_error", "other"),
    "unclear": ("occluded", "too_far", "too_short", "other"),
}

#: The console's own alarm kinds (device alarms, not behaviour alarms) and their id prefixes.
CONSOLE_ALARM_PREFIX = {"device_stale": "stale", "device_tamper": "tamper"}
CONSOLE_ALARM_LABEL = {"device_stale": "device stale", "device_tamper": "camera tamper"}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username         TEXT PRIMARY KEY,
    role             TEXT NOT NULL,
    password_hash    TEXT NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    disabled         INTEGER NOT NULL DEFAULT 0,
    failed_logins    INTEGER NOT NULL DEFAULT 0,
    locked_until_ms  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256     TEXT PRIMARY KEY,
    username         TEXT NOT NULL,
    csrf             TEXT NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    expires_unix_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workflow (
    alarm_id         TEXT PRIMARY KEY,
    state            TEXT NOT NULL,              -- claimed | closed (no row: new)
    owner            TEXT NOT NULL DEFAULT '',
    claimed_unix_ms  INTEGER NOT NULL DEFAULT 0,
    closed_unix_ms   INTEGER NOT NULL DEFAULT 0,
    closed_by        TEXT NOT NULL DEFAULT '',
    verdict          TEXT NOT NULL DEFAULT '',
    reason_code      TEXT NOT NULL DEFAULT '',
    note             TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS disclosures (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id         TEXT NOT NULL,
    layer            TEXT NOT NULL,              -- full
    requested_by     TEXT NOT NULL,
    reason           TEXT NOT NULL,
    requested_unix_ms INTEGER NOT NULL,
    state            TEXT NOT NULL,              -- pending | approved | refused
    decided_by       TEXT NOT NULL DEFAULT '',
    decision_reason  TEXT NOT NULL DEFAULT '',
    decided_unix_ms  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS console_alarms (
    alarm_id         TEXT PRIMARY KEY,           -- "stale:<device>:<unix ms>", "tamper:<device>:<unix ms>"
    kind             TEXT NOT NULL,              -- device_stale | device_tamper
    device_id        TEXT NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    body_json        TEXT NOT NULL
);
"""


_SCHEMA_POSTGRESQL = """
CREATE TABLE users (
    username         TEXT PRIMARY KEY,
    role             TEXT NOT NULL,
    password_hash    TEXT NOT NULL,
    created_unix_ms  BIGINT NOT NULL,
    disabled         INTEGER NOT NULL DEFAULT 0,
    failed_logins    INTEGER NOT NULL DEFAULT 0,
    locked_until_ms  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    token_sha256     TEXT PRIMARY KEY,
    username         TEXT NOT NULL,
    csrf             TEXT NOT NULL,
    created_unix_ms  BIGINT NOT NULL,
    expires_unix_ms  BIGINT NOT NULL
);
CREATE TABLE workflow (
    alarm_id         TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    owner            TEXT NOT NULL DEFAULT '',
    claimed_unix_ms  BIGINT NOT NULL DEFAULT 0,
    closed_unix_ms   BIGINT NOT NULL DEFAULT 0,
    closed_by        TEXT NOT NULL DEFAULT '',
    verdict          TEXT NOT NULL DEFAULT '',
    reason_code      TEXT NOT NULL DEFAULT '',
    note             TEXT NOT NULL DEFAULT ''
);
CREATE TABLE disclosures (
    id               BIGSERIAL PRIMARY KEY,
    alarm_id         TEXT NOT NULL,
    layer            TEXT NOT NULL,
    requested_by     TEXT NOT NULL,
    reason           TEXT NOT NULL,
    requested_unix_ms BIGINT NOT NULL,
    state            TEXT NOT NULL,
    decided_by       TEXT NOT NULL DEFAULT '',
    decision_reason  TEXT NOT NULL DEFAULT '',
    decided_unix_ms  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE console_alarms (
    alarm_id         TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    created_unix_ms  BIGINT NOT NULL,
    body_json        TEXT NOT NULL
)
"""

_EVIDENCE_WRAPS = """
CREATE TABLE evidence_wraps (
    username         TEXT PRIMARY KEY,           -- a supervisor
    fingerprint      TEXT NOT NULL,              -- of the evidence public key
    kem              TEXT NOT NULL,
    wrap_json        TEXT NOT NULL,              -- salt, KDF parameters, nonce, ciphertext: no secret
    created_unix_ms  BIGINT NOT NULL,
    created_by       TEXT NOT NULL DEFAULT ''
)
"""

#: Versioned migrations of the console's tables, one list per dialect (as the station's).
CONSOLE_SQLITE: list[tuple[int, str]] = [(1, _SCHEMA), (2, _EVIDENCE_WRAPS)]
CONSOLE_POSTGRESQL: list[tuple[int, str]] = [(1, _SCHEMA_POSTGRESQL), (2, _EVIDENCE_WRAPS)]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class User:
    username: str
    role: str
    password_hash: str
    disabled: bool
    failed_logins: int
    locked_until_ms: int


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    csrf: str
    expires_unix_ms: int
    token_sha256: str = ""     # names the session (a reveal of the video is bound to it)


@dataclass(frozen=True)
class Workflow:
    alarm_id: str
    state: str            # new | claimed | closed
    owner: str = ""
    claimed_unix_ms: int = 0
    closed_unix_ms: int = 0
    closed_by: str = ""
    verdict: str = ""
    reason_code: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ConsoleStore:
    """The console's tables; one instance shared by the console's threads (a lock serialises use)."""

    def __init__(self, console_dir: str | Path, *, settings: StorageSettings | None = None):
        self.dir = Path(console_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        settings = settings or resolve_settings(self.dir)
        self._db: Database
        if settings.db:
            self._db = PostgresDatabase(settings.db, CONSOLE_POSTGRESQL, max_size=4,
                                        migrations_table="console_schema_migrations")
        else:
            try:
                self._db = SqliteDatabase(self.dir / "console.db", CONSOLE_SQLITE)
            except ApplianceError as exc:
                raise InputError(f"{exc} (fix: run the matching release)") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # -- users ------------------------------------------------------------------------

    def add_user(self, username: str, role: str, password_hash: str) -> None:
        if role not in ROLES:
            raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InputError(f"user name {username!r}: 1-64 letters, digits, '.', '-', '_'")
        if not self._x("INSERT INTO users(username, role, password_hash, created_unix_ms) VALUES (?,?,?,?) "
                       "ON CONFLICT DO NOTHING", (username, role, password_hash, now_ms())):
            raise InputError(f"user {username!r} exists (fix: choose another name, or "
                             f"'appliance station console user passwd {username}')")

    def set_password(self, username: str, password_hash: str) -> None:
        if not self._x("UPDATE users SET password_hash=?, failed_logins=0, locked_until_ms=0 WHERE username=?",
                       (password_hash, username)):
            raise InputError(f"no user {username!r}")

    def set_disabled(self, username: str, disabled: bool) -> None:
        if not self._x("UPDATE users SET disabled=? WHERE username=?", (int(disabled), username)):
            raise InputError(f"no user {username!r}")
        if disabled:
            self._x("DELETE FROM sessions WHERE username=?", (username,))

    def user(self, username: str) -> User | None:
        rows = self._q("SELECT * FROM users WHERE username=?", (username,))
        if not rows:
            return None
        r = rows[0]
        return User(r["username"], r["role"], r["password_hash"], bool(r["disabled"]), r["failed_logins"],
                    r["locked_until_ms"])

    def users(self) -> list[User]:
        return [User(r["username"], r["role"], r["password_hash"], bool(r["disabled"]), r["failed_logins"],
                     r["locked_until_ms"]) for r in self._q("SELECT * FROM users ORDER BY username")]

    def record_login_failure(self, username: str, *, lock_after: int, lock_ms: int) -> int:
        """Counts a failed password; locks the account for ``lock_ms`` after ``lock_after`` failures."""
        with self._lock:
            self._x("UPDATE users SET failed_logins=failed_logins+1 WHERE username=?", (username,))
            user = self.user(username)
            if user is not None and user.failed_logins >= lock_after:
                self._x("UPDATE users SET locked_until_ms=?, failed_logins=0 WHERE username=?",
                        (now_ms() + lock_ms, username))
                return lock_after
            return user.failed_logins if user else 0

    def record_login_success(self, username: str) -> None:
        self._x("UPDATE users SET failed_logins=0 WHERE username=?", (username,))

    # -- sessions ---------------------------------------------------------------------

    def new_session(self, username: str, ttl_ms: int) -> tuple[str, str]:
        """Returns (cookie token, CSRF token); only the token's SHA-256 is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = now_ms()
        self._x("DELETE FROM sessions WHERE expires_unix_ms < ?", (now,))
        self._x("INSERT INTO sessions(token_sha256, username, csrf, created_unix_ms, expires_unix_ms) "
                "VALUES (?,?,?,?,?)", (_sha(token), username, csrf, now, now + ttl_ms))
        return token, csrf

    def session(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        rows = self._q("SELECT s.username, s.csrf, s.expires_unix_ms, u.role, u.disabled FROM sessions s "
                       "JOIN users u ON u.username = s.username WHERE s.token_sha256=?", (_sha(token),))
        if not rows or rows[0]["expires_unix_ms"] < now_ms() or rows[0]["disabled"]:
            return None
        r = rows[0]
        return Session(r["username"], r["role"], r["csrf"], r["expires_unix_ms"], _sha(token))

    def end_session(self, token: str | None) -> None:
        if token:
            self._x("DELETE FROM sessions WHERE token_sha256=?", (_sha(token),))

    # -- workflow ---------------------------------------------------------------------

    def workflow(self, alarm_id: str) -> Workflow:
        rows = self._q("SELECT * FROM workflow WHERE alarm_id=?", (alarm_id,))
        if not rows:
            return Workflow(alarm_id, "new")
        return _workflow(rows[0])

    def workflows(self) -> dict[str, Workflow]:
        return {r["alarm_id"]: _workflow(r) for r in self._q("SELECT * FROM workflow")}

    def claim(self, alarm_id: str, owner: str, *, take_over: bool = False) -> Workflow:
        """New -> claimed(owner). A claimed alarm moves to another owner only with ``take_over``."""
        with self._lock:
            current = self.workflow(alarm_id)
            if current.state == "closed":
                raise WorkflowError(f"alarm {alarm_id} is closed")
            if current.state == "claimed" and current.owner != owner and not take_over:
                raise WorkflowError(f"alarm {alarm_id} is claimed by {current.owner}")
            self._x("INSERT INTO workflow(alarm_id, state, owner, claimed_unix_ms) VALUES (?, 'claimed', ?, ?) "
                    "ON CONFLICT(alarm_id) DO UPDATE SET state='claimed', owner=excluded.owner, "
                    "claimed_unix_ms=excluded.claimed_unix_ms", (alarm_id, owner, now_ms()))
            return self.workflow(alarm_id)

    def close_alarm(self, alarm_id: str, user: str, verdict: str, reason_code: str, note: str, *,
              supervisor: bool = False) -> Workflow:
        """Claimed(owner) -> closed(verdict). Only the owner (or a supervisor) closes."""
        if verdict not in VERDICTS:
            raise WorkflowError(f"verdict must be one of {', '.join(VERDICTS)}")
        if reason_code not in REASON_CODES[verdict]:
            raise WorkflowError(f"reason code for a {verdict} alarm must be one of "
                                f"{', '.join(REASON_CODES[verdict])}")
        if len(note) > 2000:
            raise WorkflowError("note longer than 2000 characters")
        with self._lock:
            current = self.workflow(alarm_id)
            if current.state != "claimed":
                raise WorkflowError(f"alarm {alarm_id} must be claimed before it is closed (it is {current.state})")
            if current.owner != user and not supervisor:
                raise WorkflowError(f"alarm {alarm_id} is claimed by {current.owner}")
            self._x("UPDATE workflow SET state='closed', closed_unix_ms=?, closed_by=?, verdict=?, reason_code=?, "
                    "note=? WHERE alarm_id=?", (now_ms(), user, verdict, reason_code, note, alarm_id))
            return self.workflow(alarm_id)

    # -- disclosure (four eyes) ---------------------------------------------------------

    def request_full(self, alarm_id: str, user: str, reason: str) -> int:
        with self._lock:
            rows = self._q("INSERT INTO disclosures(alarm_id, layer, requested_by, reason, requested_unix_ms, state) "
                           "VALUES (?, 'full', ?, ?, ?, 'pending') RETURNING id", (alarm_id, user, reason, now_ms()))
            return int(rows[0][0])

    def disclosures(self, *, state: str | None = None, alarm_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM disclosures WHERE 1=1", []
        if state:
            sql += " AND state=?"
            args.append(state)
        if alarm_id:
            sql += " AND alarm_id=?"
            args.append(alarm_id)
        return [dict(r) for r in self._q(sql + " ORDER BY id", tuple(args))]

    def decide(self, request_id: int, supervisor: str, approve: bool, reason: str) -> dict[str, Any]:
        with self._lock:
            rows = self._q("SELECT * FROM disclosures WHERE id=?", (request_id,))
            if not rows or rows[0]["state"] != "pending":
                raise WorkflowError(f"no pending request {request_id}")
            if rows[0]["requested_by"] == supervisor:
                raise WorkflowError("four eyes: a request is decided by another person than its requester")
            self._x("UPDATE disclosures SET state=?, decided_by=?, decision_reason=?, decided_unix_ms=? WHERE id=?",
                    ("approved" if approve else "refused", supervisor, reason, now_ms(), request_id))
            return dict(self._q("SELECT * FROM disclosures WHERE id=?", (request_id,))[0])

    def disclosure(self, request_id: int) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM disclosures WHERE id=?", (request_id,))
        return dict(rows[0]) if rows else None

    def approved_full(self, alarm_id: str, user: str) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM disclosures WHERE alarm_id=? AND requested_by=? AND state='approved' "
                       "ORDER BY id DESC LIMIT 1", (alarm_id, user))
        return dict(rows[0]) if rows else None

    # -- evidence-key custody (custody.py) -----------------------------------------------

    def put_wrap(self, wrap: EvidenceWrap) -> None:
        """Stores (or replaces) a supervisor's wrap of the evidence key."""
        user = self.user(wrap.username)
        if user is None or user.role != "supervisor":
            raise InputError(f"{wrap.username!r} is not a supervisor account: only supervisors approve the full "
                             "video (fix: 'appliance station console user list')")
        self._x("INSERT INTO evidence_wraps(username, fingerprint, kem, wrap_json, created_unix_ms, created_by) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(username) DO UPDATE SET fingerprint=excluded.fingerprint, "
                "kem=excluded.kem, wrap_json=excluded.wrap_json, created_unix_ms=excluded.created_unix_ms, "
                "created_by=excluded.created_by",
                (wrap.username, wrap.fingerprint, wrap.kem, wrap.blob, wrap.created_unix_ms or now_ms(),
                 wrap.created_by))

    def wrap(self, username: str) -> EvidenceWrap | None:
        rows = self._q("SELECT * FROM evidence_wraps WHERE username=?", (username,))
        return _wrap(rows[0]) if rows else None

    def wraps(self) -> list[EvidenceWrap]:
        return [_wrap(r) for r in self._q("SELECT * FROM evidence_wraps ORDER BY username")]

    def delete_wrap(self, username: str) -> bool:
        return bool(self._x("DELETE FROM evidence_wraps WHERE username=?", (username,)))

    def change_password(self, username: str, password_hash: str, wrap: EvidenceWrap | None) -> None:
        """A new password hash, and the user's evidence-key wrap re-made under the new password
        (``wrap``) or dropped (``None``: e.g. an administrator's reset, who cannot unwrap), together."""
        with self._lock:
            self.set_password(username, password_hash)
            if wrap is not None:
                self.put_wrap(wrap)
            else:
                self.delete_wrap(username)

    # -- console alarms (stale devices, tampered cameras) ----------------------------------

    def add_console_alarm(self, kind: str, device_id: str, body: dict[str, Any]) -> str:
        created = now_ms()
        alarm_id = f"{CONSOLE_ALARM_PREFIX[kind]}:{device_id}:{created}"
        self._x("INSERT INTO console_alarms(alarm_id, kind, device_id, created_unix_ms, body_json) VALUES (?,?,?,?,?)",
                (alarm_id, kind, device_id, created, json.dumps(body, sort_keys=True)))
        return alarm_id

    def console_alarms(self) -> list[dict[str, Any]]:
        return [dict(r, body=json.loads(r["body_json"])) for r in
                self._q("SELECT * FROM console_alarms ORDER BY created_unix_ms")]

    # -- statistics (the officer's page, the training export) ------------------------------

    def verdict_stats(self) -> dict[str, Any]:
        rows = self._q("SELECT verdict, reason_code, COUNT(*) AS n FROM workflow WHERE state='closed' "
                       "GROUP BY verdict, reason_code")
        by_verdict: dict[str, int] = {}
        for r in rows:
            by_verdict[r["verdict"]] = by_verdict.get(r["verdict"], 0) + r["n"]
        open_counts = {r["state"]: r["n"] for r in self._q("SELECT state, COUNT(*) AS n FROM workflow GROUP BY state")}
        return {"by_verdict": by_verdict,
                "by_reason": [{"verdict": r["verdict"], "reason_code": r["reason_code"], "n": r["n"]} for r in rows],
                "states": open_counts,
                "disclosures": {r["state"]: r["n"] for r in
                                self._q("SELECT state, COUNT(*) AS n FROM disclosures GROUP BY state")}}

    def closed_since(self, since_unix_ms: int) -> list[Workflow]:
        return [_workflow(r) for r in self._q("SELECT * FROM workflow WHERE state='closed' AND closed_unix_ms >= ? "
                                              "ORDER BY closed_unix_ms", (since_unix_ms,))]


class WorkflowError(InputError):
    """A workflow step that the alarm's state or the user's role does not allow."""


def _workflow(r: Any) -> Workflow:
    return Workflow(r["alarm_id"], r["state"], r["owner"], r["claimed_unix_ms"], r["closed_unix_ms"],
                    r["closed_by"], r["verdict"], r["reason_code"], r["note"])


def _wrap(r: Any) -> EvidenceWrap:
    return EvidenceWrap(r["username"], r["fingerprint"], r["kem"], r["wrap_json"], r["created_unix_ms"],
                        r["created_by"])


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
