"""Two `appliance station serve` processes on one PostgreSQL database and one S3 bucket, the
same keys; a device with both in [station] endpoints. One receiver is killed (SIGKILL) while
the uplink empties its spool: every clip is stored exactly once and the spool empties."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance.box.seal import seal_clip
from appliance.box.spool import Spool
from appliance.box.uplink.client import ClientConfig, Uplink, UplinkClient
from appliance.cli import main
from appliance.contracts.curve import load_curve_public
from appliance.contracts.keys import load_hpke_public_key, load_signing_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths
from appliance.station.storage import write_storage_file
from appliance.station.store import ClipStore

ROOT = Path(__file__).resolve().parent.parent


def start_receiver(station_dir: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    ready = station_dir / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "station", "serve", "--dir", str(station_dir),
                             "--bind", "tcp://127.0.0.1:*", "--ready-file", str(ready), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(station_dir / "serve.log", "wb"))
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"receiver did not start: {(station_dir / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, ready.read_text().strip()


@pytest.mark.servers
def test_kill_one_of_two_receivers_mid_load_no_clip_lost_or_duplicated(scale_storage, tmp_path, capsys):
    a, b = tmp_path / "receiver-a", tmp_path / "receiver-b"
    assert main(["station", "keygen", "--dir", str(a)]) == 0
    write_storage_file(a, scale_storage)            # receiver A: chosen by <dir>/storage.toml
    keys = create_device_keys(tmp_path / "dev", "dev-a")
    enrol_device(a, keys)                           # into the shared database
    shutil.copytree(a, b, ignore=shutil.ignore_patterns("audit.jsonl*", "storage.toml", "ready"))
    env = dict(os.environ)   # with the S3 credentials the fixture set
    env.pop("APPLIANCE_STATION_DB", None)
    proc_a, endpoint_a = start_receiver(a, env)
    proc_b, endpoint_b = start_receiver(b, env, "--db", scale_storage.db, "--store", scale_storage.store)
    paths = StationKeyPaths.of(a)
    clip = synthetic_clip(frames=4, width=64, height=48)
    spool = Spool(tmp_path / "spool", 256 * 1024 * 1024)
    count = 40
    for seq in range(1, count + 1):
        spool.put(seal_clip(clip, device_id="dev-a", sequence=seq, signing_key=keys.signing_key(),
                            station_public_key=load_hpke_public_key(paths.hpke_public)),
                  device_id="dev-a", sequence=seq)
    public, secret = keys.curve_keypair()
    client = UplinkClient(ClientConfig(
        endpoint=endpoint_a, endpoints=(endpoint_a, endpoint_b), curve_public=public, curve_secret=secret,
        station_curve_public=load_curve_public(paths.curve_public),
        station_signing_public=load_signing_public_key(paths.signing_public), ack_timeout_s=5.0))
    uplink = Uplink(spool, client, device_id="dev-a", heartbeat_s=3600, retry_initial_s=0.1, retry_max_s=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while uplink.sent < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert uplink.sent >= 10, "the uplink did not get going"
        proc_a.send_signal(signal.SIGKILL)   # mid-load, no goodbye
        proc_a.wait(10)
        while spool.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not spool.pending(), f"spool not emptied after the failover: {len(spool.pending())} left"
        assert client.failovers >= 1 and client.endpoint == endpoint_b
    finally:
        stop.set()
        thread.join(15)
        client.close()
        for proc in (proc_a, proc_b):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
    store = ClipStore(b, settings=scale_storage)
    try:
        clips = store.list_clips("dev-a")
        assert [c.sequence for c in clips] == list(range(1, count + 1))   # none lost, none twice
        assert all(store.read_envelope(c) for c in clips[:3])
    finally:
        store.close()
    # The console, retention and `station list` read the same database from any station directory.
    capsys.readouterr()
    assert main(["station", "list", "--dir", str(a), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == count
