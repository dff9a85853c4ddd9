"""Tracker benchmark: update cost, and MOTA / IDF1 of pose detections → tracker on MOT data.

The MOT part runs only where ``$SHARED_DATA/mot`` (default ``../shared/data/mot`` next to
the checkout) holds MOTChallenge 2DMOT2015 sequences (``gt.txt`` and ``video.mp4`` or
``img1/``). That data is CC BY-NC-SA: it is read for evaluation only and nothing derived from
it is written anywhere; the figures are printed, not stored.

Each sequence is decoded, sampled at the analysis rate (10 fps, real timestamps, so the
tracker sees the uneven steps a 25 fps source gives), run through the bundled pose model,
and the tracker's persons are matched to the ground-truth boxes of the same frames at
IoU ≥ 0.5. The metrics are the CLEAR-MOT MOTA (Bernardin & Stiefelhagen 2008) and IDF1
(Ristani et al. 2016), pooled over all sequences.

    .venv/bin/python -m bench.tracking
    BENCH_POSE_INPUT_WIDTH=960 .venv/bin/python -m bench.tracking   # far-away persons (PETS09)
"""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import numpy as np

from appliance.box.config import PoseConfig, TrackingConfig, package_root
from appliance.box.tracking import Tracker, linear_assignment
from appliance.box.tracking.similarity import iou_matrix
from appliance.contracts.types import Detections

ANALYSIS_FPS = 10.0
MATCH_IOU = 0.5


def _shared_mot() -> Path:
    return Path(os.environ.get("SHARED_DATA", package_root().parent / "shared" / "data")) / "mot"


# ---------------------------------------------------------------------------------------
# Metrics


@dataclass
class Counts:
    gt: int = 0
    fp: int = 0
    fn: int = 0
    idsw: int = 0
    hyp: int = 0
    idtp: int = 0

    def __iadd__(self, other: Counts) -> Self:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    @property
    def mota(self) -> float:
        return 1.0 - (self.fn + self.fp + self.idsw) / max(self.gt, 1)

    @property
    def idf1(self) -> float:
        return 2 * self.idtp / max(self.gt + self.hyp, 1)


def evaluate(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> Counts:
    """frames: per frame (gt_ids, gt_boxes xyxy, hyp_ids, hyp_boxes xyxy) → counts."""
    c = Counts()
    last_match: dict[int, int] = {}          # gt id → hyp id it was last matched to
    pair_frames: dict[tuple[int, int], int] = defaultdict(int)
    for gt_ids, gt_boxes, hyp_ids, hyp_boxes in frames:
        c.gt += len(gt_ids)
        c.hyp += len(hyp_ids)
        iou = iou_matrix(gt_boxes, hyp_boxes)
        ok = iou >= MATCH_IOU
        for g, h in zip(*np.nonzero(ok)):
            pair_frames[int(gt_ids[g]), int(hyp_ids[h])] += 1
        # CLEAR-MOT: keep last frame's correspondences that still hold, assign the rest.
        cost = np.where(ok, 1.0 - iou, np.inf)
        for g, gid in enumerate(gt_ids):
            prev = last_match.get(int(gid))
            hits = np.flatnonzero(hyp_ids == prev) if prev is not None else []
            if len(hits) and ok[g, hits[0]]:
                cost[g, :] = np.inf
                cost[:, hits[0]] = np.inf
                cost[g, hits[0]] = -1.0          # forced, cheaper than anything else
        matches, _, _ = linear_assignment(cost, 1.0 - MATCH_IOU)
        for g, h in matches:
            gid, hid = int(gt_ids[g]), int(hyp_ids[h])
            if gid in last_match and last_match[gid] != hid:
                c.idsw += 1
            last_match[gid] = hid
        c.fn += len(gt_ids) - len(matches)
        c.fp += len(hyp_ids) - len(matches)
    # IDF1: one-to-one gt↔hyp identity matching maximising frames in agreement.
    gids = sorted({g for g, _ in pair_frames})
    hids = sorted({h for _, h in pair_frames})
    if gids:
        agree = np.zeros((len(gids), len(hids)))
        for (g, h), n in pair_frames.items():
            agree[gids.index(g), hids.index(h)] = n
        # cost −agree, unmatched costs 0: the minimum is exactly the maximum-weight matching
        matches, _, _ = linear_assignment(np.where(agree > 0, -agree, np.inf), 0.0)
        c.idtp = int(agree[matches[:, 0], matches[:, 1]].sum())
    return c


# ---------------------------------------------------------------------------------------
# Data


def _load_gt(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    rows = rows[rows[:, 6] != 0]             # conf 0 = ignore
    out = {}
    for frame in np.unique(rows[:, 0]).astype(int):
        r = rows[rows[:, 0] == frame]
        boxes = np.stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]], axis=1)
        out[int(frame)] = (r[:, 1].astype(int), boxes)
    return out


def _sequence_detections(seq: Path, est) -> tuple[list[Detections], float, tuple[int, int]]:
    """Pose detections on the frames an analysis at 10 fps would see (MOT frames are 1-based)."""
    import configparser

    import cv2

    info = configparser.ConfigParser()
    info.read(seq / "seqinfo.ini")
    fps = float(info["Sequence"]["frameRate"])
    length = int(info["Sequence"]["seqLength"])
    source = seq / "video.mp4" if (seq / "video.mp4").exists() else seq / "img1" / "%06d.jpg"
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {source}")
    dets, total_ms = [], 0.0
    size = (0, 0)
    try:
        for index in range(length):
            ok, image = cap.read()
            if not ok:
                break
            size = (image.shape[1], image.shape[0])
            t = index / fps
            if index and int(t * ANALYSIS_FPS + 1e-9) == int((index - 1) / fps * ANALYSIS_FPS + 1e-9):
                continue                      # not due at the analysis rate
            start = time.perf_counter()
            raw = est(image)
            total_ms += (time.perf_counter() - start) * 1e3
            dets.append(Detections(index + 1, t, raw.boxes, raw.scores, raw.keypoints))
    finally:
        cap.release()
    return dets, total_ms / max(len(dets), 1), size


def _track(dets: list[Detections], cfg: TrackingConfig, size, min_score: float = 0.0):
    tracker = Tracker(cfg, frame_size=size)
    out = []
    for d in dets:
        keep = d.scores >= min_score
        frame = tracker.update(Detections(d.frame_index, d.t, d.boxes[keep], d.scores[keep], d.keypoints[keep]))
        ids = np.array([p.track_id for p in frame.persons], int)
        boxes = np.array([p.box for p in frame.persons], np.float64).reshape(-1, 4)
        out.append((d.frame_index, ids, boxes))
    return out


# ---------------------------------------------------------------------------------------


def _update_cost_rows() -> list[tuple[str, float, str]]:
    """ms per update on the real two-person fixture and on 50 random persons per frame."""
    fixture = np.load(package_root() / "tests" / "fixtures" / "tracking" / "demo_skeleton.npz")
    offsets = np.concatenate([[0], np.cumsum(fixture["counts"])])
    frames = [Detections(i, float(fixture["t"][i]), fixture["boxes"][a:b], fixture["scores"][a:b],
                         fixture["keypoints"][a:b]) for i, (a, b) in enumerate(itertools.pairwise(offsets))]
    tracker = Tracker()
    start = time.perf_counter()
    for rounds in range(5):
        tracker.reset()
        for d in frames:
            tracker.update(Detections(d.frame_index, d.t + rounds * 10, d.boxes, d.scores, d.keypoints))
    two = (time.perf_counter() - start) * 1e3 / (5 * len(frames))

    rng = np.random.default_rng(0)
    centres = rng.uniform([50, 100], [1870, 980], (50, 2))
    velocity = rng.uniform(-60, 60, (50, 2))
    size = rng.uniform([40, 100], [120, 300], (50, 2))
    tracker = Tracker()
    n = 200
    start = time.perf_counter()
    for i in range(n):
        c = centres + velocity * i * 0.1 + rng.normal(0, 3, (50, 2))
        boxes = np.hstack([c - size / 2, c + size / 2]).astype(np.float32)
        kpts = np.zeros((50, 17, 3), np.float32)
        kpts[:, :, :2] = c[:, None, :] + rng.normal(0, 20, (50, 17, 2))
        kpts[:, :, 2] = 0.9
        tracker.update(Detections(i, i * 0.1, boxes, rng.uniform(0.2, 1, 50).astype(np.float32), kpts))
    fifty = (time.perf_counter() - start) * 1e3 / n
    return [("tracking update, 2 persons (demo_skeleton fixture)", round(two, 3), "ms/frame"),
            ("tracking update, 50 moving persons (synthetic)", round(fifty, 3), "ms/frame")]


def _mot_rows() -> list[tuple[str, float, str]]:
    root = _shared_mot()
    sequences = sorted(p for p in root.glob("*") if (p / "gt.txt").exists()) if root.is_dir() else []
    if not sequences:
        return []
    from appliance.box.pose import estimator_from_config

    # The product's pose settings, but with low-score detections kept: they feed ByteTrack's
    # second stage. BENCH_POSE_INPUT_WIDTH overrides the input width for experiments.
    pose_cfg = replace(PoseConfig(), score_threshold=0.1)
    if os.environ.get("BENCH_POSE_INPUT_WIDTH"):
        pose_cfg = replace(pose_cfg, input_width=int(os.environ["BENCH_POSE_INPUT_WIDTH"]))
    est = estimator_from_config(pose_cfg)
    base = TrackingConfig()
    variants = {
        "default": (base, 0.0),
        "boxes only (keypoint_weight 0)": (replace(base, keypoint_weight=0.0), 0.0),
        "pose threshold 0.35 (no low-score stage)": (base, 0.35),
    }
    totals = {name: Counts() for name in variants}
    det_counts = Counts()
    rows: list[tuple[str, float, str]] = []
    pose_ms_all: list[float] = []
    for seq in sequences:
        gt = _load_gt(seq / "gt.txt")
        dets, pose_ms, size = _sequence_detections(seq, est)
        pose_ms_all.append(pose_ms)
        empty = (np.zeros(0, int), np.zeros((0, 4)))
        # detector alone (every detection a distinct id): recall / precision ceiling
        det_frames = []
        for d in dets:
            keep = d.scores >= base.high_score
            det_frames.append((*gt.get(d.frame_index, empty), np.arange(keep.sum()) + d.frame_index * 1000,
                               d.boxes[keep].astype(np.float64)))
        seq_det = evaluate(det_frames)
        det_counts += seq_det
        rows.append((f"MOT {seq.name} detector recall (score >= high_score, IoU >= 0.5)",
                     round(100 * (1 - seq_det.fn / max(seq_det.gt, 1)), 1), "%"))
        for name, (cfg, min_score) in variants.items():
            tracked = _track(dets, cfg, size, min_score)
            counts = evaluate([(*gt.get(f, empty), ids, boxes) for f, ids, boxes in tracked])
            totals[name] += counts
            if name == "default":
                rows += [(f"MOT {seq.name} MOTA", round(100 * counts.mota, 1), "%"),
                         (f"MOT {seq.name} IDF1", round(100 * counts.idf1, 1), "%"),
                         (f"MOT {seq.name} id switches", counts.idsw, "count"),
                         (f"MOT {seq.name} analysed frames", len(dets), "frames")]
    for name, counts in totals.items():
        rows += [(f"MOT all, {name}: MOTA", round(100 * counts.mota, 1), "%"),
                 (f"MOT all, {name}: IDF1", round(100 * counts.idf1, 1), "%"),
                 (f"MOT all, {name}: id switches", counts.idsw, "count")]
    rows += [("MOT all, pose inference (context)", round(float(np.mean(pose_ms_all)), 1), "ms/frame"),
             ("MOT all, detector recall (score >= high_score, IoU >= 0.5)",
              round(100 * (1 - det_counts.fn / max(det_counts.gt, 1)), 1), "%"),
             ("MOT all, detector precision",
              round(100 * (1 - det_counts.fp / max(det_counts.hyp, 1)), 1), "%")]
    return rows


def run() -> list[tuple[str, float, str]]:
    return _update_cost_rows() + _mot_rows()


if __name__ == "__main__":
    for name, value, unit in run():
        print(f"{name:70s} {value:>10} {unit}")
