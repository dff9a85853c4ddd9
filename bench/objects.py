"""Object stage cost: YOLOX-Nano per crop, and what the weapon pattern adds per analysed frame.

    make bench        (or: .venv/bin/python -m bench objects)

* one detector run (416×416) on real frames, 1 and 2 intra-op threads;
* the object stage in the pipeline on the bundled clips (pose → tracking → object stage at
  10 fps, default budget: at most 2 crops per analysed frame, each person every 1 s unless a
  candidate is open): crops per analysed frame and ms per analysed frame, next to pose's.
"""

from __future__ import annotations

import time

import numpy as np

from appliance.box.config import ObjectsConfig, default_config
from appliance.box.objects import ObjectDetector, ObjectStage
from appliance.box.pose import estimator_from_config
from appliance.box.tracking import Tracker
from appliance.contracts.types import Detections
from bench.pose import VIDEOS, real_frames


def _detector_rows() -> list[tuple[str, float, str]]:
    frames = real_frames(n_per_video=6)
    rows = []
    for threads in (2, 1):
        det = ObjectDetector("yolox-nano", threads=threads)
        det(frames[0])
        start = time.perf_counter()
        for f in frames:
            det(f, classes=("knife", "baseball bat"))
        rows.append((f"yolox-nano 416x416, one crop or frame, threads={threads}",
                     round((time.perf_counter() - start) * 1e3 / len(frames), 1), "ms/run"))
    return rows


def _stage_rows() -> list[tuple[str, float, str]]:
    from appliance.box.capture import FileSource

    cfg = default_config()
    est = estimator_from_config(cfg.pose)
    stage = ObjectStage(ObjectsConfig(enabled=True))
    rows = []
    for video in VIDEOS:
        tracker = Tracker(cfg.tracking)
        pose_s = obj_s = 0.0
        crops = analysed = 0
        next_t = None
        for index, t, _, image in FileSource(str(video), max_width=960).frames():
            if analysed >= 150:
                break
            if next_t is not None and t < next_t - 1e-6:
                continue
            next_t = t + 0.1
            tracker.frame_size = (image.shape[1], image.shape[0])
            t0 = time.perf_counter()
            d = est(image)
            t1 = time.perf_counter()
            tracked = tracker.update(Detections(index, t, d.boxes, d.scores, d.keypoints))
            t2 = time.perf_counter()
            scan = stage.update(image, tracked, set())
            obj_s += time.perf_counter() - t2
            pose_s += t1 - t0
            crops += len(scan.scanned)
            analysed += 1
        rows += [(f"object stage on {video.name} ({analysed} analysed frames): crops per frame",
                  round(crops / max(analysed, 1), 2), "crops"),
                 (f"object stage on {video.name}: added per analysed frame (pose: {pose_s * 1e3 / analysed:.1f} ms)",
                  round(obj_s * 1e3 / max(analysed, 1), 1), "ms/frame")]
    return rows


def run() -> list[tuple[str, float, str]]:
    np.random.seed(0)
    return _detector_rows() + _stage_rows()
