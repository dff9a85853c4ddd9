#!/usr/bin/env python3
"""Cross-validated figure for the fight/no-fight thresholds (docs/behaviour.md, "How the
defaults were chosen").

Selecting thresholds on the same 100 clips one reports on flatters the result, so this runs a
*nested* 10-fold cross-validation: in each fold the best threshold set of a small grid is
chosen on 90 clips and scored on the 10 held out; the held-out predictions of all folds give
the balanced accuracy. Repeated over 5 shuffles. Also prints the in-sample best for contrast,
and the naive baseline (one threshold on a clip's 90th-percentile limb speed) under the same
protocol.

Needs the pose cache of scripts/extract_skeletons.py (default /tmp/skeleton-cache).

    .venv/bin/python scripts/behaviour_cv.py
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.box.behaviour import BehaviourAnalyzer, BehaviourConfig  # noqa: E402
from appliance.box.behaviour.evaluate import run_analyzer  # noqa: E402
from scripts.make_behaviour_fixtures import tracked_from_cache  # noqa: E402

#: The kinematic rules only (this script measures their thresholds; the window classifier has
#: its own, scripts/train_fight_classifier.py).
RULES = BehaviourConfig(fight_model="")

GRID = {
    "fight_limb_speed": (4.0, 5.0, 6.0),
    "fight_min_fraction": (0.2, 0.3, 0.4),
    "fight_distance": (2.0, 2.5, 3.0),
    "strike_wrist_speed": (6.0, 8.0, 10.0),
}


def balanced_accuracy(pred: np.ndarray, y: np.ndarray, idx: np.ndarray) -> float:
    return 0.5 * (float(np.mean(pred[idx][y[idx] == 1])) + float(np.mean(~pred[idx][y[idx] == 0])))


def nested_cv(candidates: list[np.ndarray], y: np.ndarray, folds: int = 10, seeds: int = 5) -> list[float]:
    everything = np.arange(len(y))
    scores = []
    for seed in range(seeds):
        perm = np.random.RandomState(seed).permutation(len(y))
        held_out = np.zeros(len(y), bool)
        for f in range(folds):
            test = perm[f::folds]
            train = np.setdiff1d(everything, test)
            best = max(candidates, key=lambda c: balanced_accuracy(c, y, train))
            held_out[test] = best[test]
        scores.append(balanced_accuracy(held_out, y, everything))
    return scores


def p90_limb_speed(frames) -> float:
    analyzer = BehaviourAnalyzer(RULES)
    speeds = []
    for f in frames:
        analyzer.update(f)
        speeds += [h.samples[-1].limb_speed for h in analyzer._tracks.values()
                   if h.samples[-1].t == f.t and h.samples[-1].limb_speed is not None]
    return float(np.percentile(speeds, 90)) if speeds else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/skeleton-cache"))
    args = ap.parse_args(argv)
    names = sorted(p.stem for p in args.cache.glob("scfd-*.npz"))
    if not names:
        print(f"no scfd-*.npz in {args.cache}: run scripts/extract_skeletons.py first", file=sys.stderr)
        return 1
    y = np.array([1 if "-fight-" in n else 0 for n in names])
    clips = {n: tracked_from_cache(args.cache, n) for n in names}
    keys = list(GRID)
    candidates, labels = [], []
    for values in itertools.product(*GRID.values()):
        kw = dict(zip(keys, values))
        kw["kick_ankle_speed"] = kw["strike_wrist_speed"]
        cfg = dataclasses.replace(RULES, **kw)
        candidates.append(np.array([any(e.pattern.violent for e in run_analyzer(clips[n], cfg)) for n in names]))
        labels.append(kw)
    everything = np.arange(len(y))
    in_sample = sorted(((balanced_accuracy(c, y, everything), i) for i, c in enumerate(candidates)), reverse=True)
    default = np.array([any(e.pattern.violent for e in run_analyzer(clips[n], RULES)) for n in names])
    print(f"clips: {int(y.sum())} fight, {int((1 - y).sum())} no-fight; grid of {len(candidates)} threshold sets")
    print(f"defaults: fight recall {default[y == 1].mean():.2f}, no-fight recall {1 - default[y == 0].mean():.2f}, "
          f"balanced accuracy {balanced_accuracy(default, y, everything):.3f} (in-sample)")
    print(f"grid in-sample best {in_sample[0][0]:.3f} with {labels[in_sample[0][1]]}")
    cv = nested_cv(candidates, y)
    print(f"grid nested 10-fold CV balanced accuracy {np.mean(cv):.3f} (5 shuffles: {np.round(cv, 3).tolist()})")
    speed = np.array([p90_limb_speed(clips[n]) for n in names])
    thresholds = [speed >= t for t in np.unique(speed)]
    base_in = max(balanced_accuracy(c, y, everything) for c in thresholds)
    base_cv = nested_cv(thresholds, y)
    print(f"naive baseline (p90 limb speed, one threshold): in-sample {base_in:.3f}, "
          f"nested 10-fold CV {np.mean(base_cv):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
