"""The station's tiers under many devices: 2 receivers, one killed mid-load; and retention at 100k.

Per tier (PostgreSQL + SeaweedFS S3, then the embedded SQLite + files default):

- N simulated devices (default 1,000), each with its own Ed25519 and CURVE keys, enrolled,
  connected over CurveZMQ on loopback to one of two ``appliance station serve`` processes (half
  list receiver A first, half B) with both in their endpoint list. Each sends a heartbeat every
  30 s and a sealed 1 MB clip every 5 min, time compressed by ``COMPRESS`` (default 1, real
  time: 33 heartbeats/s and 3.3 clips/s offered for 1,000 devices; each device's first beat
  and clip fall at a random phase, so the load is spread as it is in the field) for
  ``SECONDS`` (default 150 s: 5 heartbeats per device, a clip from half of them). At 40 % of
  the run receiver A is SIGKILLed. A device uses the real
  :class:`~appliance.box.uplink.client.UplinkClient` (failover, signed acks) and re-sends a clip
  until acked, as the uplink does with its spool (the file spool itself is left out: 1,000
  spools' fsyncs would measure this machine's disk, not the station).
- clips lost (sealed by a device but not in the database), duplicates (stored twice: rows per
  (device, sequence), objects per row), failover time on the device side (for each device
  that was on A: from the first attempt of its first message after the kill to that
  message's ack from B; p50/p95/max), ingest clips/s and heartbeats/s over the run, and the
  CPU seconds and peak RSS of the receivers, PostgreSQL and SeaweedFS.
- Retention over ``RETENTION_CLIPS`` (default 100,000) stored clips (small envelopes: the
  time is in the index, the object deletions and the audit appends, not in the bytes), all
  expired: time, deletions/s, and that the audit log holds one ``retention.delete`` per clip
  and verifies.

Environment: ``BENCH_SCALE_DEVICES``, ``BENCH_SCALE_SECONDS``, ``BENCH_SCALE_COMPRESS``,
``BENCH_SCALE_RETENTION_CLIPS``, ``BENCH_SCALE_BURST_CLIPS`` (one receiver's ingest capacity:
8 devices sending back to back; default 200), ``BENCH_SCALE_TIERS`` (``scale,embedded``) for short runs
(``BENCH_SCALE_DEVICES=0``: retention only).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # tests/servers.py: the same real servers the tests start

WORKERS = 4
CLIP_BYTES = 1024 * 1024
HEARTBEAT_S, CLIP_S = 30.0, 300.0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def run() -> list[tuple[str, float, str]]:
    devices = _env_int("BENCH_SCALE_DEVICES", 1000)
    seconds = _env_int("BENCH_SCALE_SECONDS", 150)
    compress = _env_int("BENCH_SCALE_COMPRESS", 1)
    retention_clips = _env_int("BENCH_SCALE_RETENTION_CLIPS", 100_000)
    burst = _env_int("BENCH_SCALE_BURST_CLIPS", 200)
    tiers = os.environ.get("BENCH_SCALE_TIERS", "scale,embedded").split(",")
    rows: list[tuple[str, float, str]] = []
    from servers import PostgresServer, SeaweedServer
    for tier in tiers:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{tier}-") as tmp:
            if tier == "scale":
                with PostgresServer.start() as pg, SeaweedServer.start(volume_max=400, volume_mb=256) as weed:
                    os.environ.update(weed.env())
                    from appliance.station.storage import StorageSettings
                    settings = StorageSettings(pg.create_database("bench"), weed.store_url("bench-clips"))
                    usage = _Usage({"PostgreSQL": lambda: _tree(pg.pid()), "SeaweedFS": lambda: _tree(weed.proc.pid)})
                    if devices:
                        rows += _load(Path(tmp), tier, settings, devices, seconds, compress, usage)
                    if burst:
                        settings = StorageSettings(pg.create_database("burst"), weed.store_url("bench-burst"))
                        rows += _burst(Path(tmp) / "burst", settings, burst)
                    settings = StorageSettings(pg.create_database("retention"), weed.store_url("bench-retention"))
                    rows += _retention(Path(tmp) / "retention", tier, settings, retention_clips)
            else:
                from appliance.station.storage import StorageSettings
                if devices:
                    rows += _load(Path(tmp), tier, StorageSettings(), devices, seconds, compress, _Usage({}))
                if burst:
                    rows += _burst(Path(tmp) / "burst", StorageSettings(), burst)
                rows += _retention(Path(tmp) / "retention", tier, StorageSettings(), retention_clips)
    return rows


# ---------------------------------------------------------------------------------------
# Process resource use from /proc


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _tree(pid: int | None) -> list[int]:
    if pid is None:
        return []
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _cpu_rss(pids: list[int]) -> tuple[float, int]:
    tick = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
    return cpu, rss


class _Usage:
    """CPU seconds used during the run and peak RSS, sampled every second."""

    def __init__(self, sources: dict[str, Any]):
        self.sources = dict(sources)
        self.start: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, pids_fn: Any) -> None:
        self.sources[name] = pids_fn

    def begin(self) -> None:
        for name, fn in self.sources.items():
            self.start[name], self.peak[name] = _cpu_rss(fn())
            self.cpu[name] = self.start[name]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            for name, fn in self.sources.items():
                cpu, rss = _cpu_rss(fn())
                self.cpu[name] = max(self.cpu.get(name, 0.0), cpu)   # a killed process keeps its last value
                self.peak[name] = max(self.peak.get(name, 0), rss)

    def end(self) -> dict[str, tuple[float, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return {n: (self.cpu[n] - self.start[n], self.peak[n]) for n in self.sources}


# ---------------------------------------------------------------------------------------
# The load run


def _start_receiver(station_dir: Path, settings: Any, name: str) -> tuple[subprocess.Popen, str]:
    ready = station_dir / f"ready-{name}"
    ready.unlink(missing_ok=True)
    args = [sys.executable, "-m", "appliance.cli", "station", "serve", "--dir", str(station_dir),
            "--bind", "tcp://127.0.0.1:*", "--ready-file", str(ready)]
    if settings.db:
        args += ["--db", settings.db, "--store", settings.store]
    log = open(station_dir / f"serve-{name}.log", "wb")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"receiver {name} did not start: {(station_dir / f'serve-{name}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, ready.read_text().strip()


def _load(tmp: Path, tier: str, settings: Any, n_devices: int, seconds: int, compress: int,
          usage: _Usage) -> list[tuple[str, float, str]]:
    import zmq

    from appliance.station.keys import generate_station_keys
    from appliance.station.registry import DeviceRegistry
    from appliance.station.store import ClipStore

    a = tmp / "receiver-a"
    generate_station_keys(a)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    devices = []
    registry = DeviceRegistry(a, settings=settings)
    try:
        for i in range(n_devices):
            key = Ed25519PrivateKey.generate()
            public, secret = zmq.curve_keypair()
            device_id = f"bench-{i:05d}"
            registry.add_device(device_id, key.public_key(), public)
            devices.append({"id": device_id, "sign": key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
                            "curve": (public, secret), "first": "a" if i % 2 == 0 else "b"})
    finally:
        registry.close()
    # Receiver B: the same keys; on the scale-out tier its own directory (its own audit log),
    # on the embedded tier the same directory (SQLite + files are one host's).
    b = tmp / "receiver-b"
    if settings.db:
        shutil.copytree(a, b, ignore=shutil.ignore_patterns("audit.jsonl*", "ready-*", "*.log"))
    else:
        b = a
    proc_a, endpoint_a = _start_receiver(a, settings, "a")
    proc_b, endpoint_b = _start_receiver(b, settings, "b")
    usage.add("receiver A", lambda: [proc_a.pid] if proc_a.poll() is None else [])
    usage.add("receiver B", lambda: [proc_b.pid])
    hb_s, clip_s = HEARTBEAT_S / compress, CLIP_S / compress
    start_at = time.time() + 20 + n_devices / 25       # every device connected (staggered) by then
    end_at = start_at + seconds
    kill_at = start_at + 0.4 * seconds
    spec = {"a": endpoint_a, "b": endpoint_b, "station_dir": str(a), "hb_s": hb_s, "clip_s": clip_s,
            "start_at": start_at, "end_at": end_at}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    chunks = [devices[i::WORKERS] for i in range(WORKERS)]
    workers = [ctx.Process(target=_worker, args=(chunk, spec, queue), daemon=True) for chunk in chunks]
    try:
        for w in workers:
            w.start()
        while time.time() < start_at:
            time.sleep(0.1)
        usage.begin()
        while time.time() < kill_at:
            time.sleep(0.05)
        proc_a.send_signal(signal.SIGKILL)
        killed_at = time.time()
        proc_a.wait(10)
        results = [queue.get(timeout=end_at - time.time() + 240) for _ in workers]
        used = usage.end()
        for w in workers:
            w.join(30)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
        for proc in (proc_a, proc_b):
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
    records = [r for chunk in results for r in chunk]
    store = ClipStore(a, settings=settings)
    try:
        stored = store.db.execute("SELECT device_id, sequence FROM clips").fetchall()
        objects = sum(1 for _ in store.blobs.locations())
    finally:
        store.close()
    sealed = {(r["device"], r["seq"]) for r in records if r["kind"] == "clip"}
    in_db = [(d, int(s)) for d, s in stored]
    lost = len(sealed - set(in_db))
    duplicates = (len(in_db) - len(set(in_db))) + max(0, objects - len(in_db))
    # Failover time: each device that was on A, its first message attempted after the kill.
    firsts: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: r["t0"]):
        if r["first"] == "a" and r["t0"] >= killed_at - 10 and r["acked_by"] == "b" and r["device"] not in firsts:
            if r["t_ack"] >= killed_at:
                firsts[r["device"]] = r
    failover = sorted((r["t_ack"] - max(r["t0"], killed_at)) * 1000 for r in firsts.values())
    hb = [r for r in records if r["kind"] == "heartbeat"]
    clips_ok = [r for r in records if r["kind"] == "clip" and r["status"] in ("stored", "duplicate")]
    label = "PostgreSQL + S3" if settings.db else "SQLite + files"

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))], 1) if values else float("nan")

    out = [
        (f"[{label}] devices, 2 receivers, time x{compress} ({seconds} s wall)", n_devices, "devices"),
        (f"[{label}] clips sealed by devices (1 MB)", len(sealed), "clips"),
        (f"[{label}] clips lost after SIGKILL of receiver A", lost, "clips"),
        (f"[{label}] clips stored twice (rows per device+sequence, objects per row)", duplicates, "clips"),
        (f"[{label}] clips acked 'duplicate' (re-sent after the kill, stored once)",
         sum(r["status"] == "duplicate" for r in clips_ok), "acks"),
        (f"[{label}] devices that failed over from A", len(failover), "devices"),
        (f"[{label}] failover time device-side p50", pct(failover, 0.5), "ms"),
        (f"[{label}] failover time device-side p95", pct(failover, 0.95), "ms"),
        (f"[{label}] failover time device-side max", round(failover[-1], 1) if failover else float("nan"), "ms"),
        (f"[{label}] ingest clips/s (acked, over the run)", round(len(clips_ok) / seconds, 1), "clips/s"),
        (f"[{label}] heartbeats/s (acked, over the run)",
         round(sum(r["status"] == "recorded" for r in hb) / seconds, 1), "heartbeats/s"),
        (f"[{label}] heartbeats missed (receiver gone, not retried, as the uplink does)",
         sum(r["status"] != "recorded" for r in hb), "heartbeats"),
        (f"[{label}] clip seal-to-ack latency p95 (all clips)",
         pct(sorted((r["t_ack"] - r["t0"]) * 1000 for r in clips_ok), 0.95), "ms"),
    ]
    for name, (cpu, rss) in used.items():
        out.append((f"[{label}] {name}: CPU over the run", round(cpu, 1), "s"))
        out.append((f"[{label}] {name}: peak RSS", round(rss / 2**20, 1), "MiB"))
    return out


def _worker(devices: list[dict], spec: dict, queue: Any) -> None:
    """One process simulating a share of the devices, a thread each."""
    import logging

    import zmq

    # A thousand devices failing over print a thousand warnings: the figures tell it.
    logging.getLogger("appliance").setLevel(logging.ERROR)

    from appliance.box.seal import seal_clip
    from appliance.contracts.curve import load_curve_public
    from appliance.contracts.keys import load_hpke_public_key, load_signing_public_key
    from appliance.contracts.synthetic import synthetic_clip
    from appliance.station.keys import StationKeyPaths

    paths = StationKeyPaths.of(spec["station_dir"])
    hpke = load_hpke_public_key(paths.hpke_public)
    station_curve = load_curve_public(paths.curve_public)
    station_signing = load_signing_public_key(paths.signing_public)
    clip = synthetic_clip(frames=25, video=os.urandom(CLIP_BYTES))
    ctx = zmq.Context(io_threads=2)
    records: list[dict] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_device, args=(d, spec, ctx, hpke, station_curve, station_signing, clip,
                                                     seal_clip, records, lock), daemon=True) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(spec["end_at"] - time.time() + 200)
    queue.put(records)
    ctx.term()


def _device(d: dict, spec: dict, ctx: Any, hpke: Any, station_curve: bytes, station_signing: Any, clip: Any,
            seal_clip: Any, records: list, lock: threading.Lock) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.box.uplink.client import Backoff, ClientConfig, UplinkClient, UplinkTimeout
    from appliance.contracts import protocol as p

    order = (spec["a"], spec["b"]) if d["first"] == "a" else (spec["b"], spec["a"])
    names = {spec["a"]: "a", spec["b"]: "b"}
    public, secret = d["curve"]
    client = UplinkClient(ClientConfig(endpoint=order[0], endpoints=order, curve_public=public, curve_secret=secret,
                                       station_curve_public=station_curve, station_signing_public=station_signing,
                                       ack_timeout_s=10.0), ctx=ctx)
    key = Ed25519PrivateKey.from_private_bytes(d["sign"])
    rng = random.Random(d["id"])
    start, end = spec["start_at"], spec["end_at"]
    next_hb = start + rng.uniform(0, spec["hb_s"])
    next_clip = start + rng.uniform(0, spec["clip_s"])
    seq = 0
    backoff = Backoff(0.2, 2.0)

    def record(kind: str, s: int, t0: float, status: str) -> None:
        with lock:
            records.append({"device": d["id"], "kind": kind, "seq": s, "t0": t0, "t_ack": time.time(),
                            "status": status, "first": d["first"], "acked_by": names[client.endpoint]})

    try:
        time.sleep(max(0.0, start - 5 - time.time()) * rng.random())
        with contextlib.suppress(UplinkTimeout):   # connect and handshake before the clock starts
            client.request(p.HEARTBEAT, p.canonical_json({"type": "heartbeat", "device_id": d["id"],
                                                          "sent_unix_ms": p.now_ms(), "health": {}}))
        while True:
            now = time.time()
            due = min(next_hb, next_clip)
            if due >= end:
                break
            if due > now:
                time.sleep(due - now)
                continue
            if next_clip <= next_hb:
                next_clip += spec["clip_s"]
                seq += 1
                env = seal_clip(clip, device_id=d["id"], sequence=seq, signing_key=key, station_public_key=hpke)
                t0 = time.time()
                while True:   # the spool's rule: re-send until acked
                    try:
                        reply = client.request(p.ENVELOPE, env)
                        backoff.reset()
                        record("clip", seq, t0, reply.status if reply.ok else f"nack:{reply.reason}")
                        break
                    except UplinkTimeout:
                        if time.time() > end + 120:
                            record("clip", seq, t0, "gave-up")
                            break
                        time.sleep(backoff.delay())
            else:
                next_hb += spec["hb_s"]
                t0 = time.time()
                try:
                    reply = client.request(p.HEARTBEAT, p.canonical_json(
                        {"type": "heartbeat", "device_id": d["id"], "sent_unix_ms": p.now_ms(), "health": {}}))
                    record("heartbeat", 0, t0, reply.status if reply.ok else "nack")
                except UplinkTimeout:
                    record("heartbeat", 0, t0, "timeout")
    finally:
        client.close()


# ---------------------------------------------------------------------------------------
# Ingest capacity of one receiver


def _burst(tmp: Path, settings: Any, n: int) -> list[tuple[str, float, str]]:
    """One receiver, 8 devices sending sealed 1 MB clips back to back: what one receiver can take."""
    from appliance.box.seal import seal_clip
    from appliance.box.uplink.client import ClientConfig, UplinkClient
    from appliance.contracts import protocol as p
    from appliance.contracts.curve import load_curve_public
    from appliance.contracts.keys import load_hpke_public_key, load_signing_public_key
    from appliance.contracts.synthetic import synthetic_clip
    from appliance.station.enrol import create_device_keys
    from appliance.station.keys import StationKeyPaths, generate_station_keys
    from appliance.station.registry import DeviceRegistry

    station = tmp / "station"
    generate_station_keys(station)
    paths = StationKeyPaths.of(station)
    devices = []
    for i in range(8):
        keys = create_device_keys(tmp / f"dev{i}", f"burst-{i}")
        registry = DeviceRegistry(station, settings=settings)
        try:
            public, _ = keys.curve_keypair()
            registry.add_device(keys.device_id, keys.signing_key().public_key(), public)
        finally:
            registry.close()
        devices.append(keys)
    proc, endpoint = _start_receiver(station, settings, "burst")
    clip = synthetic_clip(frames=25, video=os.urandom(CLIP_BYTES))
    hpke = load_hpke_public_key(paths.hpke_public)
    per = n // len(devices)
    envelopes = {k.device_id: [seal_clip(clip, device_id=k.device_id, sequence=s, signing_key=k.signing_key(),
                                         station_public_key=hpke) for s in range(1, per + 1)] for k in devices}
    acked = [0]
    lock = threading.Lock()

    def send(keys: Any) -> None:
        public, secret = keys.curve_keypair()
        client = UplinkClient(ClientConfig(endpoint=endpoint, curve_public=public, curve_secret=secret,
                                           station_curve_public=load_curve_public(paths.curve_public),
                                           station_signing_public=load_signing_public_key(paths.signing_public),
                                           ack_timeout_s=60))
        try:
            for env in envelopes[keys.device_id]:
                if client.request(p.ENVELOPE, env).ok:
                    with lock:
                        acked[0] += 1
        finally:
            client.close()

    try:
        t = time.perf_counter()
        threads = [threading.Thread(target=send, args=(k,)) for k in devices]
        for th in threads:
            th.start()
        for th in threads:
            th.join(600)
        took = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(30)
    label = "PostgreSQL + S3" if settings.db else "SQLite + files"
    return [(f"[{label}] one receiver's ingest, 8 devices back to back, 1 MB clips ({acked[0]} acked)",
             round(acked[0] / took, 1), "clips/s")]


# ---------------------------------------------------------------------------------------
# Retention over many stored clips


def _retention(tmp: Path, tier: str, settings: Any, n: int) -> list[tuple[str, float, str]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.contracts.audit.log import AuditLog
    from appliance.contracts.audit.verify import verify_log
    from appliance.contracts.envelope import canonical_json, parse_envelope, seal_bytes
    from appliance.contracts.keys import HpkePrivateKey
    from appliance.station.retention import RetentionJob, RetentionPolicy, StationClipStore
    from appliance.station.store import ClipStore

    tmp.mkdir(parents=True)
    device_key, station_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    hpke = HpkePrivateKey.generate("X25519").public_key()
    store = ClipStore(tmp, settings=settings)
    label = "PostgreSQL + S3" if settings.db else "SQLite + files"
    t = time.perf_counter()
    try:
        # Filling is not what is measured: the bytes go through the blob store in parallel, the
        # rows in one transaction per 5,000.
        received = int(time.time() * 1000)

        def make(seq: int) -> tuple[Any, str]:
            env = parse_envelope(seal_bytes(b"clip %d" % seq, {"frame_sha256": []}, device_id="dev-r",
                                            sequence=seq, signing_key=device_key, station_public_key=hpke,
                                            pattern="strike", event_window_ms=(0, 400), clip_wall_unix_ms=(0, 1000),
                                            profile={"id": "bw-polg-44-4", "version": "1", "sha256": "ab" * 32},
                                            model_sha256="cd" * 32, content_type="video/webm", frames=1))
            if store.blobs.kind == "files":
                path = tmp / "envelopes" / "dev-r" / f"{seq:016d}-{env.sha256[:16]}.env"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(env.data)
                return env, str(path.relative_to(tmp))
            return env, store.blobs.put("dev-r", seq, env.sha256, env.data)

        with ThreadPoolExecutor(8 if store.blobs.kind == "s3" else 2) as pool:
            for lo in range(1, n + 1, 5000):
                batch = list(pool.map(make, range(lo, min(n, lo + 4999) + 1)))
                with store.db.transaction() as tx:
                    for env, location in batch:
                        h = env.header
                        tx.execute("INSERT INTO clips(clip_id, device_id, sequence, envelope_sha256, path, bytes, "
                                   "pattern, created_unix_ms, received_unix_ms, header_json) VALUES "
                                   "(?,?,?,?,?,?,?,?,?,?)",
                                   (env.sha256[:16], h.device_id, h.sequence, env.sha256, location, len(env.data),
                                    h.pattern, h.created_unix_ms, received, canonical_json(h.to_json()).decode()))
        fill_s = time.perf_counter() - t
    finally:
        store.close()
    clock_t = received / 1000 + 73 * 3600
    audit = AuditLog(tmp / "audit.jsonl", signer=station_key, origin="station", device="station",
                     clock=lambda: clock_t)
    retained = StationClipStore(tmp, settings=settings)
    try:
        t = time.perf_counter()
        result = RetentionJob(retained, RetentionPolicy(), audit=audit, clock=lambda: clock_t).run()
        took = time.perf_counter() - t
    finally:
        retained.close()
        audit.close()
    records = 0
    for path in sorted(tmp.glob("audit.jsonl*")):   # the active file and its sealed segments
        with open(path, "rb") as fh:
            for line in fh:
                records += json.loads(line).get("kind") == "retention.delete"
    verified = verify_log(tmp / "audit.jsonl").ok
    left = ClipStore(tmp, settings=settings)
    try:
        remaining, objects = left.count(), sum(1 for _ in left.blobs.locations())
    finally:
        left.close()
    return [
        (f"[{label}] retention: stored clips (filled in {fill_s:.0f} s)", n, "clips"),
        (f"[{label}] retention: time to delete all (expired)", round(took, 1), "s"),
        (f"[{label}] retention: deletions/s", round(len(result.deleted) / took, 1), "clips/s"),
        (f"[{label}] retention: retention.delete records (one per deletion)", records, "records"),
        (f"[{label}] retention: errors, rows and objects left", len(result.errors) + remaining + objects, "items"),
        (f"[{label}] retention: audit log verifies", int(verified), "1=yes"),
    ]


if __name__ == "__main__":
    for name, value, unit in run():
        print(f"{name:<80} {value:>10} {unit}")
