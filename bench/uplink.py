"""Station ingest rate for 1 MB clips over CurveZMQ on loopback, and seal-to-ack latency.

The station runs as its own process (``appliance station serve``), as in production, with
fsync'd envelope files and a WAL index; the device side sends one envelope in flight
(Lazy Pirate), so the rate is the full verify → store → durable → signed-ack round trip.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run() -> list[tuple[str, float, str]]:
    rows = _run(audit=True)
    no_audit = _run(audit=False, latency=False)
    return [*rows, ("station ingest without the station audit log (fsync budget)", no_audit[0][1], "clips/s")]


def _run(*, audit: bool, latency: bool = True, clips: int = 100,
         clip_bytes: int = 1024 * 1024) -> list[tuple[str, float, str]]:
    from appliance.box.seal import seal_clip
    from appliance.box.uplink.client import ClientConfig, UplinkClient
    from appliance.contracts import protocol as p
    from appliance.contracts.curve import load_curve_public
    from appliance.contracts.keys import load_hpke_public_key, load_signing_public_key
    from appliance.contracts.synthetic import synthetic_clip
    from appliance.station.enrol import create_device_keys, enrol_device
    from appliance.station.keys import StationKeyPaths, generate_station_keys

    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp:
        tmp_path = Path(tmp)
        station_dir = tmp_path / "station"
        generate_station_keys(station_dir)
        keys = create_device_keys(tmp_path / "dev", "bench-dev")
        enrol_device(station_dir, keys)
        paths = StationKeyPaths.of(station_dir)
        ready = tmp_path / "ready"
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "station", "serve", "--dir", str(station_dir),
             "--bind", "tcp://127.0.0.1:*", "--ready-file", str(ready)] + ([] if audit else ["--no-audit"]),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("station did not start")
                time.sleep(0.02)
            public, secret = keys.curve_keypair()
            client = UplinkClient(ClientConfig(
                endpoint=ready.read_text().strip(), curve_public=public, curve_secret=secret,
                station_curve_public=load_curve_public(paths.curve_public),
                station_signing_public=load_signing_public_key(paths.signing_public), ack_timeout_s=30))
            station_public = load_hpke_public_key(paths.hpke_public)
            signing_key = keys.signing_key()
            clip = synthetic_clip(frames=25, video=os.urandom(clip_bytes))

            def seal(seq: int) -> bytes:
                return seal_clip(clip, device_id="bench-dev", sequence=seq, signing_key=signing_key,
                                 station_public_key=station_public)

            try:
                client.request(p.ENVELOPE, seal(1))  # warm-up: connection, handshake, first table pages
                envelopes = [seal(seq) for seq in range(2, clips + 2)]
                t0 = time.perf_counter()
                for env in envelopes:
                    if not client.request(p.ENVELOPE, env).ok:
                        raise RuntimeError("station refused a benchmark envelope")
                ingest = clips / (time.perf_counter() - t0)
                latencies = []
                for seq in range(clips + 2, clips + 2 + (30 if latency else 0)):
                    t = time.perf_counter()
                    if not client.request(p.ENVELOPE, seal(seq)).ok:
                        raise RuntimeError("station refused a benchmark envelope")
                    latencies.append((time.perf_counter() - t) * 1000)
            finally:
                client.close()
        finally:
            proc.terminate()
            proc.wait(10)
    latencies.sort()
    if not latencies:
        return [("station ingest", round(ingest, 1), "clips/s")]
    return [
        ("station ingest, 1 MB clips, loopback CurveZMQ, audit log on", round(ingest, 1), "clips/s"),
        ("seal-to-ack latency 1 MB clip, median", round(statistics.median(latencies), 1), "ms"),
        ("seal-to-ack latency 1 MB clip, p95", round(latencies[int(0.95 * (len(latencies) - 1))], 1), "ms"),
    ]


if __name__ == "__main__":
    for name, value, unit in run():
        print(f"{name:<50} {value:>10} {unit}")
