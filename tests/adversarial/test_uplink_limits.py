"""Findings 5, 6 and 12 on the device side (issue 12)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from appliance.box.config import parse_config
from appliance.box.spool import Spool
from appliance.box.uplink.client import Uplink
from appliance.contracts import protocol as p
from appliance.contracts.audit.log import AuditLog, NoGenesisYet
from appliance.contracts.audit.verify import verify_log
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.store import ClipStore
from tests.test_spool import Recorder
from tests.test_uplink_station import make_client, running_station, seal_for


def _run_until(uplink: Uplink, done, timeout: float = 30.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "uplink made no progress"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)


def test_an_envelope_larger_than_the_station_accepts_is_quarantined_and_the_rest_flow(world, tmp_path):
    """Before: libzmq dropped the connection for the oversized envelope, the uplink retried it
    forever and every later clip stayed in the spool."""
    station_dir, devices = world
    keys = devices["dev-a"]
    audit = Recorder()
    spool = Spool(tmp_path / "spool", 64 * 1024 * 1024, audit=audit)
    small, big = synthetic_clip(frames=2, width=32, height=24), synthetic_clip(frames=2, video=os.urandom(600_000))
    for clip in (small, big, small):
        seq = spool.next_sequence("dev-a")
        spool.put(seal_for(station_dir, keys, clip, seq), device_id="dev-a", sequence=seq)
    with running_station(station_dir, max_envelope_bytes=200_000) as (server, _audit):
        client = make_client(station_dir, keys, server.endpoint, timeout=2.0)
        uplink = Uplink(spool, client, device_id="dev-a", heartbeat_s=0.5, retry_initial_s=0.05, retry_max_s=0.2,
                        audit=audit)
        try:
            _run_until(uplink, lambda: not spool.pending())
            assert uplink.station_max_envelope_bytes == 200_000
            uplink.send_heartbeat()  # the station sees the quarantined envelope in the health
        finally:
            uplink.close()
    assert [e.sequence for e in spool.quarantined()] == [2] and spool.rejected() == []
    [q] = [f for k, f in audit.records if k == "spool.quarantined"]
    assert q["sequence"] == 2 and q["station_max_envelope_bytes"] == 200_000 and q["bytes"] > 200_000
    assert spool.health().to_json()["spool_quarantined"] == 1
    store = ClipStore(station_dir)
    try:
        assert [c.sequence for c in store.list_clips("dev-a")] == [1, 3]
        assert store.last_seen("dev-a").health["spool_quarantined"] == 1
    finally:
        store.close()


def test_a_lost_sequence_file_is_resynchronised_with_the_station(world, tmp_path):
    """Before: a box whose spool/sequence file was lost restarted at 1 and every new clip was
    refused as old_sequence until the count passed the station's highest."""
    station_dir, devices = world
    keys = devices["dev-a"]
    clip = synthetic_clip(frames=2, width=32, height=24)
    with running_station(station_dir) as (server, _audit):
        client = make_client(station_dir, keys, server.endpoint)
        try:
            for seq in (1, 2, 7):
                assert client.request(p.ENVELOPE, seal_for(station_dir, keys, clip, seq)).ok
        finally:
            client.close()
        audit = Recorder()
        spool = Spool(tmp_path / "new-spool", 64 * 1024 * 1024, audit=audit)  # the old one is gone
        client = make_client(station_dir, keys, server.endpoint)
        uplink = Uplink(spool, client, device_id="dev-a", heartbeat_s=3600, audit=audit)
        try:
            uplink.send_heartbeat()
            seq = spool.next_sequence("dev-a")
            assert seq == 8
            spool.put(seal_for(station_dir, keys, clip, seq), device_id="dev-a", sequence=seq)
            assert uplink.send_entry(spool.pending()[0]) == "stored"
            uplink.send_heartbeat()  # nothing to do a second time
        finally:
            uplink.close()
    assert [f for k, f in audit.records if k == "spool.resync"] == [
        {"device_id": "dev-a", "local_last": 0, "station_highest": 7}]


def test_a_writer_without_the_key_never_becomes_the_genesis(tmp_path):
    """Before: `provision preview` (and the uplink) opened the log without the signing key; the
    first record then named no key and the untouched log verified as TAMPERED ("checkpoint #0
    ... signed by unknown key ... (trusted: none)")."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "audit.jsonl"
    with pytest.raises(NoGenesisYet, match="only the key holder creates it"):
        AuditLog(path, device="dev-a")
    assert not path.exists()
    key = Ed25519PrivateKey.generate()
    holder = AuditLog(path, signer=key, device="dev-a", checkpoint_every=3)
    keyless = AuditLog(path, device="dev-a")          # the uplink, once the log exists
    keyless.append("spool.ack", sequence=1)
    holder.append("trigger.permitted", pattern="strike")
    keyless.close()
    holder.close()
    result = verify_log(path)   # the documented first step: no --key, the genesis names it
    assert result.ok, result.problems


def test_provision_preview_signs_the_genesis_when_it_can_read_the_key(tmp_path):
    from appliance.box.provision.preview import _audit
    from appliance.contracts.keys import generate_signing_key

    generate_signing_key(tmp_path / "signing.key", public_path=tmp_path / "signing.pub")
    cfg = parse_config({"device": {"id": "dev-a", "state_dir": str(tmp_path)}, "camera": {"source": "x.mp4"},
                        "seal": {"signing_key": str(tmp_path / "signing.key")}})
    _audit(cfg, {"out": "preview.png"})
    assert verify_log(tmp_path / "audit.jsonl").ok
    # a technician who cannot read the key: nothing is created (the provision log holds it)
    cfg2 = parse_config({"device": {"id": "dev-b", "state_dir": str(tmp_path / "b")}, "camera": {"source": "x.mp4"}})
    (tmp_path / "b").mkdir()
    _audit(cfg2, {"out": "preview.png"})
    assert not (tmp_path / "b" / "audit.jsonl").exists()


def test_the_uplink_keeps_its_records_until_the_key_holder_created_the_log(tmp_path):
    """The uplink starts before the pixel process: it heartbeats at once, and its audit records
    wait (in order, with their time) instead of it writing a keyless genesis."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.box.uplink.cli import LateAuditLog

    path = tmp_path / "audit.jsonl"
    late = LateAuditLog(lambda: AuditLog(path, device="dev-a"))
    late.append("spool.ack", sequence=1)
    assert late.checkpoints_since(-1) == [] and not path.exists()
    key = Ed25519PrivateKey.generate()
    holder = AuditLog(path, signer=key, device="dev-a")
    late.append("spool.ack", sequence=2)
    late.close()
    holder.close()
    import json

    acks = [json.loads(x)["fields"] for x in path.read_text().splitlines() if '"spool.ack"' in x]
    assert [a["sequence"] for a in acks] == [1, 2] and "happened" in acks[0]
    assert verify_log(path, [key.public_key()]).ok
