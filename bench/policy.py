"""Privacy-mask cost per frame, gate decisions per second, and in-RAM clip build time.

    .venv/bin/python -m bench policy
"""

from __future__ import annotations

import functools
import time


def _median_ms(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return round(samples[len(samples) // 2] * 1e3, 3)


def run() -> list[tuple[str, float, str]]:
    import cv2
    import numpy as np

    from appliance.box.clip import build_clip
    from appliance.box.config import Region, package_root
    from appliance.box.policy import MaskSet, PolicyGate, ZoneSet, load_profile
    from appliance.contracts.types import Event, Frame, Pattern, Trigger

    rows: list[tuple[str, float, str]] = []
    regions = (
        Region("window", ((0.10, 0.15), (0.45, 0.10), (0.50, 0.70), (0.12, 0.65))),
        Region("door", ((0.70, 0.20), (0.90, 0.20), (0.90, 0.95), (0.70, 0.95))),
    )
    rng = np.random.default_rng(0)
    for w, h in ((960, 540), (1920, 1080)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks = MaskSet.from_regions(regions, w, h)
        apply = functools.partial(masks.apply, image)
        rasterise = functools.partial(MaskSet.from_regions, regions, w, h)
        rows.append((f"mask apply (2 polygons, copy) {w}x{h}", _median_ms(apply, 200), "ms"))
        rows.append((f"plain image.copy() {w}x{h} (reference)", _median_ms(image.copy, 200), "ms"))
        rows.append((f"mask rasterise (first frame of a size) {w}x{h}", _median_ms(rasterise, 20), "ms"))

    gate = PolicyGate(load_profile("bw-polg-44-4"), ZoneSet.from_regions(regions[:1]))
    event = Event(Pattern.PUSH, 10.0, 11.0, (1, 2), 0.9)
    positions = {1: (0.3, 0.5), 2: (0.8, 0.9)}
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        gate.decide(event, positions)
    rows.append(("gate decisions (with one zone)", round(n / (time.perf_counter() - t0)), "/s"))

    cap = cv2.VideoCapture(str(package_root() / "samples" / "demo_skeleton.mp4"))
    images = []
    while len(images) < 72:
        ok, image = cap.read()
        if not ok:
            break
        images.append(cv2.resize(image, (960, 540), interpolation=cv2.INTER_AREA))
    cap.release()
    # A 10 s clip at 12.5 fps = 125 frames: loop the 72-frame sample.
    frames = [Frame(i, i / 12.5, 0.0, images[i % len(images)]) for i in range(125)]
    decision = gate.decide(Event(Pattern.PUSH, 5.0, 5.0, (1,), 0.9), {1: (0.3, 0.5)})
    trigger = Trigger(decision, 0.0, frames[-1].t)
    masks = MaskSet.from_regions(regions, 960, 540)
    t0 = time.perf_counter()
    clip = build_clip(trigger, frames, {}, "0" * 64, masks, 12.5)
    elapsed = time.perf_counter() - t0
    rows.append(("clip build 960x540, 125 frames (10 s): encode + decode-hash", round(elapsed, 2), "s"))
    rows.append(("clip build per frame", round(elapsed / len(frames) * 1e3, 1), "ms"))
    rows.append(("clip size 960x540, 10 s", round(len(clip.video) / 1e6, 2), "MB"))
    return rows
