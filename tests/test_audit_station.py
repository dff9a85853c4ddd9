"""The whole anchoring path: the device's checkpoints go into the station's store (as the
heartbeat handler stores them), and the officer verifies the box's log against them with the
device key the station registered — catching a truncated tail."""

from __future__ import annotations

import json

import zmq
import zmq.utils.z85  # registry.py uses zmq.utils.z85 without importing it (reported)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.cli import main
from appliance.contracts.audit.log import AuditLog
from appliance.station.registry import DeviceRegistry
from appliance.station.store import ClipStore

DEVICE = "cam-paradeplatz-03"


def test_verify_against_the_station_store(tmp_path, capsys):
    key = Ed25519PrivateKey.generate()
    station = tmp_path / "station"
    store = ClipStore(station)
    registry = DeviceRegistry(station)
    registry.add_device(DEVICE, key.public_key(), zmq.curve_keypair()[0])
    registry.close()

    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(log_path, signer=key, device=DEVICE, checkpoint_every=10)
    sent = -1
    for beat in range(3):                              # three heartbeats' worth of records
        for i in range(25):
            log.append("spool.insert", device_id=DEVICE, sequence=beat * 25 + i, bytes=1000)
        batch = log.checkpoints_since(sent, limit=100)
        assert store.add_checkpoints(DEVICE, batch) == len(batch)
        sent = batch[-1]["n"]
    log.close()
    store.close()

    assert main(["audit", "verify", str(log_path), "--station", str(station), "--device", DEVICE]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "station checkpoints matched" in out

    assert main(["audit", "checkpoints", "--station", str(station), "--device", DEVICE]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [c["n"] for c in exported] == list(range(len(exported)))

    rows = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(b"".join(rows[:40]))          # someone cuts the box's log
    assert main(["audit", "verify", str(log_path), "--station", str(station), "--device", DEVICE]) == 1
    out = capsys.readouterr().out
    assert "line 41 (seq 40): truncated tail: the station holds checkpoint #" in out
