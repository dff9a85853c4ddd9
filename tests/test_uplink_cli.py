"""`appliance uplink --config FILE`: the real network process against a real station."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import tomli_w

from appliance.box.seal import seal_clip
from appliance.box.spool import Spool
from appliance.cli import main
from appliance.contracts.audit.log import AuditLog
from appliance.contracts.health import write_signed_health
from appliance.contracts.keys import load_hpke_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths, generate_station_keys
from appliance.station.server import StationServer
from appliance.station.store import ClipStore, checkpoints_for

ROOT = Path(__file__).resolve().parent.parent


def _setup(tmp_path: Path):
    station_dir = tmp_path / "station"
    generate_station_keys(station_dir, kem="X25519")
    keys = create_device_keys(tmp_path / "device" / "keys", "dev-cli")
    enrol_device(station_dir, keys)
    server = StationServer(station_dir, "tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    paths = StationKeyPaths.of(station_dir)
    state = tmp_path / "device"
    config = {
        "device": {"id": "dev-cli", "state_dir": str(state)},
        # As under the uplink's sandbox: the device signing key is not reachable from this process.
        "seal": {"signing_key": str(tmp_path / "pixel-only" / "signing.key"),
                 "station_public_key": str(paths.hpke_public), "kem": "X25519"},
        "spool": {"dir": str(state / "spool"), "max_bytes": 64 * 1024 * 1024},
        "uplink": {"endpoint": server.endpoint, "station_curve_public": str(paths.curve_public),
                   "curve_secret": str(keys.curve_secret), "station_signing_public": str(paths.signing_public),
                   "ack_timeout_s": 2.0, "heartbeat_s": 1.0, "retry_initial_s": 0.1, "retry_max_s": 0.5},
    }
    config_path = tmp_path / "appliance.toml"
    config_path.write_text(tomli_w.dumps(config))
    spool = Spool(state / "spool", 64 * 1024 * 1024)
    clip = synthetic_clip(frames=4)
    for _ in range(3):
        seq = spool.next_sequence("dev-cli")
        spool.put(seal_clip(clip, device_id="dev-cli", sequence=seq, signing_key=keys.signing_key(),
                            station_public_key=load_hpke_public_key(paths.hpke_public)),
                  device_id="dev-cli", sequence=seq)
    return station_dir, server, thread, config_path, spool, keys, state


def test_uplink_once_sends_everything(tmp_path):
    station_dir, server, thread, config_path, spool, keys, state = _setup(tmp_path)
    try:
        # No audit log yet and no key to create one with: the uplink must not become its
        # genesis (a keyless genesis made the log verify as TAMPERED), so it refuses.
        assert main(["uplink", "--config", str(config_path), "--once"]) == 1
        assert not (state / "audit.jsonl").exists() and len(spool.pending()) == 3
        AuditLog(state / "audit.jsonl", signer=keys.signing_key(), device="dev-cli").close()  # the pixel process
        assert main(["uplink", "--config", str(config_path), "--once"]) == 0
    finally:
        server.stop()
        thread.join(10)
    assert spool.pending() == []
    store = ClipStore(station_dir)
    try:
        assert [c.sequence for c in store.list_clips()] == [1, 2, 3]
    finally:
        store.close()


def test_uplink_process_delivers_heartbeats_with_audit_checkpoints(tmp_path):
    station_dir, server, thread, config_path, spool, keys, state = _setup(tmp_path)
    pixel_audit = AuditLog(state / "audit.jsonl", signer=keys.signing_key(), device="dev-cli")
    pixel_audit.append("trigger.permitted", pattern="strike")
    # What the pixel process does; the uplink process cannot (its config has no usable key).
    write_signed_health(state / "spool" / "health.json", {"analysis_fps": 9.8, "last_frame_wall": 1.0},
                        device_id="dev-cli", signing_key=keys.signing_key())
    assert pixel_audit.checkpoint() is not None
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "uplink", "--config", str(config_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while spool.pending() or not checkpoints_for(station_dir, "dev-cli"):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "uplink did not deliver"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pixel_audit.close()
        server.stop()
        thread.join(10)
    received = [c["checkpoint"] for c in checkpoints_for(station_dir, "dev-cli")]
    made = AuditLog(state / "audit.jsonl").checkpoints_since(-1)
    assert received and received == made[:len(received)]  # carried verbatim, in order, once each
    store = ClipStore(station_dir)
    try:
        seen = store.last_seen("dev-cli")
        assert seen.health["spool_depth"] >= 0 and "uptime_s" in seen.health
        assert seen.health["pixel_signed"] and seen.health["pixel"]["analysis_fps"] == 9.8
    finally:
        store.close()
    kinds = [line for line in (state / "audit.jsonl").read_text().splitlines() if '"spool.ack"' in line]
    assert len(kinds) == 3  # the uplink process audited each acknowledged envelope
