"""Accounts: argon2id password hashes, login rate limit and lock-out, roles and what they may do."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.common.errors import InputError
from appliance.station.console.store import ConsoleStore, now_ms

#: What each role may do. Separation of duties: the administrator manages accounts but sees no
#: alarm; the data protection officer sees statistics and the audit trail but never an alarm's
#: content; only a supervisor approves the full video, and never their own request.
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": frozenset({"monitor", "alarm.view", "alarm.claim", "alarm.close", "video.blurred",
                           "video.full.request", "video.full.view", "devices"}),
    "supervisor": frozenset({"monitor", "alarm.view", "alarm.claim", "alarm.close", "alarm.take_over",
                             "video.blurred", "video.full.request", "video.full.view", "video.full.approve",
                             "devices"}),
    "dpo": frozenset({"dpo"}),
    "admin": frozenset({"users", "devices"}),
}
HOME = {"operator": "/", "supervisor": "/", "dpo": "/dpo", "admin": "/admin/users"}
MIN_PASSWORD_CHARS = 12

_hasher = PasswordHasher()   # argon2id, the library's RFC 9106 "low memory" defaults
#: Each verification takes 64 MiB and most of a core for tens of ms: a burst of logins (a shift
#: change, or an attacker) must queue, not take the machine's memory and the live alarms' CPU.
_VERIFY_SLOTS = threading.BoundedSemaphore(2)
_DUMMY_HASH = _hasher.hash("not a real password, used to equalise timing")


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise InputError(f"password too short: at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    username: str
    role: str = ""
    why: str = ""            # for the audit record, never shown in detail to the browser


class LoginGuard:
    """Password check with two brakes: at most ``per_client`` attempts per client address per
    ``window_s`` (any user name), and an account lock-out for ``lock_s`` after ``lock_after``
    consecutive failures (kept in the database, so a restart does not reset it)."""

    def __init__(self, store: ConsoleStore, *, per_client: int = 10, window_s: float = 60.0,
                 lock_after: int = 5, lock_s: float = 300.0):
        self.store = store
        self.per_client, self.window_s = per_client, window_s
        self.lock_after, self.lock_ms = lock_after, int(lock_s * 1000)
        self._attempts: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _rate_limited(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._attempts) > 10_000:   # bounded memory under a spray of addresses
                self._attempts.clear()
            q = self._attempts.setdefault(client, collections.deque())
            while q and now - q[0] > self.window_s:
                q.popleft()
            if len(q) >= self.per_client:
                return True
            q.append(now)
            return False

    def login(self, username: str, password: str, client: str) -> LoginResult:
        if self._rate_limited(client):
            return LoginResult(False, username, why="rate_limited")
        result = self.reauthenticate(username, password)
        if result.ok:
            user = self.store.user(username)
            if user is not None and _hasher.check_needs_rehash(user.password_hash):
                self.store.set_password(username, _hasher.hash(password))
        return result

    def reauthenticate(self, username: str, password: str) -> LoginResult:
        """The password check (lock-out counted), also for a logged-in user confirming a grave step
        (approving the full video): that form is no way around the login's brakes."""
        user = self.store.user(username)
        if user is None:
            _verify(_DUMMY_HASH, password)
            return LoginResult(False, username, why="unknown_user")
        if user.disabled:
            return LoginResult(False, username, why="disabled")
        if user.locked_until_ms > now_ms():
            return LoginResult(False, username, why="locked")
        if not _verify(user.password_hash, password):
            n = self.store.record_login_failure(username, lock_after=self.lock_after, lock_ms=self.lock_ms)
            return LoginResult(False, username, why="locked_now" if n >= self.lock_after else "bad_password")
        self.store.record_login_success(username)
        return LoginResult(True, username, user.role)


def _verify(password_hash: str, password: str) -> bool:
    with _VERIFY_SLOTS:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
