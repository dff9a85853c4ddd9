"""Systemd integration for the appliance's long-running processes (pixel daemon, uplink).

One small object, :class:`ServiceNotifier`, speaks the sd_notify protocol through
``systemd.daemon.notify`` (systemd-python): ``READY=1`` once the pipeline runs, ``STATUS=``
lines for ``systemctl status`` (fps, persons, spool depth), ``WATCHDOG=1`` at half the
interval systemd asked for in ``WATCHDOG_USEC``, and ``STOPPING=1`` on shutdown. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op, so the same code runs from a
terminal.

Why the watchdog is pinged from the pipeline and not from a free-running timer: the point of
``WatchdogSec=`` is that systemd restarts a *hung* process. A timer thread would keep pinging
while the analysis loop is stuck. :meth:`ServiceNotifier.ping` is therefore meant to be called
from the loop that does the work (it rate-limits itself), or from :meth:`run_watchdog` with a
liveness predicate that the loop keeps true.

Usage (runtime.py)::

    notifier = ServiceNotifier()
    configure_logging("appliance-pixel")
    stop = install_signal_handlers()
    ...load model, open camera...
    notifier.ready("analysing")
    while not stop.is_set():
        ...one frame...
        notifier.ping()                       # sends WATCHDOG=1 only when due
        notifier.health(fps=9.8, persons=2, spool_depth=0)   # rate-limited STATUS=
    notifier.stopping("sealing pending clips")
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: STATUS= updates are rate-limited to this period: systemd keeps only the last one anyway.
STATUS_MIN_PERIOD_S = 1.0


def _default_notify(message: str) -> bool:
    from systemd import daemon  # type: ignore[attr-defined]  # lazily: only notify needs libsystemd

    return bool(daemon.notify(message))


def watchdog_interval_from_env(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings systemd asked for (half of ``WATCHDOG_USEC``), or None.

    Follows sd_watchdog_enabled(3): when ``WATCHDOG_PID`` is set, the watchdog is meant only
    for that process (a child started by the daemon must not ping on its behalf).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return value / 1e6 / 2.0


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when started by systemd as a service (its stdout/stderr go to the journal)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class ServiceNotifier:
    """Tells systemd how the service is doing; a no-op when not started by systemd.

    ``environ``, ``clock`` and ``notify`` exist for tests; production code uses the defaults.
    Thread-safe: the pipeline and a status thread may call it concurrently.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 notify: Callable[[str], bool] | None = None):
        env = dict(os.environ if environ is None else environ)
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_interval_s = watchdog_interval_from_env(env) if self.enabled else None
        self._clock = clock
        self._notify = notify or _default_notify
        self._lock = threading.Lock()
        self._last_ping = float("-inf")
        self._last_status_t = float("-inf")
        self._last_status = ""
        self.last_status = ""  # what STATUS= said last, also kept when not under systemd

    # -- the protocol ------------------------------------------------------------------

    def _send(self, message: str) -> bool:
        if not self.enabled:
            return False
        try:
            return self._notify(message)
        except OSError as exc:  # a vanished socket must never kill the daemon
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (plus an optional STATUS=): the unit becomes 'active' (Type=notify)."""
        msg = "READY=1"
        if status:
            msg += "\nSTATUS=" + _one_line(status)
            self.last_status = _one_line(status)
        sent = self._send(msg)
        self.ping(force=True)
        return sent

    def status(self, text: str) -> bool:
        """STATUS=text, shown by ``systemctl status``; sent at once (not rate-limited)."""
        text = _one_line(text)
        with self._lock:
            self.last_status = text
            self._last_status = text
            self._last_status_t = self._clock()
        return self._send("STATUS=" + text)

    def health(self, *, fps: float | None = None, persons: int | None = None,
               spool_depth: int | None = None, camera: str | None = None,
               station: str | None = None, force: bool = False) -> bool:
        """A STATUS= line from the figures that matter on site, at most once a second."""
        parts = []
        if camera is not None:
            parts.append(f"camera {camera}")
        if fps is not None:
            parts.append(f"{fps:.1f} fps")
        if persons is not None:
            parts.append(f"{persons} persons")
        if spool_depth is not None:
            parts.append(f"spool {spool_depth}")
        if station is not None:
            parts.append(f"station {station}")
        text = ", ".join(parts) or "running"
        with self._lock:
            now = self._clock()
            due = force or (now - self._last_status_t >= STATUS_MIN_PERIOD_S and text != self._last_status)
            if not due:
                self.last_status = text
                return False
        return self.status(text)

    def watchdog_due(self) -> bool:
        """True when a WATCHDOG=1 ping is due (half the systemd interval has passed)."""
        if self.watchdog_interval_s is None:
            return False
        with self._lock:
            return self._clock() - self._last_ping >= self.watchdog_interval_s

    def ping(self, force: bool = False) -> bool:
        """Sends WATCHDOG=1 if due (or ``force``); returns whether a ping was sent."""
        if self.watchdog_interval_s is None:
            return False
        with self._lock:
            now = self._clock()
            if not force and now - self._last_ping < self.watchdog_interval_s:
                return False
            self._last_ping = now
        return self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: asks for more start/stop time (e.g. a slow model load)."""
        return self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun (systemd stops expecting watchdog pings)."""
        msg = "STOPPING=1"
        if status:
            msg += "\nSTATUS=" + _one_line(status)
            self.last_status = _one_line(status)
        return self._send(msg)

    def run_watchdog(self, alive: Callable[[], bool], stop: threading.Event) -> threading.Thread:
        """Starts a daemon thread that pings while ``alive()`` is true, until ``stop`` is set.

        For loops that may legitimately block longer than the watchdog interval (camera
        reconnect back-off): ``alive`` should check that the loop made progress recently,
        so a truly hung loop still stops the pings and systemd restarts the service.
        """
        period = (self.watchdog_interval_s or 1.0) / 2.0

        def loop() -> None:
            while not stop.wait(period):
                try:
                    ok = alive()
                except Exception:  # a broken predicate means "not alive"
                    log.exception("watchdog liveness check failed")
                    ok = False
                if ok:
                    self.ping()

        thread = threading.Thread(target=loop, name="watchdog", daemon=True)
        thread.start()
        return thread


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def configure_logging(name: str, level: int = logging.INFO,
                      environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Routes the root logger to the journal under systemd, else to stderr; returns the handler.

    Under systemd, records go through ``systemd.journal.JournalHandler`` so that the level
    becomes the journal PRIORITY and the logger name, thread and code location become fields
    (``journalctl -u appliance-pixel -p warning``). Replaces handlers set up earlier (the
    CLI's basicConfig) so that nothing is logged twice.
    """
    root = logging.getLogger()
    handler: logging.Handler
    if under_systemd(environ):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=name)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def install_signal_handlers(stop: threading.Event | None = None,
                            signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> threading.Event:
    """Makes SIGTERM (and Ctrl-C) set a :class:`threading.Event` that the pipeline polls.

    The handler only sets the event: the pipeline decides what a clean stop means (stop
    capture, finish sealing triggered clips, drop every other pixel, exit 0). A second
    signal while stopping is ignored; systemd's TimeoutStopSec= then SIGKILL bounds it.
    Must be called from the main thread (a Python rule for signal handlers).
    """
    event = stop if stop is not None else threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not event.is_set():
            log.info("received %s, stopping", signal.Signals(signum).name)
        event.set()

    for sig in signals:
        signal.signal(sig, handler)
    return event
