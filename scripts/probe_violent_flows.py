#!/usr/bin/env python3
"""A ceiling probe for issue 10: how far does a whole-frame *pixel* motion descriptor get on the
dev footage, with no pose at all? (docs/behaviour.md, "Version 6".)

Not part of the appliance: a whole-frame descriptor cannot name who did what, and would send no
skeletons; it answers whether the skeleton pipeline leaves easy accuracy on the table.

Descriptor per 2-s window at 10 fps (the analysis grid), frames shrunk to 160 px wide, grey:
Farnebäck optical-flow magnitude m_t in frame heights per second, then

* Violent Flows (Hassner, Itcher, Kliper-Gross 2012): b_t = |m_t - m_(t-1)| >= its frame mean;
  the time-mean of b over the window, histogrammed (10 bins) in each of ``--cells`` x ``--cells``
  image cells;
* six flow statistics: log1p of the 50/90/99th percentile of the time-mean magnitude, the share
  of pixel-frames faster than 0.1 frame heights/s, log1p of the mean temporal std and of the
  mean |m_t - m_(t-1)|.

Nested CV on the 100 scfd-dev clips (one window = the whole clip; stratified 10-fold x 3
shuffles, C chosen by an inner 5-fold CV on balanced accuracy) for a standardised logistic
regression and an RBF SVM, with the held-out fight recall at the operator's end of the curve
(0, 1, 2, 5 no-fight clips alarming). Then the logistic regression fitted on all scfd clips scores every
2-s window (stride 1 s) of the ordinary and fall footage: windows above its decision threshold
would be alarm chances.

    make train-setup     # scikit-learn (the [train] extra)
    .venv/bin/python scripts/probe_violent_flows.py --data ../shared/data [--cells 4]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.box.behaviour.evaluate import AnalysisGrid, plan_for, video_frames  # noqa: E402

FPS = 10.0
WIDTH = 160
WINDOW = 20          # flow fields per window: 2 s at 10 fps
BINS = np.linspace(0.0, 1.0, 11)


def flow_magnitudes(path: Path) -> list[np.ndarray]:
    """Per analysed frame (10 fps grid, as the runtime): flow magnitude, frame heights/s."""
    mags: list[np.ndarray] = []
    prev = None
    grid = AnalysisGrid(1.0 / FPS)
    for t, image in video_frames(path, 960):
        if not grid.take(t):
            continue
        h, w = image.shape[:2]
        grey = cv2.cvtColor(cv2.resize(image, (WIDTH, round(h * WIDTH / w)), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2GRAY)
        if prev is not None:
            flow = cv2.calcOpticalFlowFarneback(prev, grey, None, 0.5, 3, 9, 3, 5, 1.1, 0)
            mags.append(np.hypot(flow[..., 0], flow[..., 1]) * FPS / grey.shape[0])
        prev = grey
    return mags


def descriptor(mags: list[np.ndarray], cells: int) -> np.ndarray:
    m = np.stack(mags)
    d = np.abs(np.diff(m, axis=0))
    vif = (d >= d.mean(axis=(1, 2), keepdims=True)).mean(axis=0)
    h, w = vif.shape
    out: list[float] = []
    for i in range(cells):
        for j in range(cells):
            cell = vif[i * h // cells:(i + 1) * h // cells, j * w // cells:(j + 1) * w // cells]
            out += list(np.histogram(cell, BINS)[0] / cell.size)
    mean = m.mean(axis=0)
    out += [float(np.log1p(np.percentile(mean, q))) for q in (50, 90, 99)]
    out += [float((m > 0.1).mean()), float(np.log1p(m.std(axis=0).mean())), float(np.log1p(d.mean()))]
    return np.asarray(out, np.float32)


def windows(mags: list[np.ndarray]) -> list[list[np.ndarray]]:
    return [mags[i:i + WINDOW] for i in range(0, max(1, len(mags) - WINDOW + 1), WINDOW // 2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cells", type=int, default=1, help="Violent Flows histogram cells per side (1 or 4)")
    args = ap.parse_args()
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import balanced_accuracy_score, roc_auc_score
        from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC
    except ImportError:
        ap.error("scikit-learn is missing: run 'make train-setup' (the [train] extra) first")
    plan = plan_for(args.data)
    if not (plan.fight and plan.nofight):
        ap.error(f"no scfd-dev fight/ and nofight/ clips under {args.data}: pass --data with the shared data folder")
    warnings.filterwarnings("ignore")
    clips = list(plan.fight) + list(plan.nofight)
    X = np.stack([descriptor(flow_magnitudes(p), args.cells) for p in clips])
    y = np.array([1] * len(plan.fight) + [0] * len(plan.nofight))
    models = {
        "logistic regression": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                                {"logisticregression__C": [0.01, 0.1, 1, 10]}),
        "RBF SVM": (make_pipeline(StandardScaler(), SVC()), {"svc__C": [0.1, 1, 10], "svc__gamma": ["scale", 0.01]}),
    }
    print(f"{len(clips)} scfd clips, {X.shape[1]} features (cells {args.cells}x{args.cells})")
    for name, (estimator, grid) in models.items():
        bas, aucs, tails = [], [], []
        for seed in range(3):
            inner = GridSearchCV(estimator, grid, cv=StratifiedKFold(5, shuffle=True, random_state=100 + seed),
                                 scoring="balanced_accuracy")
            score = cross_val_predict(inner, X, y, cv=StratifiedKFold(10, shuffle=True, random_state=seed),
                                      method="decision_function")
            bas.append(balanced_accuracy_score(y, score > 0))
            aucs.append(roc_auc_score(y, score))
            # The operator's end of the curve: fights found when at most k no-fight clips alarm.
            nofight = np.sort(score[y == 0])[::-1]
            tails.append([float(np.mean(score[y == 1] > nofight[k])) for k in (0, 1, 2, 5)])
        tail = np.mean(tails, axis=0)
        print(f"{name}: nested CV balanced accuracy {np.mean(bas):.3f} +- {np.std(bas):.3f}, AUC {np.mean(aucs):.3f}; "
              f"held-out fight recall with 0 / 1 / 2 / 5 of {len(nofight)} no-fight clips alarming: "
              + " / ".join(f"{v:.2f}" for v in tail))
    final = GridSearchCV(models["logistic regression"][0], models["logistic regression"][1], cv=5,
                         scoring="balanced_accuracy").fit(X, y)
    print("logistic regression fitted on all scfd clips, on every 2-s window (stride 1 s):")
    for path in list(plan.ordinary) + list(plan.fall_videos):
        ws = windows(flow_magnitudes(path))
        score = final.decision_function(np.stack([descriptor(w, args.cells) for w in ws]))
        print(f"  {path.parent.name}/{path.name}: {int((score > 0).sum())} of {len(ws)} windows above the threshold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
