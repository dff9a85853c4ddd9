"""YOLO11n-pose (AGPL-3.0) side by side with MoveNet MultiPose Lightning (Apache-2.0).

    make bench        (or: .venv/bin/python -m bench pose_models)      needs ../shared/data

* pose agreement: mean OKS of each model's persons against YOLO11n-pose fp32 at 640 (the
  reference; MOT has boxes but no keypoint ground truth) on the MOT sequences (2 frames/s) and
  the normal/ footage (1 frame/s), and the share of the reference's persons (score >= 0.5) each
  model finds (IoU >= 0.5);
* ms per frame on those frames (2 threads, the model's own input width);
* tracking MOTA / IDF1 on the MOT sequences (bench/tracking.py's protocol, 10 fps), per model.

The fight and fall figures come from `appliance eval` with ``[pose] model = ...``
(docs/models.md lists the commands and the results).
"""

from __future__ import annotations

import configparser
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from appliance.box.behaviour.evaluate import video_frames
from appliance.box.config import PoseConfig, TrackingConfig
from appliance.box.pose import estimator_from_config
from bench.pose import agreement
from bench.tracking import Counts, _load_gt, _sequence_detections, _shared_mot, _track, evaluate

MODELS = ("yolo11n-pose", "yolo11n-pose-int8", "movenet-multipose-lightning")
REFERENCE = "yolo11n-pose"


def _frames(root: Path) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {"mot": [], "normal": []}
    for seq in sorted((root / "mot").glob("*")):
        source = seq / "video.mp4" if (seq / "video.mp4").exists() else seq / "img1"
        if not source.exists():
            continue
        info = configparser.ConfigParser()
        info.read(seq / "seqinfo.ini")
        step = 0.5
        next_t = 0.0
        for t, image in video_frames(source, 960):
            if t >= next_t - 1e-6:
                groups["mot"].append(image)
                next_t += step
    for video in sorted((root / "normal").glob("*.mp4")):
        next_t = 0.0
        for t, image in video_frames(video, 960):
            if t >= next_t - 1e-6:
                groups["normal"].append(image)
                next_t += 1.0
    return groups


def _run(est, frames: list[np.ndarray]) -> tuple[list, float]:
    est(frames[0])
    outs, start = [], time.perf_counter()
    for f in frames:
        outs.append(est(f))
    return outs, (time.perf_counter() - start) * 1e3 / len(frames)


def _confident(dets, min_score: float = 0.5):
    keep = dets.scores >= min_score
    return type(dets)(dets.frame_index, dets.t, dets.boxes[keep], dets.scores[keep], dets.keypoints[keep])


def run() -> list[tuple[str, float, str]]:
    root = _shared_mot().parent
    if not (root / "mot").is_dir() and not (root / "normal").is_dir():
        return []
    groups = _frames(root)
    rows: list[tuple[str, float, str]] = []
    outputs: dict[str, dict[str, list]] = {}
    for model in MODELS:
        est = estimator_from_config(PoseConfig(model=model))
        outputs[model] = {}
        for group, frames in groups.items():
            if not frames:
                continue
            outs, ms = _run(est, frames)
            outputs[model][group] = outs
            rows.append((f"{model} on {group} ({len(frames)} frames, input width {est.input_width}, 2 threads)",
                         round(ms, 1), "ms/frame"))
    for model in MODELS:
        if model == REFERENCE:
            continue
        for group, ref in outputs[REFERENCE].items():
            m_oks, recall = agreement([_confident(r) for r in ref], outputs[model][group])
            rows += [(f"{model} vs {REFERENCE} on {group}: mean OKS of matched persons", round(m_oks, 3), ""),
                     (f"{model} vs {REFERENCE} on {group}: persons found (reference score >= 0.5)",
                      round(recall, 3), "")]
    # Tracking on MOT, each model with the product's tracker and its low-score stage.
    mot = root / "mot"
    sequences = sorted(p for p in mot.glob("*") if (p / "gt.txt").exists())
    empty = (np.zeros(0, int), np.zeros((0, 4)))
    for model in MODELS:
        est = estimator_from_config(replace(PoseConfig(model=model), score_threshold=0.1))
        total = Counts()
        for seq in sequences:
            gt = _load_gt(seq / "gt.txt")
            dets, _, size = _sequence_detections(seq, est)
            tracked = _track(dets, TrackingConfig(), size)
            total += evaluate([(*gt.get(f, empty), ids, boxes) for f, ids, boxes in tracked])
        rows += [(f"MOT all ({len(sequences)} sequences), {model}: MOTA", round(100 * total.mota, 1), "%"),
                 (f"MOT all ({len(sequences)} sequences), {model}: IDF1", round(100 * total.idf1, 1), "%"),
                 (f"MOT all ({len(sequences)} sequences), {model}: id switches", total.idsw, "count")]
    return rows
