"""Tamper stage cost: milliseconds per sample and per analysed frame, on the shipped sample clip.

The detector looks at one ring frame every 1/tamper.fps s (default 1 s) while pose runs at
analysis.fps (default 10): the cost per analysed frame is the cost per sample times
tamper.fps / analysis.fps. Frames are the sample clip (768x432) and the same frames upscaled
to the ring's 960x540, with one person box to mask, as in the pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "one-by-one-person-detection.mp4"


def _frames(width: int, count: int = 30) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(SAMPLE))
    frames = []
    try:
        i = 0
        while len(frames) < count:
            ok, image = cap.read()
            if not ok:
                break
            if i % 10 == 0:
                h = round(image.shape[0] * width / image.shape[1])
                frames.append(cv2.resize(image, (width, h), interpolation=cv2.INTER_LINEAR))
            i += 1
    finally:
        cap.release()
    return frames


def _ms_per_sample(frames: list[np.ndarray], repeats: int = 3) -> tuple[float, float, float]:
    from appliance.box.config import TamperConfig
    from appliance.box.tamper import TamperDetector, TamperReference, learn_from_images

    cfg = TamperConfig()
    mode, ref = learn_from_images(frames[:10], source="provision", night_max_chroma=cfg.night_max_chroma)
    w, h = frames[0].shape[1], frames[0].shape[0]
    box = np.array([[0.4 * w, 0.3 * h, 0.5 * w, 0.9 * h]], np.float32)
    detector = TamperDetector(cfg, TamperReference({mode: ref}))
    detector.update(frames[0], 0.0, 0.0, box)   # warm-up (ORB allocates)
    t, n = 1.0, 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for f in frames:
            detector.update(f, t, t, box)
            t += 1.0
            n += 1
    per_sample = (time.perf_counter() - start) / n * 1000
    cpu_per_sample = (time.process_time() - cpu) / n * 1000
    return per_sample, cpu_per_sample, cpu_per_sample * cfg.fps / 10.0


def run() -> list[tuple[str, str, str]]:
    rows = []
    for width in (768, 960):
        frames = _frames(width)
        per_sample, cpu, per_frame = _ms_per_sample(frames)
        rows.append((f"tamper sample ({width}px frame: measures, ORB, match, homography)", f"{per_sample:.1f}",
                     "ms/sample"))
        rows.append(("  CPU time per sample (all threads; wall time above suffers from other load)", f"{cpu:.1f}",
                     "ms/sample"))
        rows.append((f"  amortised CPU per analysed frame (tamper.fps 1, analysis.fps 10, {width}px)",
                     f"{per_frame:.2f}", "ms/frame"))
    return rows
