"""A hostile enrolled device floods the station without reading its replies.

Shared by ``python -m bench hostile`` and tests/adversarial/test_flood.py (issue 12, finding 1):
a real station process on loopback, two enrolled devices. The hostile one sends ``flood``
heartbeats as fast as its socket takes them and never reads a reply, then disconnects; the
legitimate one sends probes meanwhile and measures each round trip. Returns the figures and
whether the station process survived (libzmq aborted it in 4.3.x with SNDTIMEO=1000 replies
to the non-reading peer).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def start_station(station_dir: Path, tmp: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    ready, log = tmp / "ready", tmp / "station.log"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "station", "serve", "--dir", str(station_dir),
         "--bind", "tcp://127.0.0.1:*", "--ready-file", str(ready), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("station did not start: " + log.read_text()[-2000:])
        time.sleep(0.02)
    return proc, ready.read_text().strip()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flood(tmp: Path, *, flood: int = 20000, probes: int = 30, probe_gap_s: float = 0.2,
          linger_s: float = 2.0, audit: bool = False, peer_rate: float | None = None) -> dict[str, Any]:
    import zmq

    from appliance.box.uplink.client import ClientConfig, UplinkClient, UplinkTimeout, probe
    from appliance.contracts import protocol as p
    from appliance.contracts.curve import load_curve_public
    from appliance.contracts.keys import load_signing_public_key
    from appliance.station.enrol import create_device_keys, enrol_device
    from appliance.station.keys import StationKeyPaths, generate_station_keys

    station_dir = tmp / "station"
    generate_station_keys(station_dir)
    hostile = create_device_keys(tmp / "hostile", "hostile-dev")
    legit = create_device_keys(tmp / "legit", "legit-dev")
    enrol_device(station_dir, hostile)
    enrol_device(station_dir, legit)
    paths = StationKeyPaths.of(station_dir)
    extra = ([] if audit else ["--no-audit"]) + ([] if peer_rate is None else ["--peer-rate", str(peer_rate)])
    proc, endpoint = start_station(station_dir, tmp, *extra)
    ctx = zmq.Context()
    result: dict[str, Any] = {"flood": flood}
    try:
        public, secret = hostile.curve_keypair()
        bad = ctx.socket(zmq.DEALER)
        bad.curve_serverkey = load_curve_public(paths.curve_public)
        bad.curve_publickey, bad.curve_secretkey = public, secret
        bad.setsockopt(zmq.SNDHWM, 0)
        bad.setsockopt(zmq.RCVHWM, 1)     # it never reads: its receive side fills at once
        bad.setsockopt(zmq.RCVBUF, 4096)  # ... and so does the kernel's
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(endpoint)
        body = p.canonical_json({"type": "heartbeat", "device_id": "hostile-dev", "sent_unix_ms": p.now_ms(),
                                 "counter": 1, "health": {"pad": "x" * 2000}, "pixel_health": None,
                                 "checkpoints": []})
        for _ in range(flood):
            bad.send_multipart([p.PROTOCOL, p.HEARTBEAT, p.new_request_id(), body])
        lpub, lsec = legit.curve_keypair()
        client = UplinkClient(ClientConfig(
            endpoint=endpoint, curve_public=lpub, curve_secret=lsec,
            station_curve_public=load_curve_public(paths.curve_public),
            station_signing_public=load_signing_public_key(paths.signing_public), ack_timeout_s=5.0))
        latencies, timeouts = [], 0
        try:
            for _ in range(probes):
                t0 = time.perf_counter()
                try:
                    probe(client, "legit-dev", legit.signing_key())
                    latencies.append((time.perf_counter() - t0) * 1000)
                except UplinkTimeout:
                    timeouts += 1
                time.sleep(probe_gap_s)
            bad.close(0)  # the hostile peer vanishes with thousands of replies owed to it
            time.sleep(linger_s)
            after = []
            for _ in range(3):
                t0 = time.perf_counter()
                try:
                    probe(client, "legit-dev", legit.signing_key())
                    after.append((time.perf_counter() - t0) * 1000)
                except UplinkTimeout:
                    timeouts += 1
        finally:
            client.close()
        result.update(
            legit_probe_ms_median=statistics.median(latencies) if latencies else None,
            legit_probe_ms_max=max(latencies) if latencies else None,
            legit_timeouts=timeouts, probes_after_disconnect=len(after),
            station_alive=proc.poll() is None, station_returncode=proc.poll(),
            station_rss_kib=rss_kib(proc.pid) if proc.poll() is None else None)
    finally:
        ctx.term()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        result["station_log_tail"] = (tmp / "station.log").read_text()[-1500:]
    return result


def run() -> list[tuple[str, float, str]]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as d:
        r = flood(Path(d), audit=True)   # as in production: every served message is audited (fsync)
    if not r["station_alive"]:
        raise RuntimeError(f"station died under the flood (exit {r['station_returncode']})")
    return [
        ("legitimate probe round trip while a hostile peer floods 20k unread requests (median)",
         r["legit_probe_ms_median"], "ms"),
        ("legitimate probe round trip under that flood (max)", r["legit_probe_ms_max"], "ms"),
        ("legitimate probes timed out (5 s) under that flood", r["legit_timeouts"], "probes"),
        ("station resident memory after the flood and the peer's disconnect", r["station_rss_kib"] / 1024, "MiB"),
    ]


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(flood(Path(d), flood=int(sys.argv[1]) if len(sys.argv) > 1 else 20000), indent=1))
