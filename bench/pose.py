"""Pose inference speed per variant, agreement with fp32 (OKS), end-to-end pipeline fps and RSS.

    make bench        (or: .venv/bin/python -m bench pose)

Variants: fp32 at 640×640 (the square baseline), fp32 at 640×384 (16:9 letterbox, what the
appliance runs), INT8 at 640×384, each with 1 and 2 intra-op threads. Agreement is the mean
OKS between a variant's persons and fp32 640×384's on real frames not used for calibration;
a variant may become the default only at mean OKS ≥ 0.9 and person recall ≥ 0.95.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from appliance.box.capture import FileSource, downscale
from appliance.box.config import default_config, package_root
from appliance.box.pose.estimator import Letterbox, PoseEstimator

ROOT = package_root()
VIDEOS = [ROOT / "samples" / "demo_skeleton.mp4", ROOT / "samples" / "one-by-one-person-detection.mp4"]
# COCO keypoint sigmas (cocoapi), for OKS.
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def real_frames(n_per_video: int = 12, offset: float = 0.37) -> list[np.ndarray]:
    """Frames at positions that the INT8 calibration (evenly spaced from frame 0) did not use."""
    frames = []
    for video in VIDEOS:
        cap = cv2.VideoCapture(str(video))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        step = total / n_per_video
        for k in range(n_per_video):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int((k + offset) * step))
            ok, img = cap.read()
            if ok:
                frames.append(downscale(img, 960))
        cap.release()
    return frames


def square_blob(est: PoseEstimator, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
    """640×640 letterbox (the square baseline the issue quotes)."""
    h, w = image.shape[:2]
    s = 640 / max(w, h)
    nw, nh = round(w * s), round(h * s)
    px, py = (640 - nw) // 2, (640 - nh) // 2
    canvas = np.full((640, 640, 3), 114, np.uint8)
    canvas[py:py + nh, px:px + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return cv2.dnn.blobFromImage(canvas, 1 / 255.0, swapRB=True), Letterbox(s, px, py, 640, 640)


def time_variant(est: PoseEstimator, frames, square: bool, repeats: int = 2):
    blobs = [square_blob(est, f) if square else est.preprocess(f) for f in frames]
    est.infer_raw(blobs[0][0])  # warm-up
    outs, t0 = [], time.perf_counter()
    for _ in range(repeats):
        outs = [est.decode(est.infer_raw(b), lb) for b, lb in blobs]
    ms = (time.perf_counter() - t0) / (repeats * len(blobs)) * 1000
    return ms, outs


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def oks(ref_kp: np.ndarray, kp: np.ndarray, ref_box: np.ndarray) -> float:
    area = max(1.0, (ref_box[2] - ref_box[0]) * (ref_box[3] - ref_box[1]))
    vis = ref_kp[:, 2] > 0.5
    if not vis.any():
        return 1.0
    d2 = ((ref_kp[:, :2] - kp[:, :2]) ** 2).sum(axis=1)
    e = d2 / (2 * area * SIGMAS ** 2 * 4)   # cocoapi: vars = (2*sigma)^2
    return float(np.exp(-e[vis]).mean())


def agreement(reference, candidate) -> tuple[float, float]:
    """(mean OKS over matched persons, recall of reference persons)."""
    scores, matched, total = [], 0, 0
    for ref, cand in zip(reference, candidate):
        total += len(ref)
        used = set()
        for i in range(len(ref)):
            best, best_j = 0.0, -1
            for j in range(len(cand)):
                if j not in used and (v := iou(ref.boxes[i], cand.boxes[j])) > best:
                    best, best_j = v, j
            if best >= 0.5:
                used.add(best_j)
                matched += 1
                scores.append(oks(ref.keypoints[i], cand.keypoints[best_j], ref.boxes[i]))
    return (float(np.mean(scores)) if scores else 0.0), (matched / total if total else 1.0)


def pipeline_figures(video: Path, analyse_every_frame: bool = True, max_frames: int = 300):
    """End-to-end: decode → downscale → masks → ring → pose → tracking → behaviour → gate."""
    from appliance.box.runtime import Pipeline, analyse_video
    src = FileSource(str(video), max_width=960)
    fps = src.fps if analyse_every_frame else 10.0
    cfg = default_config(str(video), analysis={"fps": min(fps, 60.0)})
    pipe = Pipeline(cfg)

    def limited():
        for item in src.frames():
            if item[0] >= max_frames:
                return
            yield item

    t0 = time.perf_counter()
    stats = analyse_video(pipe, limited())
    wall = time.perf_counter() - t0
    outside = wall - stats.inference_s
    return stats.analysed_frames / wall, outside / stats.inference_s, stats.analysed_frames


RSS_SCRIPT = """
import resource, sys
from appliance.box.capture import FileSource
from appliance.box.config import default_config
from appliance.box.runtime import Pipeline, analyse_video
src = FileSource(sys.argv[1], max_width=960, loop=True)
pipe = Pipeline(default_config(sys.argv[1]))
limit = float(sys.argv[2])
def frames():
    for item in src.frames():
        if item[1] > limit:
            return
        yield item
analyse_video(pipe, frames())
print(pipe.ring.nbytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def pipeline_rss(video: Path, stream_seconds: float = 20.0) -> tuple[float, float]:
    """(ring MB, peak RSS MB) of one camera's pipeline in a fresh process, ring filled."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(video), str(stream_seconds)],
                         capture_output=True, text=True, check=True, timeout=900).stdout.split()
    return int(out[0]) / 2**20, int(out[1]) / 1024


def run() -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    frames = real_frames()
    reference = None
    for model in ("yolo11n-pose", "yolo11n-pose-int8"):
        for threads in (2, 1):
            est = PoseEstimator(model, threads=threads)
            for square in (True, False):
                shape = "640x640" if square else "640x384"
                if square and model != "yolo11n-pose":
                    continue
                ms, outs = time_variant(est, frames, square)
                rows.append((f"pose {model} {shape} threads={threads}", round(ms, 1), "ms/frame"))
                if model == "yolo11n-pose" and not square and threads == 2:
                    reference = outs
                elif reference is not None and threads == 2:
                    m_oks, recall = agreement(reference, outs)
                    rows.append((f"agreement {model} {shape} vs fp32 640x384: mean OKS", round(m_oks, 3), ""))
                    rows.append((f"agreement {model} {shape} vs fp32 640x384: person recall", round(recall, 3), ""))
    # The square baseline ran before the reference existed: compare it now.
    est = PoseEstimator("yolo11n-pose", threads=2)
    _, square_outs = time_variant(est, frames, True, repeats=1)
    m_oks, recall = agreement(reference, square_outs)
    rows.append(("agreement fp32 640x640 vs fp32 640x384: mean OKS", round(m_oks, 3), ""))
    for video in VIDEOS:
        fps, overhead, n = pipeline_figures(video)
        rows.append((f"pipeline {video.name} (every frame analysed, {n} frames)", round(fps, 1), "analysed fps"))
        rows.append((f"pipeline {video.name}: time outside inference", round(overhead * 100, 1), "% of inference"))
    ring_mb, rss_mb = pipeline_rss(VIDEOS[0])
    rows.append(("one camera, 1080p source, 15 s ring full: ring buffer", round(ring_mb), "MB"))
    rows.append(("one camera, 1080p source, 15 s ring full: peak RSS of the process", round(rss_mb), "MB"))
    return rows
