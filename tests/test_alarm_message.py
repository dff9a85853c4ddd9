"""The alarm message (docs/alarm-message.md): test vectors, and its path box spool → uplink →
station over real CurveZMQ sockets, where the clip that follows attaches to the same alarm id."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.box.spool import Spool
from appliance.box.uplink.client import Uplink
from appliance.contracts import protocol as p
from appliance.contracts.alarm import (
    AlarmError,
    alarm_id,
    parse_alarm,
    seal_alarm,
    split_alarm_id,
    verify_alarm,
)
from appliance.station.store import ClipStore
from tests.fixtures.alarm import make_vectors
from tests.test_station_storage import tier  # noqa: F401  (fixture: both storage tiers)
from tests.test_uplink_station import clip, make_client, running_station, seal_for, world  # noqa: F401

VECTORS = Path(__file__).parent / "fixtures" / "alarm"


def _index():
    return json.loads((VECTORS / "vectors.json").read_text())


@pytest.mark.parametrize("name", sorted(_index()["vectors"]))
def test_vector(name):
    index = _index()
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(index["device_signing_public_hex"]))
    vector = index["vectors"][name]
    data = (VECTORS / vector["file"]).read_bytes()
    try:
        body = verify_alarm(parse_alarm(data), public)
        result = "valid"
    except AlarmError as exc:
        result = exc.reason
    assert result == vector["expected"]
    if result == "valid":
        assert body["device_id"] == index["device_id"] and body["tracks"] == [3, 5]
        assert "video" not in json.dumps(body) and body["skeletons"]["frames"]


def test_vectors_are_reproducible(tmp_path):
    make_vectors.main(tmp_path)
    for name, vector in _index()["vectors"].items():
        assert (tmp_path / vector["file"]).read_bytes() == (VECTORS / vector["file"]).read_bytes(), name


def test_every_single_byte_change_is_refused():
    valid = (VECTORS / "valid.alarm").read_bytes()
    public = make_vectors.device_key().public_key()
    for i in range(0, len(valid), 7):
        b = bytearray(valid)
        b[i] ^= 0x40
        with pytest.raises(AlarmError):
            verify_alarm(parse_alarm(bytes(b)), public)


def test_alarm_id_round_trip():
    assert alarm_id("walk-box-01", 2) == "walk-box-01#2"
    assert split_alarm_id("walk-box-01#2") == ("walk-box-01", 2)
    assert split_alarm_id("b9343f7137f65b98") is None


def _alarm_for(keys, sequence):
    body = make_vectors.body(sequence)
    body["device_id"] = keys.device_id
    return seal_alarm(body, keys.signing_key())


def test_alarm_then_clip_share_one_id_at_the_station(world, clip, tmp_path):  # noqa: F811
    station_dir, devices = world
    keys = devices["dev-a"]
    spool = Spool(tmp_path / "spool", 10 * 1024 * 1024)
    seq = spool.next_sequence("dev-a")
    spool.put_alarm(_alarm_for(keys, seq), device_id="dev-a", sequence=seq)
    assert spool.health().to_json()["spool_alarms"] == 1 and spool.health().pending == 0
    spool.put(seal_for(station_dir, keys, clip, seq), device_id="dev-a", sequence=seq)
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, keys, server.endpoint)
        uplink = Uplink(spool, client, device_id="dev-a", heartbeat_s=3600)
        stop = threading.Event()
        thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
        thread.start()
        try:
            store = ClipStore(station_dir)
            for _ in range(100):
                if not spool.pending() and not spool.pending_alarms():
                    break
                stop.wait(0.1)
        finally:
            stop.set()
            thread.join(10)
            uplink.close()
        kinds = [k for k, _ in audit.records]
    assert not spool.pending() and not spool.pending_alarms()
    # The alarm went first (priority lane), then the clip attached to it.
    assert kinds.index("station.alarm") < kinds.index("station.stored")
    [alarm] = store.list_alarms()
    assert alarm.alarm_id == f"dev-a#{seq}" and alarm.has_message and alarm.clip_id
    assert store.get(alarm.alarm_id).clip_id == alarm.clip_id   # export by alarm id works
    assert alarm.body["skeletons"]["frames"][0]["persons"][0]["track"] == 3
    # Retention deletes the clip by either name, and the alarm's skeletons go with it.
    store.delete_clip(alarm.alarm_id)
    assert store.list_clips() == [] and store.list_alarms() == []
    store.close()


def test_station_refuses_forged_and_replayed_alarms(world):  # noqa: F811
    station_dir, devices = world
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, devices["dev-a"], server.endpoint)
        try:
            good = _alarm_for(devices["dev-a"], 4)
            first = client.request(p.ALARM, good)
            again = client.request(p.ALARM, good)
            other = client.request(p.ALARM, _alarm_for(devices["dev-a"], 4)[:-64] + b"\0" * 64)
            forged = client.request(p.ALARM, _alarm_for(devices["dev-b"], 5).replace(b"dev-b", b"dev-a"))
            body = make_vectors.body(4)
            body["device_id"] = "dev-a"
            body["pattern"] = "push"
            replay = client.request(p.ALARM, seal_alarm(body, devices["dev-a"].signing_key()))
            garbage = client.request(p.ALARM, b"hello")
        finally:
            client.close()
    assert first.ok and first.status == "stored" and first.body["alarm_id"] == "dev-a#4"
    assert again.ok and again.status == "duplicate"
    assert not other.ok and other.reason == "bad_signature"
    assert not forged.ok and forged.reason in ("bad_signature", "malformed")
    assert not replay.ok and replay.reason == "replayed_sequence"
    assert not garbage.ok and garbage.reason == "garbage"
    assert "station.alarm" in [k for k, _ in audit.records]


@pytest.mark.servers
def test_alarms_on_both_storage_tiers_and_the_console_view(tier):  # noqa: F811
    """Store, attach the clip, read through the console's view, delete with the clip: SQLite and
    PostgreSQL + S3 alike."""
    from test_station_storage import envelope

    from appliance.contracts.envelope import parse_envelope
    from appliance.station.console.station_view import StationView

    station_dir, settings = tier
    store = ClipStore(station_dir, settings=settings)
    view = None
    try:
        body = make_vectors.body(5)
        body["device_id"] = "dev-a"
        from test_retention import DEVICE_KEY
        message = parse_alarm(seal_alarm(body, DEVICE_KEY))
        alarm, duplicate = store.store_alarm(message)
        assert (alarm.alarm_id, duplicate, alarm.clip_id) == ("dev-a#5", False, None)
        assert store.store_alarm(message)[1] is True
        assert store.alarm_message("dev-a#5") == message.data
        stored = store.store(parse_envelope(envelope(5)))
        view = StationView(station_dir, settings=settings)
        [seen] = view.alarms()
        assert seen.clip_id == stored.clip.clip_id and seen.has_message and seen.body["tracks"] == [3, 5]
        assert view.data_version()[1] == 1
        store.remove_many([stored.clip.clip_id])     # retention's batched path
        assert store.list_alarms() == [] and view.alarms() == []
    finally:
        if view is not None:
            view.close()
        store.close()
