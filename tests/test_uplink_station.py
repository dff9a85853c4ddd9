"""Uplink ⇄ station over real CurveZMQ sockets on 127.0.0.1: delivery, acks, rejections, ZAP."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from appliance.box.seal import seal_clip, verify_envelope
from appliance.box.spool import Spool
from appliance.box.uplink.client import (
    ClientConfig,
    Uplink,
    UplinkClient,
    UplinkTimeout,
    probe,
)
from appliance.contracts import protocol as p
from appliance.contracts.audit.checkpoints import sign_checkpoint
from appliance.contracts.curve import (
    generate_curve_keypair,
    load_curve_keypair,
    load_curve_public,
)
from appliance.contracts.health import sign_health
from appliance.contracts.keys import load_hpke_public_key, load_signing_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths, generate_station_keys
from appliance.station.registry import DeviceRegistry
from appliance.station.server import StationServer
from appliance.station.store import ClipStore, checkpoints_for

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    def __init__(self):
        self.records = []
        self._lock = threading.Lock()

    def append(self, kind, **fields):
        with self._lock:
            self.records.append((kind, fields))
        return {"kind": kind}

    def reasons(self):
        with self._lock:
            return [f["reason"] for k, f in self.records if k == "station.rejected"]


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(frames=6, width=64, height=48)


@pytest.fixture
def world(tmp_path):
    """A station directory with keys and two enrolled devices."""
    station_dir = tmp_path / "station"
    generate_station_keys(station_dir)
    devices = {}
    for name in ("dev-a", "dev-b"):
        keys = create_device_keys(tmp_path / name, name)
        enrol_device(station_dir, keys)
        devices[name] = keys
    return station_dir, devices


@contextlib.contextmanager
def running_station(station_dir, **kwargs):
    audit = Recorder()
    server = StationServer(station_dir, "tcp://127.0.0.1:*", audit=audit, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    try:
        yield server, audit
    finally:
        server.stop()
        thread.join(10)
        assert not thread.is_alive()


def make_client(station_dir, keys, endpoint, timeout=3.0):
    paths = StationKeyPaths.of(station_dir)
    public, secret = keys.curve_keypair() if keys is not None else (None, None)
    return UplinkClient(ClientConfig(
        endpoint=endpoint, curve_public=public, curve_secret=secret,
        station_curve_public=load_curve_public(paths.curve_public),
        station_signing_public=load_signing_public_key(paths.signing_public), ack_timeout_s=timeout))


def seal_for(station_dir, keys, clip, sequence, device_id=None):
    return seal_clip(clip, device_id=device_id or keys.device_id, sequence=sequence, signing_key=keys.signing_key(),
                     station_public_key=load_hpke_public_key(StationKeyPaths.of(station_dir).hpke_public))


def test_envelope_stored_acked_and_idempotent(world, clip):
    station_dir, devices = world
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, devices["dev-a"], server.endpoint)
        try:
            env = seal_for(station_dir, devices["dev-a"], clip, 1)
            first = client.request(p.ENVELOPE, env)
            again = client.request(p.ENVELOPE, env)
        finally:
            client.close()
    assert first.ok and first.status == "stored" and again.ok and again.status == "duplicate"
    store = ClipStore(station_dir)
    try:
        [stored] = store.list_clips()
        assert store.read_envelope(stored) == env
        assert store.last_seen("dev-a").highest_sequence == 1
    finally:
        store.close()
    kinds = [k for k, _ in audit.records]
    assert kinds == ["station.received", "station.stored", "station.received", "station.stored"]
    assert audit.records[0][1]["verified"] is True and audit.records[0][1]["device_id"] == "dev-a"


def test_uplink_empties_spool_heartbeats_and_probe(world, clip, tmp_path):
    station_dir, devices = world
    keys = devices["dev-a"]
    spool = Spool(tmp_path / "spool", 64 * 1024 * 1024)
    for _ in range(5):
        seq = spool.next_sequence("dev-a")
        spool.put(seal_for(station_dir, keys, clip, seq), device_id="dev-a", sequence=seq)
    checkpoints = [sign_checkpoint(keys.signing_key(), log="ab" * 16, n=n, count=10 * (n + 1), head=h * 32,
                                   time="2026-12-01T10:00:00.000000Z").to_json() for n, h in enumerate(("aa", "bb"))]
    with running_station(station_dir) as (server, _audit):
        client = make_client(station_dir, keys, server.endpoint)
        signed = sign_health({"analysis_fps": 9.5, "model_sha256": "cd" * 32}, device_id="dev-a",
                             signing_key=keys.signing_key())
        uplink = Uplink(spool, client, device_id="dev-a", heartbeat_s=3600,
                        health_source=lambda: (signed, {}), checkpoint_source=lambda: checkpoints)
        stop = threading.Event()
        thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while spool.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(10)
        reply = probe(client, "dev-a", keys.signing_key())
        uplink.send_heartbeat()  # the same checkpoints again: stored once
        uplink.close()
    assert spool.pending() == []
    assert reply.ok and reply.status == "probe-ok"
    store = ClipStore(station_dir)
    try:
        assert [c.sequence for c in store.list_clips()] == [1, 2, 3, 4, 5]
        seen = store.last_seen("dev-a")
        assert seen.health["pixel_signed"] and seen.health["pixel"]["analysis_fps"] == 9.5
        assert seen.health["spool_depth"] in (0, 5)
        assert seen.last_kind == "heartbeat"
    finally:
        store.close()
    assert [c["checkpoint"] for c in checkpoints_for(station_dir, "dev-a")] == checkpoints


def test_probe_stores_no_clip_but_counts_as_liveness(world):
    station_dir, devices = world
    with running_station(station_dir, max_envelope_bytes=123456) as (server, _audit):
        client = make_client(station_dir, devices["dev-b"], server.endpoint)
        try:
            reply = probe(client, "dev-b", devices["dev-b"].signing_key())
        finally:
            client.close()
    assert reply.ok and reply.body["max_envelope_bytes"] == 123456 and reply.body["highest_sequence"] == 0
    store = ClipStore(station_dir)
    try:
        seen = store.last_seen("dev-b")
        assert store.count() == 0 and seen.last_kind == "probe" and seen.last_seen_unix_ms > 0
    finally:
        store.close()


def test_every_bad_message_is_rejected_with_its_reason(world, clip, tmp_path):
    station_dir, devices = world
    a, b = devices["dev-a"], devices["dev-b"]
    good = seal_for(station_dir, a, clip, 10)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    forged_keys = create_device_keys(tmp_path / "forger", "dev-a")  # not enrolled: claims to be dev-a
    forged = seal_for(station_dir, forged_keys, clip, 11)
    replay = seal_for(station_dir, a, synthetic_clip(frames=3, seed=5), 10)
    old = seal_for(station_dir, a, clip, 4)
    unknown = seal_for(station_dir, a, clip, 1, device_id="dev-nobody")
    version = good[:4] + b"\x00\x09" + good[6:]
    oversize = seal_for(station_dir, a, synthetic_clip(frames=2, video=os.urandom(1024 * 1024 + 10)), 12)
    def heartbeat(device_id, signer):
        return p.canonical_json({"type": "heartbeat", "device_id": device_id, "health": {}, "checkpoints": [],
                                 "pixel_health": sign_health({"fps": 1}, device_id=device_id, signing_key=signer)})
    cases = [
        (a, [p.ENVELOPE, good], True, "stored"),
        (a, [p.ENVELOPE, forged], False, "bad_signature"),
        (b, [p.ENVELOPE, seal_for(station_dir, a, clip, 20)], False, "wrong_device"),
        (a, [p.ENVELOPE, replay], False, "replayed_sequence"),
        (a, [p.ENVELOPE, old], False, "old_sequence"),
        (a, [p.ENVELOPE, good[:-1000]], False, "truncated"),
        (a, [p.ENVELOPE, bytes(flipped)], False, "bad_signature"),
        (a, [p.ENVELOPE, oversize], False, "oversize"),
        (a, [p.ENVELOPE, b"\x00garbage" * 10], False, "garbage"),
        (a, [p.ENVELOPE, unknown], False, "unknown_device"),
        (a, [p.ENVELOPE, version], False, "unknown_version"),
        (a, [p.HEARTBEAT, heartbeat("dev-a", forged_keys.signing_key())], False, "bad_signature"),
        (b, [p.HEARTBEAT, heartbeat("dev-a", a.signing_key())], False, "wrong_device"),
        (a, [p.HEARTBEAT, b"{not json"], False, "malformed"),
        (a, [p.HEARTBEAT, heartbeat("dev-a", a.signing_key()), b"\x00" * 64], False, "garbage"),
        (a, [p.PROBE, p.canonical_json({"type": "probe", "device_id": "dev-a"}), b"\x00" * 64], False,
         "bad_signature"),
        (a, [b"HELLO", b"x"], False, "garbage"),
        (a, [p.ENVELOPE, good], True, "duplicate"),  # still serving, still idempotent
    ]
    with running_station(station_dir, max_envelope_bytes=1024 * 1024) as (server, audit):
        clients = {k.device_id: make_client(station_dir, k, server.endpoint) for k in (a, b)}
        try:
            for keys, (kind, *rest), ok, expect in cases:
                sig = rest[1] if len(rest) > 1 else None
                reply = clients[keys.device_id].request(kind, rest[0], sig)
                assert reply.ok is ok, (expect, reply.body)
                assert (reply.status if ok else reply.reason) == expect
            # Frames that are not APW1 at all, from a raw socket: NACK garbage, station unharmed.
            raw = clients["dev-a"].sock
            raw.send_multipart([b"nonsense"])
            assert raw.poll(5000)
            frames = raw.recv_multipart()
            assert frames[1] == p.NACK and b"garbage" in frames[3]
            # A frame larger than MAXMSGSIZE: libzmq drops the connection; Lazy Pirate recovers.
            with pytest.raises(UplinkTimeout):
                big = os.urandom(1024 * 1024 + 128 * 1024)
                c = make_client(station_dir, a, server.endpoint, timeout=1.0)
                try:
                    c.request(p.ENVELOPE, big)
                finally:
                    c.close()
            assert clients["dev-a"].request(p.ENVELOPE, good).status == "duplicate"
        finally:
            for c in clients.values():
                c.close()
    expected_rejections = [e for _, _, ok, e in cases if not ok]
    assert sorted(audit.reasons()) == sorted([*expected_rejections, "garbage"])
    store = ClipStore(station_dir)
    try:
        assert store.count() == 1
    finally:
        store.close()


def test_unknown_curve_key_gets_no_connection(world, clip, tmp_path):
    station_dir, devices = world
    _pub, sec = generate_curve_keypair(tmp_path / "stranger", "curve")
    stranger = type("K", (), {"curve_keypair": lambda self: load_curve_keypair(sec)})()
    with running_station(station_dir) as (server, audit):
        client = make_client(station_dir, stranger, server.endpoint, timeout=1.5)
        try:
            with pytest.raises(UplinkTimeout):
                client.request(p.ENVELOPE, seal_for(station_dir, devices["dev-a"], clip, 1))
            assert client.handshake_failures >= 1
        finally:
            client.close()
        # A disabled device is refused the same way.
        registry = DeviceRegistry(station_dir)
        registry.set_enabled("dev-b", False)
        registry.close()
        client = make_client(station_dir, devices["dev-b"], server.endpoint, timeout=1.5)
        try:
            with pytest.raises(UplinkTimeout):
                client.request(p.ENVELOPE, seal_for(station_dir, devices["dev-b"], clip, 1))
        finally:
            client.close()
    assert not [k for k, _ in audit.records if k == "station.received"]  # nothing ever got through
    store = ClipStore(station_dir)
    try:
        assert store.count() == 0
    finally:
        store.close()


# -- the station process killed twice while 100 clips flow ------------------------------------


def _start_station_process(station_dir: Path, bind: str, ready: Path, log: Path) -> subprocess.Popen:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "station", "serve", "--dir", str(station_dir), "--bind", bind,
         "--ready-file", str(ready), "--no-audit"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "station did not start"
        time.sleep(0.02)
    return proc


def test_hundred_clips_across_two_station_crashes(world, clip, tmp_path):
    station_dir, devices = world
    keys = devices["dev-a"]
    spool = Spool(tmp_path / "spool", 256 * 1024 * 1024)
    for _ in range(100):
        seq = spool.next_sequence("dev-a")
        spool.put(seal_for(station_dir, keys, clip, seq), device_id="dev-a", sequence=seq)
    ready, log = tmp_path / "ready", tmp_path / "station.log"
    proc = _start_station_process(station_dir, "tcp://127.0.0.1:*", ready, log)
    endpoint = ready.read_text().strip()
    client = make_client(station_dir, keys, endpoint, timeout=1.0)
    uplink = Uplink(spool, client, device_id="dev-a", heartbeat_s=3600, retry_initial_s=0.05, retry_max_s=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
    thread.start()
    kills = 0
    try:
        for threshold in (70, 35):
            deadline = time.monotonic() + 120
            while len(spool.pending()) > threshold:
                assert time.monotonic() < deadline, "uplink made no progress"
                time.sleep(0.005)
            proc.kill()
            proc.wait(10)
            kills += 1
            time.sleep(0.3)  # the uplink times out and backs off meanwhile
            proc = _start_station_process(station_dir, endpoint, ready, log)
        deadline = time.monotonic() + 120
        while spool.pending():
            assert time.monotonic() < deadline, f"{len(spool.pending())} clips still spooled"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
        uplink.close()
        proc.terminate()
        proc.wait(10)
    assert kills == 2 and spool.pending() == [] and spool.rejected() == []
    store = ClipStore(station_dir)
    registry = DeviceRegistry(station_dir)
    try:
        clips = store.list_clips("dev-a")
        assert [c.sequence for c in clips] == list(range(1, 101))  # each exactly once (UNIQUE index)
        for c in clips:
            assert verify_envelope(store.read_envelope(c), registry).sequence == c.sequence
        assert len(list((station_dir / "envelopes" / "dev-a").glob("*.env"))) == 100
    finally:
        store.close()
        registry.close()


def test_signed_health_statement(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.contracts.health import (
        HealthStatementError,
        read_health_file,
        verify_health,
        write_signed_health,
    )

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    write_signed_health(tmp_path / "health.json", {"analysis_fps": 10.0}, device_id="d", signing_key=key)
    signed, plain = read_health_file(tmp_path / "health.json")
    assert plain == {} and verify_health(signed, "d", key.public_key())["health"] == {"analysis_fps": 10.0}
    for bad_device, public in (("d", other.public_key()), ("e", key.public_key())):
        with pytest.raises(HealthStatementError):
            verify_health(signed, bad_device, public)
    tampered = dict(signed, statement=signed["statement"].replace("10.0", "99.0"))
    with pytest.raises(HealthStatementError):
        verify_health(tampered, "d", key.public_key())
    assert read_health_file(tmp_path / "missing.json") == (None, {"pixel_health": "missing"})


def test_ipv6_literal_endpoints_are_allowed_and_ipv4_ones_untouched():
    # Binding [::1] would break the loopback-IPv4-only rule of these tests; the option is what
    # libzmq needs (without it an IPv6 literal fails with EAGAIN), and IPv4 sockets must keep
    # reporting plain IPv4 endpoints.
    ctx = zmq.Context()
    try:
        v6, v4 = ctx.socket(zmq.DEALER), ctx.socket(zmq.ROUTER)
        p.allow_ipv6_endpoint(v6, "tcp://[2001:db8::5]:7100")
        p.allow_ipv6_endpoint(v4, "tcp://127.0.0.1:*")
        assert v6.getsockopt(zmq.IPV6) == 1 and v4.getsockopt(zmq.IPV6) == 0
        v4.bind("tcp://127.0.0.1:*")
        assert v4.getsockopt_string(zmq.LAST_ENDPOINT).startswith("tcp://127.0.0.1:")
        v6.close(0)
        v4.close(0)
    finally:
        ctx.term()
