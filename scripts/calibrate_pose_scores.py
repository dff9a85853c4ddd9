"""Fits the score calibration that puts a second pose model's scores on YOLO11n-pose's scale.

    .venv/bin/python scripts/calibrate_pose_scores.py ../shared/data [--model movenet-multipose-lightning]
        [--cache DIR] [--fps 2] [--limit N]

Tracking (high_score / low_score), the fight classifier and the behaviour detectors
(keypoint_min_conf) were all tuned on YOLO11n-pose's person and keypoint scores. MoveNet's
scores mean something else (a person YOLO scores 0.9 gets 0.3-0.5 from MoveNet). So that
"behaviour does not care which model produced the keypoints", the other model's scores are
mapped through a monotone piecewise-linear curve fitted here:

* frames at ``--fps`` from every video of the data root (MOT, normal, scfd-dev, falls), both
  models run on the same frames (raw scores, low thresholds);
* each of the other model's persons is matched to YOLO's (IoU >= 0.5, greedy by IoU);
* person score: isotonic regression of the matched YOLO score (0 when unmatched: a person YOLO
  does not see should not start a track) on the raw score;
* keypoint score: quantile matching over the joints of matched persons: a raw score that
  MoveNet exceeds on a share q of joints maps to the score YOLO exceeds on the same share q. The
  detectors use keypoint scores as thresholds (keypoint_min_conf 0.3, posture 0.15), so what
  must match is how many joints pass them, not the mean (an isotonic fit of YOLO's score on
  MoveNet's squeezes every joint towards YOLO's mean, 0.5, and lets nearly every joint pass).

Prints the curves as TOML for the model's manifest entry (``score_calibration``,
``keypoint_calibration``: lists of [raw, calibrated] knots).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.box.behaviour.evaluate import plan_for, video_frames
from appliance.box.config import default_config
from appliance.box.pose import estimator_from_config

KNOTS = np.round(np.linspace(0.0, 1.0, 21), 2)


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing fit of y on x (sorted x, fitted y)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order].astype(float)
    blocks: list[list[float]] = []   # [sum, count]
    for v in y:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    fitted = np.concatenate([np.full(int(c), s / c) for s, c in blocks])
    return x, fitted


def knots(x: np.ndarray, y: np.ndarray) -> list[list[float]]:
    """The isotonic fit sampled at KNOTS (mean of the fit in each bin; monotone by construction)."""
    xs, fit = isotonic(x, y)
    out, last = [], 0.0
    for k in KNOTS:
        sel = np.abs(xs - k) <= 0.025
        value = float(fit[sel].mean()) if sel.any() else (float(np.interp(k, xs, fit)) if len(xs) else k)
        last = max(last, value)
        out.append([float(k), round(last, 3)])
    out[0][1] = 0.0
    return out


def quantile_knots(x: np.ndarray, y: np.ndarray) -> list[list[float]]:
    """Maps x's distribution onto y's at KNOTS: cal(k) = quantile_y(share of x <= k)."""
    out, last = [], 0.0
    for k in KNOTS:
        value = float(np.quantile(y, float(np.mean(x <= k)))) if len(x) else k
        last = max(last, min(value, 1.0))
        out.append([float(k), round(last, 3)])
    out[0][1] = 0.0
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-6)


def detections(root: Path, model: str, fps: float, cache: Path | None, limit: int | None) -> list[tuple]:
    """[(video, frame t, yolo Detections, other Detections)], cached per video when asked."""
    cfg_yolo = default_config(pose={"model": "yolo11n-pose", "score_threshold": 0.05})
    cfg_other = default_config(pose={"model": model, "score_threshold": 0.01})
    est_yolo, est_other = estimator_from_config(cfg_yolo.pose), estimator_from_config(cfg_other.pose)
    est_other.calibrated = False
    plan = plan_for(root, limit)
    videos = [*plan.normal, *plan.fight, *plan.nofight, *plan.fall_videos]
    out = []
    for video in videos:
        key = hashlib.sha256(f"{video}|{model}|{fps}|{est_other.model_sha256}".encode()).hexdigest()[:16]
        path = cache / f"{key}.npz" if cache else None
        if path is not None and path.exists():
            z = np.load(path, allow_pickle=True)
            out += list(z["rows"])
            continue
        rows, next_t = [], None
        for t, image in video_frames(video, 960):
            if next_t is not None and t < next_t - 1e-6:
                continue
            next_t = t + 1.0 / fps
            y, o = est_yolo(image), est_other.raw_detections(image)
            rows.append((str(video), t, y.boxes, y.scores, y.keypoints, o.boxes, o.scores, o.keypoints))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, rows=np.array(rows, dtype=object))
        out += rows
        print(f"{video}: {len(rows)} frames", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--model", default="movenet-multipose-lightning")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="at most N videos per folder")
    args = ap.parse_args(argv)
    rows = detections(args.root, args.model, args.fps, args.cache, args.limit)
    person_x, person_y, kp_x, kp_y = [], [], [], []
    for _, _, yb, ys, yk, ob, os_, ok in rows:
        if len(ob) == 0:
            continue
        m = iou_matrix(ob, yb) if len(yb) else np.zeros((len(ob), 0))
        target = np.zeros(len(ob))
        used_o, used_y = set(), set()
        for flat in np.argsort(-m, axis=None):
            i, j = np.unravel_index(flat, m.shape)
            if m[i, j] < 0.5:
                break
            if i in used_o or j in used_y:
                continue
            used_o.add(i)
            used_y.add(j)
            target[i] = ys[j]
            kp_x.append(ok[i, :, 2])
            kp_y.append(yk[j, :, 2])
        person_x.append(os_)
        person_y.append(target)
    px, py = np.concatenate(person_x), np.concatenate(person_y)
    kx, ky = np.concatenate(kp_x).ravel(), np.concatenate(kp_y).ravel()
    print(f"# {len(rows)} frames, {len(px)} {args.model} persons ({int((py > 0).sum())} matched to YOLO), "
          f"{len(kx)} keypoints", file=sys.stderr)
    print(f"score_calibration = {knots(px, py)}")
    print(f"keypoint_calibration = {quantile_knots(kx, ky)}")
    print_agreement(rows)
    return 0


def print_agreement(rows: list[tuple]) -> None:
    """Pose agreement per folder on the same frames: mean OKS of the other model's persons
    against YOLO fp32's confident ones (score >= 0.5), and the share of those it finds (IoU >= 0.5;
    the other model's persons above raw 0.2, i.e. about the pose threshold after calibration)."""
    from appliance.contracts.types import Detections
    from bench.pose import agreement

    groups: dict[str, tuple[list, list]] = {}
    for video, t, yb, ys, yk, ob, os_, ok in rows:
        group = next((g for g in ("mot", "normal", "scfd-dev", "falls") if f"/{g}/" in video), "other")
        ref, cand = groups.setdefault(group, ([], []))
        ref.append(Detections(0, t, yb[ys >= 0.5], ys[ys >= 0.5], yk[ys >= 0.5]))
        cand.append(Detections(0, t, ob[os_ >= 0.2], os_[os_ >= 0.2], ok[os_ >= 0.2]))
    for group, (ref, cand) in sorted(groups.items()):
        oks, found = agreement(ref, cand)
        print(f"# agreement on {group}: {len(ref)} frames, {sum(len(r) for r in ref)} YOLO persons: "
              f"mean OKS {oks:.3f}, found {found:.3f}")


if __name__ == "__main__":
    sys.exit(main())
