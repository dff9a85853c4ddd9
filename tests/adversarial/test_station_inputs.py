"""Findings 2, 7, 9, 10, 11, 13 against a real station on loopback (issue 12).

Each test reproduces the attack or the odd input first (what the station did before is in the
docstring), then checks what it does now.
"""

from __future__ import annotations

import json
import time

import pytest
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.box.uplink.client import UplinkTimeout, probe
from appliance.cli import main
from appliance.common.errors import InputError
from appliance.contracts import protocol as p
from appliance.contracts.audit.checkpoints import sign_checkpoint
from appliance.contracts.envelope import EnvelopeError, parse_envelope
from appliance.contracts.synthetic import synthetic_clip
from appliance.station import server as server_module
from appliance.station.enrol import create_device_keys
from appliance.station.store import checkpoints_for
from tests.test_uplink_station import make_client, running_station, seal_for


def _heartbeat(device_id: str, checkpoints=(), health=None) -> bytes:
    return p.canonical_json({"type": "heartbeat", "device_id": device_id, "sent_unix_ms": p.now_ms(), "counter": 1,
                             "health": health or {}, "pixel_health": None, "checkpoints": list(checkpoints)})


def _checkpoint(key, n: int, head: str = "aa" * 32) -> dict:
    return sign_checkpoint(key, log="cd" * 16, n=n, count=10 * (n + 1), head=head,
                           time="2026-12-01T10:00:00.000000Z").to_json()


# -- finding 2: heartbeat checkpoints ---------------------------------------------------------


def test_checkpoints_need_the_device_key_are_bounded_and_malformed_ones_named(world, tmp_path, monkeypatch):
    """Before: any holder of the uplink's CURVE key could plant checkpoints (the device log then
    verified TAMPERED) and fill station.db (24 MB, 20k rows in 0.5 s)."""
    station_dir, devices = world
    a = devices["dev-a"]
    forger = Ed25519PrivateKey.generate()
    good = [_checkpoint(a.signing_key(), 0), _checkpoint(a.signing_key(), 1, "bb" * 32)]
    monkeypatch.setattr(server_module, "MAX_NEW_CHECKPOINTS_PER_HOUR", 5)
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, a, server.endpoint)
        try:
            forged = client.request(p.HEARTBEAT, _heartbeat("dev-a", [_checkpoint(forger, 0)]))
            assert not forged.ok and forged.reason == "bad_signature" and "unknown key" in forged.body["detail"]
            shape = client.request(p.HEARTBEAT, _heartbeat("dev-a", [{"n": 0, "head": "aa" * 32, "sig": "x"}]))
            assert not shape.ok and shape.reason == "malformed" and "checkpoint 0" in shape.body["detail"]
            many = client.request(p.HEARTBEAT, _heartbeat("dev-a", [_checkpoint(a.signing_key(), 0)] * 101))
            assert not many.ok and many.reason == "malformed" and "101 checkpoints" in many.body["detail"]
            assert client.request(p.HEARTBEAT, _heartbeat("dev-a", good)).ok
            assert client.request(p.HEARTBEAT, _heartbeat("dev-a", good)).ok  # same again: stored once
            burst = [_checkpoint(a.signing_key(), n) for n in range(2, 6)]  # 2 + 4 > 5 an hour
            limited = client.request(p.HEARTBEAT, _heartbeat("dev-a", burst))
            assert not limited.ok and limited.reason == "rate_limited"
            assert "rate_limited" not in p.PERMANENT_REASONS  # the uplink re-sends them later
        finally:
            client.close()
    assert [c["checkpoint"] for c in checkpoints_for(station_dir, "dev-a")] == good
    assert sorted(audit.reasons()) == ["bad_signature", "malformed", "malformed", "rate_limited"]


# -- finding 10: NaN ----------------------------------------------------------------------------


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_in_a_heartbeat_is_malformed_not_an_internal_error(world, constant):
    """Before: ``internal_error`` with a traceback in the station log."""
    station_dir, devices = world
    body = _heartbeat("dev-a", health={"fps": 1.5}).replace(b"1.5", constant)
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, devices["dev-a"], server.endpoint)
        try:
            reply = client.request(p.HEARTBEAT, body)
        finally:
            client.close()
    assert not reply.ok and reply.reason == "malformed"
    assert audit.reasons() == ["malformed"]


# -- finding 9: identifiers ----------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["..", ".", ".hidden", "-rf", "a/b", "x" * 65, ""])
def test_device_ids_that_could_name_a_path_are_refused_everywhere(world, tmp_path, bad_id, capsys):
    """Before: ``provision init --device-id ..`` was accepted and its envelopes landed in the
    station directory's root."""
    station_dir, devices = world
    # the box: provision init and the config validator
    code = main(["provision", "init", "--config", str(tmp_path / "a.toml"), "--state-dir", str(tmp_path / "st"),
                 f"--device-id={bad_id}"])
    assert code != 0 and not (tmp_path / "st").exists()
    # the station registry
    from appliance.station.registry import DeviceRegistry

    registry = DeviceRegistry(station_dir)
    try:
        with pytest.raises(InputError):
            registry.add_device(bad_id, devices["dev-a"].signing_key().public_key(), b"x" * 40)
    finally:
        registry.close()
    # the wire: a heartbeat naming it
    with running_station(station_dir) as (server, _audit):
        client = make_client(station_dir, devices["dev-a"], server.endpoint)
        try:
            reply = client.request(p.HEARTBEAT, _heartbeat(bad_id))
        finally:
            client.close()
    assert not reply.ok and reply.reason == "malformed"


def test_an_envelope_naming_a_path_device_id_does_not_parse(world):
    station_dir, devices = world
    env = bytearray(seal_for(station_dir, devices["dev-a"], synthetic_clip(frames=2, width=32, height=24), 1))
    at = env.index(b'"device_id":"dev-a"')
    env[at:at + 19] = b'"device_id":"..-a."'.ljust(19)[:19]
    env2 = bytes(env).replace(b'"device_id":"..-a."', b'"device_id":"../..."')
    for data in (bytes(env), env2):
        with pytest.raises(EnvelopeError) as info:
            parse_envelope(data)
        assert info.value.reason in ("malformed", "bad_signature")


def test_clip_ids_are_checked_before_any_lookup(world, tmp_path, capsys):
    station_dir, _ = world
    code = main(["station", "export", "../../etc/passwd", str(tmp_path / "out"), "--dir", str(station_dir),
                 "--operator", "kim", "--reason", "r"])
    assert code == 2 and "clip id" in capsys.readouterr().err and not (tmp_path / "out").exists()


# -- finding 11: counts ------------------------------------------------------------------------


def test_refused_envelopes_are_counted_once_as_rejected(world, tmp_path):
    """Before: wrong_station_key, old_sequence and replayed_sequence were counted as
    station.received AND station.rejected."""
    from appliance.station.keys import generate_station_keys

    station_dir, devices = world
    a = devices["dev-a"]
    clip = synthetic_clip(frames=2, width=32, height=24)
    other_station = tmp_path / "other"
    generate_station_keys(other_station)
    wrong_key = seal_for(other_station, a, clip, 9)
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, a, server.endpoint)
        try:
            assert client.request(p.ENVELOPE, seal_for(station_dir, a, clip, 5)).status == "stored"
            assert client.request(p.ENVELOPE, wrong_key).reason == "wrong_station_key"
            assert client.request(p.ENVELOPE, seal_for(station_dir, a, clip, 3)).reason == "old_sequence"
            replay = seal_for(station_dir, a, synthetic_clip(frames=3, width=32, height=24, seed=4), 5)
            assert client.request(p.ENVELOPE, replay).reason == "replayed_sequence"
        finally:
            client.close()
    kinds = [k for k, _ in audit.records]
    assert kinds.count("station.received") == 1 and kinds.count("station.rejected") == 3
    assert kinds.count("station.received") + kinds.count("station.rejected") == 4  # = messages received


# -- finding 13: liveness ----------------------------------------------------------------------


def test_a_probe_counts_as_liveness_and_a_new_device_is_not_yet_seen(world, capsys):
    """Before: after a successful probe the device still showed 'STALE … last seen never', and
    a device just added was STALE at once (the watch timer fired until the box ran)."""
    station_dir, devices = world
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--json"]) == 0
    rows = {r["device_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["dev-a"]["not_yet_seen"] and not rows["dev-a"]["stale"]
    assert main(["station", "devices", "list", "--dir", str(station_dir)]) == 0
    assert "not yet (enrolled" in capsys.readouterr().out
    # past the grace, never heard from is STALE
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--grace", "0"]) == 3
    capsys.readouterr()
    with running_station(station_dir) as (server, _audit):
        client = make_client(station_dir, devices["dev-a"], server.endpoint)
        try:
            assert probe(client, "dev-a", devices["dev-a"].signing_key()).ok
        finally:
            client.close()
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--grace", "0", "--json"]) == 3
    rows = {r["device_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert not rows["dev-a"]["stale"] and rows["dev-a"]["last_seen_unix_ms"] and rows["dev-b"]["stale"]


# -- finding 7: disable / enable / revoke ---------------------------------------------------------


def test_revoke_closes_the_open_session_and_is_audited(world, capsys):
    """Before: no command; set_enabled existed only in the Python API and an open session
    stayed open."""
    station_dir, devices = world
    a = devices["dev-a"]
    d = ["--dir", str(station_dir), "--operator", "kim"]
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, a, server.endpoint, timeout=1.5)
        try:
            assert probe(client, "dev-a", a.signing_key()).ok
            client.drain_monitor()
            with pytest.raises(SystemExit):  # no reason
                main(["station", "devices", "revoke", "dev-a", *d])
            assert main(["station", "devices", "revoke", "dev-a", *d, "--reason", "box stolen, case 1187"]) == 0
            assert "enabled -> revoked" in capsys.readouterr().out
            deadline = time.monotonic() + 10
            events = []
            while "DISCONNECTED" not in events:
                assert time.monotonic() < deadline, events
                if client.monitor.poll(100):
                    events += client.drain_monitor()
            with pytest.raises(UplinkTimeout):  # its reconnects fail the ZAP check
                probe(client, "dev-a", a.signing_key())
        finally:
            client.close()
        other = make_client(station_dir, devices["dev-b"], server.endpoint)
        try:
            assert probe(other, "dev-b", devices["dev-b"].signing_key()).ok  # others unaffected
        finally:
            other.close()
    assert [k for k, _ in audit.records if k == "station.session_closed"] == ["station.session_closed"]
    # the operator's record went to the station's own audit log, with the reason
    lines = [json.loads(x) for x in (station_dir / "audit.jsonl").read_text().splitlines()]
    [rec] = [r for r in lines if r["kind"] == "station.device_revoked"]
    assert rec["fields"]["reason"] == "box stolen, case 1187" and rec["fields"]["operator"] == "kim"
    # revoked is final: enable refuses, re-enrolling the same keys refuses
    assert main(["station", "devices", "enable", "dev-a", *d, "--reason", "found it"]) == 2
    from appliance.contracts.curve import load_curve_public
    from appliance.station.registry import DeviceRegistry

    registry = DeviceRegistry(station_dir)
    try:
        with pytest.raises(InputError, match="revoked"):
            registry.add_device("dev-a", a.signing_key().public_key(), load_curve_public(a.curve_public),
                                replace=True)
        fresh = create_device_keys(station_dir.parent / "dev-a-new", "dev-a")
        assert registry.add_device("dev-a", fresh.signing_key().public_key(), load_curve_public(fresh.curve_public),
                                   replace=True).status == "enabled"
    finally:
        registry.close()


def test_disable_then_enable(world, capsys):
    station_dir, devices = world
    d = ["--dir", str(station_dir), "--operator", "kim"]
    assert main(["station", "devices", "disable", "dev-b", *d, "--reason", "maintenance"]) == 0
    assert main(["station", "devices", "list", "--dir", str(station_dir)]) == 0
    assert "DISABLED" in capsys.readouterr().out
    with running_station(station_dir) as (server, _audit):
        client = make_client(station_dir, devices["dev-b"], server.endpoint, timeout=1.0)
        try:
            with pytest.raises(UplinkTimeout):
                probe(client, "dev-b", devices["dev-b"].signing_key())
            assert main(["station", "devices", "enable", "dev-b", *d, "--reason", "back"]) == 0
            client.reset()
            assert probe(client, "dev-b", devices["dev-b"].signing_key()).ok
        finally:
            client.close()
    kinds = [json.loads(x)["kind"] for x in (station_dir / "audit.jsonl").read_text().splitlines()]
    assert kinds.count("station.device_disabled") == 1 and kinds.count("station.device_enabled") == 1
    assert zmq  # the module is imported for the monitor constants the client uses
