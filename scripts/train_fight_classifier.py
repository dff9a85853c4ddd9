#!/usr/bin/env python3
"""Trains and cross-validates the window-level fight classifier (models/fight-window-lr.json).

Data: the Surveillance Camera Fight Dataset clips in ../shared/data/scfd-dev (50 fight, 50
no-fight, MIT licence), through the pose cache of scripts/extract_skeletons.py. Each clip is
replayed as the runtime sees it: detections with score >= ``--pose-score`` (filtering a cache
extracted at a lower threshold equals extracting at this one: NMS is greedy in score order) →
the project's Tracker at 10 fps → :func:`appliance.box.behaviour.fight_model.window_features` over
every causal window of ``--window`` seconds (once it spans ``--min-window`` s). Every window is
a training row with its clip's label (rows weighted so that each clip counts once). A clip is
*fight* when any of its windows reaches the threshold — exactly what the runtime does.

Honest figures: repeated stratified 10-fold cross-validation (``--shuffles`` seeds). Inside each
outer fold the L2 strength C and the probability threshold are chosen by an inner 5-fold CV on
the outer training clips only (nested); the held-out clips are never seen. Also prints the
combined decision (classifier OR the kinematic strike/kick/push/strangle rules, which the
product also runs) and the in-sample figure for contrast. Finally fits on all clips with the C
and threshold chosen by CV on all clips and writes the model file (``--write``).

    .venv/bin/python scripts/train_fight_classifier.py --cache /tmp/skeleton-cache-v2 --pose-score 0.2
    .venv/bin/python scripts/train_fight_classifier.py --cache /tmp/skeleton-cache-v2 --pose-score 0.2 --write

Operators' verdicts as extra data: ``--extra-windows verdicts.jsonl`` (from ``appliance station
training-export --since ...``; skeletons only). Each true/false verdict becomes one more clip
(label 1/0; "unclear" is left out) in the cross-validation and the final fit.

Logistic regression in numpy (IRLS with an L2 penalty): no training dependency beyond numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.box.behaviour.config import BehaviourConfig  # noqa: E402
from appliance.box.behaviour.evaluate import run_analyzer  # noqa: E402
from appliance.box.behaviour.fight_model import FEATURE_NAMES, FrameWindow, has_pair, window_features  # noqa: E402
from appliance.box.config import TrackingConfig  # noqa: E402
from appliance.box.tracking import Tracker  # noqa: E402
from appliance.contracts.types import Detections, Pattern, TrackedFrame, TrackedPerson  # noqa: E402

FPS = 10.0
#: Left out a priori: how many persons a camera sees, how boxes change under occlusion and how
#: fast people walk are not evidence of violence (a court could not accept "6 persons" as a
#: reason), and they fired on ordinary crowds.
EXCLUDED_FEATURES = ("persons_mean", "persons_max", "frames_with_person_fraction", "box_size_change_p90_per_s",
                     "box_aspect_change_p90_per_s", "body_speed_p50_log_torso_per_s")
DEFAULT_FEATURES = tuple(n for n in FEATURE_NAMES if n not in EXCLUDED_FEATURES)
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: How many of the best-ranked features to use (ranked on the training clips of each fold).
K_GRID = (99,)   # all of --features (feature-count search gave nothing but variance)
#: When set, the probability threshold is this instead of chosen by inner CV.
FIXED_THRESHOLD: float | None = None
#: When set, thresholds must keep at least this no-fight recall on the clips they are chosen on.
MIN_SPECIFICITY: float | None = None
#: The event fires when this many consecutive windows reach the threshold.
CONSECUTIVE = 1
RULE_PATTERNS = {Pattern.STRIKE, Pattern.KICK, Pattern.PUSH, Pattern.STRANGLE}


def tracked_from_cache(cache: Path, name: str, pose_score: float,
                       tracking: TrackingConfig | None = None) -> list[TrackedFrame]:
    """The runtime's view of a cached clip: 10 fps grid, score filter, the project's Tracker."""
    z = np.load(cache / f"{name}.npz")
    size = tuple(int(v) for v in z["frame_size"])
    tracker = Tracker(tracking or TrackingConfig(), frame_size=size)
    out, next_t = [], None
    for i, t in enumerate(z["t"]):
        if next_t is not None and t < next_t - 1e-6:
            continue
        next_t = t + 1 / FPS if next_t is None or next_t + 1 / FPS <= t else next_t + 1 / FPS
        k = int(z["count"][i])
        keep = np.flatnonzero(z["scores"][i, :k] >= pose_score)
        dets = Detections(int(z["frame_index"][i]), float(t), z["boxes"][i, keep], z["scores"][i, keep],
                          z["keypoints"][i, keep])
        out.append(tracker.update(dets))
    return out


def tracked_from_training_export(row: dict) -> list[TrackedFrame]:
    """One line of `station training-export` as the analyzer saw it (the involved tracks only)."""
    size = tuple(int(v) for v in row["frame_size"])
    return [TrackedFrame(i, float(f["t_s"]), tuple(
        TrackedPerson(int(p["track"]), np.array(p["box"], np.float32), 1.0, np.array(p["keypoints"], np.float32),
                      age=i, lost_frames=0) for p in f["persons"]), size)
            for i, f in enumerate(row["frames"])]


def read_training_export(path: Path) -> list[tuple[str, int, list[TrackedFrame]]]:
    """(alarm id, label, frames) of every true/false verdict in the file."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        row = json.loads(line)
        if row.get("format") != "appliance-training-window" or row.get("version") != 1:
            raise SystemExit(f"{path}:{n}: not an appliance-training-window version 1 line")
        if row["label"] is not None:
            out.append((row["alarm_id"], int(row["label"]), tracked_from_training_export(row)))
    return out


def clip_windows(frames: list[TrackedFrame], window_s: float, min_window_s: float,
                 stride: int = 1) -> np.ndarray:
    """Feature rows of every causal window (as the analyzer computes them), float64[W, F]."""
    win = FrameWindow(window_s)
    rows = []
    for k, f in enumerate(frames):
        win.push(f)
        if win.span_s >= min_window_s - 1e-6 and k % stride == 0 and has_pair(win.frames):
            rows.append(window_features(list(win.frames)))
    return np.array(rows).reshape(-1, len(FEATURE_NAMES))


# ------------------------------------------------------------------------- model


def fit_logreg(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, iters: int = 50):
    """L2-penalised weighted logistic regression by IRLS; returns (mean, std, weights, bias)."""
    mean = np.average(x, axis=0, weights=w)
    std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    std[std < 1e-9] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    beta = np.zeros(z.shape[1])
    w = w / w.mean()
    penalty = np.full(z.shape[1], 1.0 / c)
    penalty[0] = 0.0   # the intercept is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -50, 50)))
        grad = z.T @ (w * (p - y)) + penalty * beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return mean, std, beta[1:], float(beta[0])


def predict(model, x: np.ndarray) -> np.ndarray:
    mean, std, weights, bias = model
    return 1.0 / (1.0 + np.exp(-np.clip(bias + ((x - mean) / std) @ weights, -50, 50)))


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * (float(np.mean(pred[y == 1])) + float(np.mean(~pred[y == 0])))


def best_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """The threshold with the best balanced accuracy (midpoint between neighbouring scores;
    ties go to the higher threshold: fewer false alarms)."""
    if MIN_SPECIFICITY:
        # The highest-accuracy threshold among those keeping no-fight recall >= MIN_SPECIFICITY:
        # a false alarm costs the operators' trust, a product choice made before looking.
        ok = [t for t in np.unique(score) if np.mean(score[y == 0] < t) >= MIN_SPECIFICITY]
        ok = ok or [float(np.max(score)) + 1e-6]
        return float(max(ok, key=lambda t: (balanced_accuracy(score >= t, y), -t)))
    cands = np.unique(score)
    mids = np.concatenate([(cands[:-1] + cands[1:]) / 2, [cands[-1] + 1e-6]]) if len(cands) > 1 else cands
    accs = [balanced_accuracy(score >= t, y) for t in mids]
    best = max(accs)
    return float(max(t for t, a in zip(mids, accs) if a >= best - 1e-12))


class Data:
    def __init__(self, rows: list[np.ndarray], y: np.ndarray, rules: np.ndarray):
        self.rows, self.y, self.rules = rows, y, rules

    def stack(self, idx: np.ndarray, cols: np.ndarray):
        """Training rows of clips ``idx`` (clips without an eligible window contribute none)."""
        idx = [i for i in idx if len(self.rows[i])]
        x = np.vstack([self.rows[i][:, cols] for i in idx])
        yy = np.concatenate([np.full(len(self.rows[i]), self.y[i], float) for i in idx])
        w = np.concatenate([np.full(len(self.rows[i]), 1.0 / len(self.rows[i])) for i in idx])
        return x, yy, w

    def clip_scores(self, model, idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Per clip the highest window probability (0 when no window shows two persons)."""
        return np.array([sustained_max(predict(model, self.rows[i][:, cols]), CONSECUTIVE)
                         if len(self.rows[i]) else 0.0 for i in idx])


def sustained_max(p: np.ndarray, n: int) -> float:
    """The highest probability held for ``n`` windows in a row (what the analyzer fires on);
    a clip with fewer eligible windows is scored by its lowest."""
    if len(p) < n:
        return float(np.min(p))
    return float(np.max(np.lib.stride_tricks.sliding_window_view(p, n).min(axis=1)))


def stratified_folds(y: np.ndarray, idx: np.ndarray, k: int, rng: np.random.RandomState) -> list[np.ndarray]:
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in (0, 1):
        members = rng.permutation(idx[y[idx] == label])
        for n, i in enumerate(members):
            folds[n % k].append(int(i))
    return [np.array(sorted(f)) for f in folds]


def auc(score: np.ndarray, y: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    return float((np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :]))
                 / (len(pos) * len(neg)))


def ranked_features(data: Data, idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``cols`` ordered by how well each alone separates the classes on clips ``idx``
    (|AUC - 0.5| of the clip's last window): chosen inside each fold, never on held-out clips."""
    idx = np.array([i for i in idx if len(data.rows[i])])
    last = np.array([data.rows[i][-1] for i in idx])
    strength = [abs(auc(last[:, c], data.y[idx]) - 0.5) for c in cols]
    return cols[np.argsort(strength)[::-1]]


def choose(data: Data, train: np.ndarray, cols: np.ndarray, rng: np.random.RandomState, inner: int = 5):
    """Feature count k, C and threshold by inner CV on ``train`` only; returns (cols, C, thr)."""
    best = None
    folds = stratified_folds(data.y, train, inner, rng)
    ranked = {id(f): ranked_features(data, np.setdiff1d(train, f), cols) for f in folds}
    for k in K_GRID:
        k = min(k, len(cols))
        for c in C_GRID:
            oof = np.zeros(len(data.y))
            for f in folds:
                fit_idx = np.setdiff1d(train, f)
                use = ranked[id(f)][:k]
                model = fit_logreg(*data.stack(fit_idx, use), c)
                oof[f] = data.clip_scores(model, f, use)
            thr = FIXED_THRESHOLD or best_threshold(oof[train], data.y[train])
            acc = balanced_accuracy(oof[train] >= thr, data.y[train])
            if best is None or acc > best[0] + 1e-12:
                best = (acc, k, c, thr)
    return ranked_features(data, train, cols)[:best[1]], best[2], best[3]


def nested_cv(data: Data, cols: np.ndarray, shuffles: int, folds: int = 10):
    n = len(data.y)
    everything = np.arange(n)
    alone, combined, chosen = [], [], []
    for seed in range(shuffles):
        rng = np.random.RandomState(seed)
        held = np.zeros(n, bool)
        for test in stratified_folds(data.y, everything, folds, rng):
            train = np.setdiff1d(everything, test)
            use, c, thr = choose(data, train, cols, rng)
            model = fit_logreg(*data.stack(train, use), c)
            held[test] = data.clip_scores(model, test, use) >= thr
            chosen.append((len(use), c, round(thr, 3)))
        alone.append(balanced_accuracy(held, data.y))
        combined.append(balanced_accuracy(held | data.rules, data.y))
    return alone, combined, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/skeleton-cache-v2"))
    ap.add_argument("--pose-score", type=float, default=0.1)
    ap.add_argument("--tracking", default="", metavar="KEY=VALUE,...",
                    help="override TrackingConfig fields, e.g. high_score=0.3 (default: the product's)")
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--min-window", type=float, default=1.5)
    ap.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                    help="comma-separated subset of FEATURE_NAMES (default: all but EXCLUDED_FEATURES)")
    ap.add_argument("--shuffles", type=int, default=5)
    ap.add_argument("--write", type=Path, nargs="?", const=REPO / "models" / "fight-window-lr.json",
                    default=None, help="write the model fitted on all clips (default path models/...)")
    ap.add_argument("--k", default="", help="feature counts to try (best-ranked first), e.g. 5,10,99 "
                                           "(default: all features)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="fixed probability threshold (default: chosen by inner CV)")
    ap.add_argument("--min-specificity", type=float, default=None,
                    help="choose thresholds keeping no-fight recall >= this on the training clips, e.g. 0.9")
    ap.add_argument("--consecutive", type=int, default=2,
                    help="windows in a row that must reach the threshold before 'fight' fires")
    ap.add_argument("--extra-windows", type=Path, action="append", default=[], metavar="JSONL",
                    help="operators' verdicts from 'appliance station training-export' (repeatable)")
    args = ap.parse_args(argv)
    global K_GRID, FIXED_THRESHOLD, MIN_SPECIFICITY, CONSECUTIVE
    CONSECUTIVE = args.consecutive
    MIN_SPECIFICITY = args.min_specificity
    if args.k:
        K_GRID = tuple(int(v) for v in args.k.split(","))
    FIXED_THRESHOLD = args.threshold
    names = sorted(p.stem for p in args.cache.glob("scfd-*.npz"))
    if not names:
        print(f"no scfd-*.npz in {args.cache}: run scripts/extract_skeletons.py first", file=sys.stderr)
        return 1
    tracking = TrackingConfig()
    for item in filter(None, args.tracking.split(",")):
        key, value = item.split("=")
        kind = type(getattr(tracking, key))
        tracking = dataclasses.replace(tracking, **{key: kind(value)})
    t0 = time.monotonic()
    y = np.array([1 if "-fight-" in n else 0 for n in names])
    rows, rules = [], []
    cfg = BehaviourConfig(fight_model="")   # the kinematic rules only
    for n in names:
        frames = tracked_from_cache(args.cache, n, args.pose_score, tracking)
        rows.append(clip_windows(frames, args.window, args.min_window))
        rules.append(any(e.pattern in RULE_PATTERNS for e in run_analyzer(frames, cfg)))
    extra = [item for path in args.extra_windows for item in read_training_export(path)]
    for alarm_id, _label, frames in extra:
        names.append(f"verdict:{alarm_id}")
        rows.append(clip_windows(frames, args.window, args.min_window))
        rules.append(any(e.pattern in RULE_PATTERNS for e in run_analyzer(frames, cfg)))
    if extra:
        y = np.concatenate([y, [label for _, label, _ in extra]])
        print(f"extra data: {len(extra)} operator verdicts ({sum(label for _, label, _ in extra)} true alarms)")
    data = Data(rows, y, np.array(rules))
    no_pair = [n for n, r, label in zip(names, rows, y) if not len(r)]
    print(f"clips never showing two persons (classifier cannot fire): {len(no_pair)} "
          f"({sum(1 for n in no_pair if '-fight-' in n)} fight)")
    cols = np.arange(len(FEATURE_NAMES))
    if args.features:
        cols = np.array([FEATURE_NAMES.index(f) for f in args.features.split(",")])
    print(f"{len(names)} clips ({int(y.sum())} fight), {sum(len(r) for r in rows)} windows of "
          f"{args.window} s (from {args.min_window} s), pose score >= {args.pose_score}, "
          f"tracking {args.tracking or 'defaults'}; features {len(cols)} "
          f"({time.monotonic() - t0:.0f} s)")
    rule_ba = balanced_accuracy(data.rules, y)
    print(f"kinematic strike/kick/push/strangle rules alone: fight recall {data.rules[y == 1].mean():.2f}, "
          f"no-fight recall {1 - data.rules[y == 0].mean():.2f}, balanced accuracy {rule_ba:.3f}")
    alone, combined, chosen = nested_cv(data, cols, args.shuffles)
    print(f"nested CV (10-fold x {args.shuffles}): classifier {np.mean(alone):.3f} ± {np.std(alone):.3f} "
          f"(min {min(alone):.3f}, max {max(alone):.3f}); with rules {np.mean(combined):.3f} ± "
          f"{np.std(combined):.3f} (min {min(combined):.3f}, max {max(combined):.3f})")
    ks, cs, ts = [k for k, _, _ in chosen], [c for _, c, _ in chosen], [t for _, _, t in chosen]
    print(f"  chosen feature counts: { {k: ks.count(k) for k in sorted(set(ks))} }; "
          f"C: { {c: cs.count(c) for c in C_GRID} }; "
          f"thresholds median {np.median(ts):.3f} (range {min(ts):.3f}-{max(ts):.3f})")
    everything = np.arange(len(y))
    cols, c, thr = choose(data, everything, cols, np.random.RandomState(1234))
    model = fit_logreg(*data.stack(everything, cols), c)
    score = data.clip_scores(model, everything, cols)
    pred = score >= thr
    print(f"final: C={c}, threshold {thr:.3f} (by 5-fold CV on all clips); in-sample fight recall "
          f"{pred[y == 1].mean():.2f}, no-fight recall {1 - pred[y == 0].mean():.2f}, balanced accuracy "
          f"{balanced_accuracy(pred, y):.3f}; with rules {balanced_accuracy(pred | data.rules, y):.3f}")
    order = np.argsort(-np.abs(model[2]))
    print("  weights (per standard deviation): " + ", ".join(
        f"{FEATURE_NAMES[cols[i]]} {model[2][i]:+.2f}" for i in order))
    if args.write:
        doc = {
            "name": "fight-window-lr",
            "format": "logistic regression over standardised window features, version 1",
            "features": [FEATURE_NAMES[i] for i in cols],
            "mean": [round(float(v), 6) for v in model[0]],
            "std": [round(float(v), 6) for v in model[1]],
            "weights": [round(float(v), 6) for v in model[2]],
            "bias": round(model[3], 6),
            "threshold": round(thr, 4),
            "window_s": args.window,
            "min_window_s": args.min_window,
            "consecutive_windows": args.consecutive,
            "trained_on": {"data": "scfd-dev (Surveillance Camera Fight Dataset, MIT), 50 fight + 50 no-fight",
                           "pose": f"yolo11n-pose at 640, frames <= 960 wide, score >= {args.pose_score}",
                           "tracking": f"appliance.box.tracking.Tracker high/low {tracking.high_score}/"
                                       f"{tracking.low_score}, 10 fps",
                           "C": c,
                           "nested_cv_balanced_accuracy": [round(v, 4) for v in alone]},
        }
        blob = (json.dumps(doc, indent=1) + "\n").encode()
        args.write.write_bytes(blob)
        print(f"wrote {args.write} sha256 {hashlib.sha256(blob).hexdigest()}")
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
