"""Seal+sign throughput for a 10 MB clip, and the station's verify and open rates.

Rows: (name, value, unit). Run: .venv/bin/python -c "import bench.seal as b; print(b.run())"
"""

from __future__ import annotations

import os
import time


def _best_rate(fn, megabytes: float, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return megabytes / best


def run() -> list[tuple[str, float, str]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.box.seal import open_envelope, seal_clip, verify_envelope
    from appliance.contracts.keys import HpkePrivateKey
    from appliance.contracts.synthetic import synthetic_clip

    size = 10 * 1024 * 1024
    mb = size / 1e6
    clip = synthetic_clip(frames=125, video=os.urandom(size))
    device = Ed25519PrivateKey.generate()
    rows = []
    # Steady state of a long-running sealer: the first 10 MB allocations of a fresh process are
    # mmap'd and page-faulted (about 2x slower); glibc then keeps large buffers on the heap.
    warm_key = HpkePrivateKey.generate("X25519")
    warm = seal_clip(clip, device_id="bench", sequence=1, signing_key=device,
                     station_public_key=warm_key.public_key())
    for _ in range(3):
        open_envelope(warm, warm_key, device.public_key())
    for kem in ("MLKEM768_X25519", "X25519"):
        station = HpkePrivateKey.generate(kem)
        public = station.public_key()
        envelope = seal_clip(clip, device_id="bench", sequence=1, signing_key=device, station_public_key=public)
        for _ in range(3):  # warm-up: fresh 10 MB buffers fault in pages on the first passes
            seal_clip(clip, device_id="bench", sequence=1, signing_key=device, station_public_key=public)
        seal_rate = _best_rate(lambda public=public: seal_clip(clip, device_id="bench", sequence=1,
                                                                 signing_key=device, station_public_key=public),
                               mb, 10)
        rows.append((f"seal+sign 10 MB clip ({kem})", round(seal_rate, 1), "MB/s"))
        if kem == "MLKEM768_X25519":
            rows.append(("verify signature 10 MB envelope", round(
                _best_rate(lambda e=envelope: verify_envelope(e, device.public_key()), mb, 5), 1), "MB/s"))
            rows.append(("verify+decrypt 10 MB envelope", round(
                _best_rate(lambda s=station, e=envelope: open_envelope(e, s, device.public_key()), mb, 3), 1), "MB/s"))
    return rows


if __name__ == "__main__":
    for name, value, unit in run():
        print(f"{name:<45} {value:>10} {unit}")
