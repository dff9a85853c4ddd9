"""The station's own units: `station serve` speaks sd_notify (READY, WATCHDOG, STATUS, STOPPING)
over a fake NOTIFY_SOCKET, and the receiver's and the watch's ExecStart are real commands of
this checkout that behave as the unit comments say (watch: exit 3 and the device ids on stderr).
Static checks, verify and exposure: tests/test_systemd_units.py; syscall filters:
tests/test_systemd_sandbox.py."""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from appliance.cli import build_parser
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths, generate_station_keys
from appliance.station.server import StationServer
from appliance.station.store import ClipStore
from tests.conftest import recv_notifications
from tests.systemd_util import INSTALLED_EXEC, LOCAL_EXEC, REPO, SYSTEMD_DIR, unit_settings

SERVE = SYSTEMD_DIR / "appliance-station.service"
WATCH = SYSTEMD_DIR / "appliance-station-watch.service"
STATION_DIR = "/var/lib/appliance-station"


def make_station(station_dir: Path, devices: tuple[str, ...] = ("box-a",)) -> dict:
    """Station keys (X25519 for speed) and enrolled devices; returns {device_id: key files}."""
    generate_station_keys(station_dir, kem="X25519")
    keys = {}
    for name in devices:
        keys[name] = create_device_keys(station_dir.parent / f"{name}-keys", name)
        enrol_device(station_dir, keys[name])
    ClipStore(station_dir).close()
    # Enrolled two days ago: past the grace in which a never-seen device is "not yet seen".
    conn = sqlite3.connect(station_dir / "station.db")
    conn.execute("UPDATE devices SET added_unix_ms = added_unix_ms - 2 * 86400 * 1000")
    conn.commit()
    conn.close()
    return keys


def probe_station(station_dir: Path, keys, endpoint: str):
    """A signed probe from an enrolled device over CURVE, as `provision check` sends it."""
    from appliance.box.uplink.client import ClientConfig, UplinkClient, probe
    from appliance.contracts.curve import load_curve_public
    from appliance.contracts.keys import load_signing_public_key

    paths = StationKeyPaths.of(station_dir)
    public, secret = keys.curve_keypair()
    client = UplinkClient(ClientConfig(
        endpoint=endpoint, curve_public=public, curve_secret=secret,
        station_curve_public=load_curve_public(paths.curve_public),
        station_signing_public=load_signing_public_key(paths.signing_public), ack_timeout_s=10.0))
    try:
        return probe(client, keys.device_id, keys.signing_key())
    finally:
        client.close()


def unit_argv(unit: Path, station_dir: Path) -> list[str]:
    """The unit's ExecStart as argv for this checkout, with the station directory replaced."""
    argv = shlex.split(unit_settings(unit)["ExecStart"][0])
    assert argv[0] == INSTALLED_EXEC
    args = argv[1:]
    args[args.index("--station-dir") + 1] = str(station_dir)
    build_parser().parse_args(args)  # a real command of this CLI
    return args


def test_serve_unit_exec_start_notifies_pings_answers_and_stops(tmp_path, notify_socket):
    """The unit's own command line (bind moved to 127.0.0.1) under a fake systemd: READY=1 with
    the endpoint, WATCHDOG=1 from the loop, a probe answered, SIGTERM → STOPPING=1 and exit 0."""
    sock, path = notify_socket
    station = tmp_path / "station"
    keys = make_station(station)
    StationKeyPaths.of(station).hpke_private.unlink()   # hidden by the unit: serving never needs it
    args = unit_argv(SERVE, station) + ["--bind", "tcp://127.0.0.1:*"]
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")  # ping every 200 ms
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([LOCAL_EXEC, *args], env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    try:
        sock.settimeout(60.0)
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=listening on tcp://127.0.0.1:"), ready
        endpoint = ready.split("listening on ", 1)[1].strip()
        sock.settimeout(10.0)
        assert sock.recv(4096) == b"WATCHDOG=1"       # the first ping goes out with READY
        assert sock.recv(4096) == b"WATCHDOG=1"       # and then from the loop
        reply = probe_station(station, keys["box-a"], endpoint)
        assert reply.ok and reply.status == "probe-ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = recv_notifications(sock, timeout=0.3)
    assert rest[-1] == "STOPPING=1\nSTATUS=station stopping", rest
    assert set(rest[:-1]) <= {"WATCHDOG=1"}, rest
    text = log.read_text()
    assert "appliance-station INFO appliance.station: station listening on" in text  # stderr outside systemd
    # the station's audit log (on by default in the unit) recorded the probe
    assert '"kind":"station.probe"' in (station / "audit.jsonl").read_text()


class FakeNotifier:
    def __init__(self):
        self.calls = []

    def ready(self, status=None):
        self.calls.append(("ready", status))

    def ping(self, force=False):
        self.calls.append(("ping",))

    def status(self, text):
        self.calls.append(("status", text))

    def stopping(self, status=None):
        self.calls.append(("stopping", status))


def test_server_status_line_and_notifier_calls(tmp_path, monkeypatch):
    import threading

    from appliance.station import server as server_mod

    monkeypatch.setattr(server_mod, "STATUS_PERIOD_S", 0.0)
    station = tmp_path / "station"
    keys = make_station(station)
    notifier = FakeNotifier()
    server = StationServer(station, "tcp://127.0.0.1:*", notifier=notifier)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(30)
        assert probe_station(station, keys["box-a"], server.endpoint).ok
        deadline = time.monotonic() + 10
        while not any(c[0] == "status" and "probe 1" in c[1] for c in notifier.calls):
            assert time.monotonic() < deadline, notifier.calls[-5:]
            time.sleep(0.05)
    finally:
        server.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert notifier.calls[0] == ("ready", f"listening on {server.endpoint}")
    assert ("ping",) in notifier.calls and notifier.calls[-1] == ("stopping", "station stopping")
    assert server.status_line() == (f"listening on {server.endpoint}; alarms 0, stored 0, duplicate 0, "
                                    "heartbeat 0, probe 1, rejected 0")
    statuses = [c[1] for c in notifier.calls if c[0] == "status"]
    assert len(statuses) == len(set(statuses))   # only sent when the counts changed


def test_watch_unit_exec_start_exits_3_with_the_device_ids_then_0(tmp_path):
    station = tmp_path / "station"
    make_station(station, devices=("box-entrance", "box-yard"))
    args = unit_argv(WATCH, station)
    assert args[args.index("--stale-after") + 1] == "120"
    proc = subprocess.run([LOCAL_EXEC, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr          # never heard from: stale
    assert proc.stderr.strip().splitlines()[-1] == (
        "stale: 2 enabled device(s) silent for more than 120 s: box-entrance, box-yard")
    assert "box-entrance" in proc.stdout and "STALE" in proc.stdout
    store = ClipStore(station)
    try:
        for device in ("box-entrance", "box-yard"):
            store.record_seen(device, "heartbeat", {})
    finally:
        store.close()
    proc = subprocess.run([LOCAL_EXEC, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "stale" not in proc.stderr
    # the unit's serve default binds every address; the watch and serve share the station dir
    assert unit_settings(SERVE)["ExecStart"][0].endswith(f"station serve --station-dir {STATION_DIR}")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
                    reason="needs root and unshare for a private read-only bind mount")
def test_watch_needs_a_writable_station_dir(tmp_path):
    """Why the watch unit has ReadWritePaths= for a read-only job: on a read-only mount of the
    station directory (ReadOnlyPaths=), SQLite cannot create station.db-shm and the command
    fails instead of reporting the stale device. Emulated with a private mount namespace."""
    station = tmp_path / "station"
    make_station(station, devices=("box-yard",))
    args = unit_argv(WATCH, station)
    script = (f'mount --bind -o ro "$0" "$0" && exec {shlex.join([LOCAL_EXEC, *args])}')
    ro = subprocess.run(["unshare", "-m", "/bin/sh", "-c", script, str(station)],
                        capture_output=True, text=True, timeout=120, check=False)
    if "mount:" in ro.stderr and ro.returncode != 0 and "database" not in ro.stderr:
        pytest.skip(f"cannot bind-mount here: {ro.stderr.strip()}")
    assert ro.returncode not in (0, 3) and "unable to open database file" in ro.stderr, ro.stderr
    rw = subprocess.run([LOCAL_EXEC, *args], capture_output=True, text=True, timeout=120, check=False)
    assert rw.returncode == 3 and "box-yard" in rw.stderr, rw.stderr
