"""appliance.common.service: sd_notify over a real (fake-systemd) NOTIFY_SOCKET, watchdog, signals, logging."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from appliance.common.service import (
    ServiceNotifier,
    configure_logging,
    install_signal_handlers,
    under_systemd,
    watchdog_interval_from_env,
)
from tests.conftest import recv_notifications


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_from_env({}) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "junk"}) is None
    # meant for another process: not ours to ping
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=42) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=42) == 1.0


def test_ready_status_watchdog_reach_the_notify_socket(notify_socket, monkeypatch):
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    clock = FakeClock()
    n = ServiceNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}, clock=clock)
    assert n.watchdog_interval_s == 2.0

    assert n.ready("analysing")
    first = recv_notifications(sock)
    assert first[0] == "READY=1\nSTATUS=analysing"
    assert first[1:] == ["WATCHDOG=1"]  # the first ping goes out with READY

    # not due before half the interval, due after it; one ping per interval
    clock.t += 1.0
    assert not n.watchdog_due() and not n.ping()
    clock.t += 1.0
    assert n.watchdog_due() and n.ping()
    assert not n.ping()
    assert recv_notifications(sock) == ["WATCHDOG=1"]

    # health lines are rate-limited to one a second
    assert n.health(fps=9.84, persons=2, spool_depth=3)
    assert not n.health(fps=9.5, persons=2, spool_depth=3)
    clock.t += 1.5
    assert n.health(fps=9.5, persons=1, spool_depth=0, camera="ok", station="down")
    assert recv_notifications(sock) == ["STATUS=9.8 fps, 2 persons, spool 3",
                              "STATUS=camera ok, 9.5 fps, 1 persons, spool 0, station down"]
    assert n.stopping("sealing 1 pending clip")
    assert recv_notifications(sock) == ["STOPPING=1\nSTATUS=sealing 1 pending clip"]


def test_no_notify_socket_means_silent_noops(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = ServiceNotifier({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_interval_s is None
    assert not n.ready("x") and not n.ping(force=True) and not n.watchdog_due()
    assert not n.status("running") and n.last_status == "running"


def test_run_watchdog_stops_pinging_when_the_loop_is_not_alive(notify_socket, monkeypatch):
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = ServiceNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})  # ping every 20 ms
    alive = threading.Event()
    alive.set()
    stop = threading.Event()
    thread = n.run_watchdog(alive.is_set, stop)
    sock.settimeout(5.0)
    assert sock.recv(64) == b"WATCHDOG=1"
    alive.clear()
    # drain what was in flight, then nothing more may arrive while "hung"
    recv_notifications(sock, timeout=0.2)
    assert recv_notifications(sock, timeout=0.3) == []
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_daemon_process_readiness_pings_and_sigterm(notify_socket):
    """A real child process: READY, watchdog pings from its loop, SIGTERM → STOPPING, exit 0."""
    sock, path = notify_socket
    child = textwrap.dedent("""
        import sys, time
        from appliance.common.service import ServiceNotifier, install_signal_handlers, configure_logging
        configure_logging("test-daemon")
        stop = install_signal_handlers()
        n = ServiceNotifier()
        n.ready("analysing")
        for _ in range(3000):          # bounded: at most ~30 s
            if stop.wait(0.01):
                break
            n.ping()
        n.stopping("stopped by signal")
        sys.exit(0 if stop.is_set() else 5)
    """)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="100000")  # ping every 50 ms
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-c", child], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sock.settimeout(20.0)
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=analysing"
        pings = 0
        for _ in range(10):
            msg = sock.recv(4096).decode()
            assert msg == "WATCHDOG=1"
            pings += 1
            if pings == 4:
                break
        assert pings == 4
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    rest = recv_notifications(sock, timeout=0.5)
    assert rest[-1] == "STOPPING=1\nSTATUS=stopped by signal"
    assert set(rest[:-1]) <= {"WATCHDOG=1"}
    assert b"received SIGTERM, stopping" in err  # stderr logging outside systemd


def test_install_signal_handlers_sets_the_event():
    old = signal.getsignal(signal.SIGUSR1)
    try:
        stop = install_signal_handlers(signals=(signal.SIGUSR1,))
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(5)
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_logging_goes_to_journal_under_systemd_else_stderr():
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert under_systemd({"INVOCATION_ID": "abc"}) and under_systemd({"JOURNAL_STREAM": "8:1"})
        assert not under_systemd({})
        h = configure_logging("appliance-pixel", environ={"INVOCATION_ID": "abc"})
        from systemd.journal import JournalHandler
        assert isinstance(h, JournalHandler) and root.handlers == [h]
        h2 = configure_logging("appliance-pixel", environ={})
        assert isinstance(h2, logging.StreamHandler) and not isinstance(h2, JournalHandler)
        assert root.handlers == [h2]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_vanished_notify_socket_does_not_raise(monkeypatch, tmp_path: Path):
    gone = str(tmp_path / "nothing-here")
    monkeypatch.setenv("NOTIFY_SOCKET", gone)
    n = ServiceNotifier({"NOTIFY_SOCKET": gone, "WATCHDOG_USEC": "1000000"})
    assert n.ping(force=True) is False
