#!/usr/bin/env python3
"""Trains and cross-validates the stage-2 fight classifier (models/fight-stage2.onnx).

Data, replayed exactly as the runtime sees it (appliance.box.behaviour.evaluate.SkeletonPipeline:
pose → tracker → stage 1 → stage 2 at 10 fps; `--cache` keeps each video's analysed frames, so
pose runs once per video), and only footage whose licence permits shipping a derived model
(../shared/data/README.md):

* positives: the 50 scfd-dev fight clips (MIT);
* negatives: the 50 scfd-dev no-fight clips (MIT) and **every** candidate window of the
  ordinary footage that may be used: normal/one-by-one-person-detection (CC BY 4.0), the other
  normal/ clips (MIT), hard-negative/mmaction2_* (Apache-2.0), samples/demo_skeleton (a hug,
  Apache-2.0);
* never trained on (evaluation only, their licences forbid it or are unknown): mot/ (CC BY-NC-SA),
  hard-negative/dailyviolence_* (no licence), falls/ (UR Fall, CC BY-NC-SA), falls-extra/ (no
  licence). False alarms per camera-hour on these are an honest figure.

Rows: one per candidate region and analysed frame once its window spans ``min_window_s``, with
two-person evidence (the rule the analyzer applies before asking the model). Weights: each
scfd clip counts once; each 2 s of long ordinary footage counts as one clip (every window of it
is a negative, not only 2-second clips).

Model: standardise → L2 logistic regression → Platt calibration (CalibratedClassifierCV,
sigmoid, folds grouped by clip), converted with skl2onnx. A clip (or stretch of footage) fires
when one region's P(fight) reaches the threshold in ``CONSECUTIVE`` windows in a row.

Honest figures: nested CV over the scfd clips (stratified 10-fold x ``--shuffles``); inside each
outer fold C and the threshold are chosen by an inner 5-fold CV on the training clips only.
Threshold rule (the operating point is chosen for false alarms per hour): the threshold that
maximises inner balanced accuracy, but never below the lowest threshold at which the ordinary
footage it was trained with (the long clips and the scfd no-fight clips) raises no alarm at all
(on ~6 minutes of footage one alarm is already ~10 per camera-hour).

Operators' verdicts as extra data: ``--extra-windows verdicts.jsonl`` (from ``appliance station
training-export --since ...``; skeletons only). Each true/false verdict becomes one more clip
(label 1/0; "unclear" is left out) in the cross-validation and the final fit. The export holds
no pixels, so its windows carry no motion energy and no zoomed re-pose (those features are 0):
the involved persons' union box is the region, their skeletons give the wrist and region speeds.

    pip install -e '.[train]'
    .venv/bin/python scripts/train_fight_classifier.py --data ../shared/data --cache /work/wt/cache/issue10/frames
    .venv/bin/python scripts/train_fight_classifier.py ... --write     # models/fight-stage2.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.box.behaviour.analyzer import BehaviourAnalyzer  # noqa: E402
from appliance.box.behaviour.config import BehaviourConfig  # noqa: E402
from appliance.box.behaviour.evaluate import SkeletonPipeline  # noqa: E402
from appliance.box.behaviour.fight_model import FEATURE_NAMES  # noqa: E402
from appliance.box.behaviour.stage2 import AnalysedFrame, RegionEvidence  # noqa: E402
from appliance.box.config import default_config  # noqa: E402
from appliance.contracts.types import TrackedFrame, TrackedPerson  # noqa: E402

WINDOW_S, MIN_WINDOW_S, CONSECUTIVE = 2.0, 0.3, 2
C_GRID = (0.01, 0.1, 1.0, 10.0)
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.01), 2)
#: Footage a shipped model may be trained on (besides scfd-dev): licence in the data README.
TRAIN_ORDINARY = ("normal/*.mp4", "hard-negative/mmaction2_*.mp4", "samples/demo_skeleton.mp4")
#: Ordinary footage only evaluated (licence forbids training a shipped model, or unknown).
EVAL_ORDINARY = ("mot/*/video.mp4", "mot/*/img1", "hard-negative/dailyviolence_*.mp4")
EVAL_FALLS = ("falls/*.mp4", "falls-extra/*.mp4")


def clip_rows(frames, window_s: float = WINDOW_S, min_window_s: float = MIN_WINDOW_S
              ) -> list[tuple[int, float, np.ndarray]]:
    """(region id, t, features) of every candidate window the analyzer would ask the model about."""
    analyzer = BehaviourAnalyzer(BehaviourConfig(fight_model=""))
    analyzer._regions.window_s = window_s
    rows = []
    for af in frames:
        analyzer.update(af.tracked, af.evidence)
        for s in analyzer.region_scores:
            if s.span_s >= min_window_s - 1e-6 and s.two_persons:
                rows.append((s.region, af.tracked.t, s.features))
    return rows


class Clip:
    def __init__(self, name: str, label: int, source: str, seconds: float, rows):
        self.name, self.label, self.source, self.seconds = name, label, source, seconds
        self.rows = rows
        #: ``A``: every computed feature (FEATURE_NAMES); ``X``: the ones the model uses.
        self.A = np.array([r[2] for r in rows], np.float64).reshape(-1, len(FEATURE_NAMES))
        self.X = self.A
        self.regions = [r[0] for r in rows]

    def alarms(self, p: np.ndarray, thr: float, gap_s: float = 1.5, repeat_s: float = 10.0) -> int:
        """Alarms in this clip at ``thr``: per region, CONSECUTIVE windows in a row open an episode."""
        runs: dict[int, int] = defaultdict(int)
        last: dict[int, float] = {}
        reported: dict[int, float] = {}
        n = 0
        for (rid, t, _), pi in zip(self.rows, p, strict=True):
            runs[rid] = runs[rid] + 1 if pi >= thr else 0
            if rid in last and t - last[rid] > gap_s:
                reported.pop(rid, None)
            if runs[rid] >= CONSECUTIVE:
                if rid not in reported or t - reported[rid] >= repeat_s:
                    n += 1
                    reported[rid] = t
                last[rid] = t
        return n


def load(data: Path, cache: Path, cached_only: bool = False) -> tuple[list[Clip], list[Clip], list[Clip], list[Clip]]:
    cfg = default_config()
    pipe = SkeletonPipeline(cfg, cache)
    period = 1.0 / cfg.analysis.fps

    def clips(patterns, label, source):
        out = []
        for pat in patterns:
            for path in sorted(data.glob(pat)):
                if cached_only and not pipe._cache_path(path).is_file():
                    continue
                frames = pipe.analysed_frames(path)
                name = f"{path.parent.name}/{path.name}"
                out.append(Clip(name, label, source, len(frames) * period, clip_rows(frames)))
                print(f"  {name}: {len(out[-1].rows)} windows", file=sys.stderr, flush=True)
        return out

    scfd = clips(["scfd-dev/fight/*.mp4"], 1, "scfd") + clips(["scfd-dev/nofight/*.mp4"], 0, "scfd")
    train_ord = clips(TRAIN_ORDINARY, 0, "ordinary")
    eval_ord = clips(EVAL_ORDINARY, 0, "eval-ordinary")
    falls = clips(EVAL_FALLS, 0, "falls")
    return scfd, train_ord, eval_ord, falls


def read_training_export(path: Path) -> list[tuple[str, int, list[TrackedFrame]]]:
    """(alarm id, label, frames) of every true/false verdict in a `station training-export` file."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        row = json.loads(line)
        if row.get("format") != "appliance-training-window" or row.get("version") != 1:
            raise SystemExit(f"{path}:{n}: not an appliance-training-window version 1 line")
        if row["label"] is None:
            continue
        size = tuple(int(v) for v in row["frame_size"])
        frames = [TrackedFrame(i, float(f["t_s"]), tuple(
            TrackedPerson(int(p["track"]), np.array(p["box"], np.float32), 1.0, np.array(p["keypoints"], np.float32),
                          age=i, lost_frames=0) for p in f["persons"]), size)
            for i, f in enumerate(row["frames"])]
        out.append((row["alarm_id"], int(row["label"]), frames))
    return out


def skeleton_only(frames: list[TrackedFrame]) -> list[AnalysedFrame]:
    """Frames without pixels (an operator's verdict): the first two persons' union box is the
    region, with no motion energy and no zoomed re-pose (those features are 0)."""
    out = []
    for tracked in frames:
        evidence = ()
        if len(tracked.persons) >= 2:
            a, b = tracked.persons[:2]
            box = np.array([min(a.box[0], b.box[0]), min(a.box[1], b.box[1]),
                            max(a.box[2], b.box[2]), max(a.box[3], b.box[3])], np.float32)
            key = tuple(sorted((a.track_id, b.track_id)))
            evidence = (RegionEvidence(key, "pair", box, 0.0, (0.0, 0.0), 0.0, box, 0.0, None),)
        out.append(AnalysedFrame(tracked, evidence))
    return out


def clip_windows(frames: list[TrackedFrame], window_s: float = WINDOW_S, min_window_s: float = MIN_WINDOW_S
                 ) -> np.ndarray:
    """Feature rows (float64[W, len(FEATURE_NAMES)]) of a skeleton-only clip, as the analyzer
    computes them for its windows of ``window_s`` once they span ``min_window_s``."""
    rows = clip_rows(skeleton_only(frames), window_s, min_window_s)
    return np.array([r[2] for r in rows], np.float64).reshape(-1, len(FEATURE_NAMES))


def stack(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y, w, g = [], [], [], []
    for i, c in enumerate(clips):
        if not len(c.X):
            continue
        # scfd: each clip once; long footage: each 2 s once.
        total = 1.0 if c.source == "scfd" else max(c.seconds / 2.0, 1.0)
        X.append(c.X)
        y.append(np.full(len(c.X), c.label))
        w.append(np.full(len(c.X), total / len(c.X)))
        g.append(np.full(len(c.X), i))
    X_, y_, w_, g_ = np.vstack(X), np.concatenate(y), np.concatenate(w), np.concatenate(g)
    # Balanced classes: the fights weigh as much as all negatives together (hard negatives from
    # long footage would otherwise outweigh 50 fight clips and flatten the model).
    w_[y_ == 1] *= w_[y_ == 0].sum() / max(w_[y_ == 1].sum(), 1e-9)
    return X_, y_, w_, g_


def fit(clips: list[Clip], C: float, seed: int = 0):
    """StandardScaler → (LogisticRegression, Platt-calibrated on folds grouped by clip), as one
    fitted Pipeline (the scaler is fitted first: a Pipeline cannot route sample weights)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, w, g = stack(clips)
    scaler = StandardScaler().fit(X, sample_weight=w)
    Xs = scaler.transform(X)
    splits = list(GroupKFold(n_splits=3, shuffle=True, random_state=seed).split(Xs, y, g))
    model = CalibratedClassifierCV(LogisticRegression(C=C, max_iter=1000), method="sigmoid", cv=splits)
    model.fit(Xs, y, sample_weight=w)
    return Pipeline([("scale", scaler), ("calibrated", model)])


def prob(model, clip: Clip) -> np.ndarray:
    return model.predict_proba(clip.X)[:, 1] if len(clip.X) else np.zeros(0)


def clip_ba(model_probs: list[tuple[Clip, np.ndarray]], thr: float) -> float:
    fired = {c.name: c.alarms(p, thr) > 0 for c, p in model_probs}
    pos = [fired[c.name] for c, _ in model_probs if c.label == 1]
    neg = [not fired[c.name] for c, _ in model_probs if c.label == 0]
    return 0.5 * (float(np.mean(pos)) + float(np.mean(neg)))


def quiet_threshold(model, ordinary: list[Clip]) -> float:
    """The lowest threshold at which the given ordinary footage raises no alarm."""
    probs = [(c, prob(model, c)) for c in ordinary]
    for thr in THRESHOLDS:
        if all(c.alarms(p, thr) == 0 for c, p in probs):
            return float(thr)
    return float(THRESHOLDS[-1])


def use(clips: list[Clip], names: list[str]) -> None:
    """Make ``names`` the model's features (``Clip.X``)."""
    idx = [FEATURE_NAMES.index(n) for n in names]
    for c in clips:
        c.X = c.A[:, idx]


def monotone_features(clips: list[Clip], seed: int) -> list[str]:
    """Start from every feature, fit, and drop the one with the most negative weight until all
    weights are positive: each feature measures motion or closeness that a fight has *more* of,
    so a model saying "more arm speed, less likely a fight" has learned the hard negatives'
    quirks (walking pairs move more pixels than scuffles), not something an operator could be
    told. Decided on the training clips only (inside each outer fold in the nested CV)."""
    names = list(FEATURE_NAMES)
    while len(names) > 1:
        use(clips, names)
        m = fit(clips, 1.0, seed)
        coef = np.mean([cc.estimator.coef_[0] for cc in m[-1].calibrated_classifiers_], axis=0)
        worst = int(np.argmin(coef))
        if coef[worst] > 0:
            break
        names.pop(worst)
    use(clips, names)
    return names


def choose(scfd: list[Clip], ordinary: list[Clip], seed: int) -> tuple[list[str], float, float]:
    """Features (monotone), C and threshold by inner 5-fold CV on ``scfd`` (ordinary footage
    always in training)."""
    from sklearn.model_selection import StratifiedKFold

    names = monotone_features(scfd + ordinary, seed)
    labels = np.array([c.label for c in scfd])
    best = None
    for C in C_GRID:
        held: list[tuple[Clip, np.ndarray]] = []
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(labels, labels):
            m = fit([scfd[i] for i in tr] + ordinary, C, seed)
            held += [(scfd[i], prob(m, scfd[i])) for i in te]
        for thr in THRESHOLDS:
            ba = clip_ba(held, thr)
            if best is None or ba > best[0] + 1e-9:
                best = (ba, C, float(thr))
    _, C, thr = best
    m = fit(scfd + ordinary, C, seed)
    # Chosen for false alarms per hour: no alarm on any ordinary footage it was trained with
    # (the long clips and the no-fight clips), even if that costs fight recall.
    return names, C, max(thr, quiet_threshold(m, ordinary + [c for c in scfd if c.label == 0]))


def per_hour(model, clips: list[Clip], thr: float) -> tuple[int, float, list[str]]:
    n, names = 0, []
    for c in clips:
        a = c.alarms(prob(model, c), thr)
        n += a
        if a:
            names.append(f"{c.name} x{a}")
    hours = sum(c.seconds for c in clips) / 3600
    return n, hours, names


def nested_cv(scfd: list[Clip], ordinary: list[Clip], shuffles: int) -> None:
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([c.label for c in scfd])
    bas = []
    for seed in range(shuffles):
        fired = {}
        for tr, te in StratifiedKFold(10, shuffle=True, random_state=100 + seed).split(labels, labels):
            train = [scfd[i] for i in tr]
            names, C, thr = choose(train, ordinary, seed)
            m = fit(train + ordinary, C, seed)
            use([scfd[i] for i in te], names)
            for i in te:
                fired[scfd[i].name] = scfd[i].alarms(prob(m, scfd[i]), thr) > 0
        rec = np.mean([fired[c.name] for c in scfd if c.label == 1])
        fa = np.mean([fired[c.name] for c in scfd if c.label == 0])
        bas.append(0.5 * (rec + 1 - fa))
        print(f"shuffle {seed}: held-out fight recall {rec:.3f}, no-fight false alarm {fa:.3f}, "
              f"balanced accuracy {bas[-1]:.3f}", flush=True)
    print(f"NESTED CV balanced accuracy {np.mean(bas):.3f} +- {np.std(bas):.3f} over {shuffles} shuffles")


def write_onnx(model, names: list[str], C: float, thr: float, out: Path, provenance: dict) -> str:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, len(names)]))],
                          options={id(model[-1]): {"zipmap": False}}, target_opset=17)
    meta = {"features": list(names), "threshold": thr, "consecutive_windows": CONSECUTIVE,
            "window_s": WINDOW_S, "min_window_s": MIN_WINDOW_S, "C": C, **provenance}
    entry = onx.metadata_props.add()
    entry.key, entry.value = "appliance", json.dumps(meta, sort_keys=True)
    onx.producer_name = "appliance scripts/train_fight_classifier.py"
    onx.doc_string = ""
    onx.graph.name = "fight_stage2"   # skl2onnx names the graph with a random uuid: same data, same bytes
    blob = onx.SerializeToString(deterministic=True)
    onnx.checker.check_model(onx)
    out.write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, required=True, help="analysed-frame cache (appliance eval --cache)")
    ap.add_argument("--shuffles", type=int, default=3)
    ap.add_argument("--extra-windows", type=Path, action="append", default=[], metavar="JSONL",
                    help="operators' verdicts from 'appliance station training-export' (repeatable)")
    ap.add_argument("--cached-only", action="store_true", help="skip videos not in the cache (a quick look)")
    ap.add_argument("--no-cv", action="store_true", help="skip the nested CV (fit and report only)")
    ap.add_argument("--write", action="store_true", help="write models/fight-stage2.onnx")
    args = ap.parse_args()
    t0 = time.monotonic()
    if not (args.data / "scfd-dev" / "fight").is_dir():
        ap.error(f"no scfd-dev footage under {args.data}: pass --data with the shared data folder "
                 "(the one whose README.md lists scfd-dev/, normal/, hard-negative/ ...)")
    scfd, train_ord, eval_ord, falls = load(args.data, args.cache, args.cached_only)
    if not {c.label for c in scfd} >= {0, 1}:
        ap.error(f"no labelled scfd clips found in {args.data} (with --cached-only: none analysed in {args.cache}; "
                 "run without --cached-only, or 'appliance eval DATA --cache CACHE' first)")
    extra = [Clip(f"verdict:{aid}", label, "scfd", len(frames) / 10.0, clip_rows(skeleton_only(frames)))
             for path in args.extra_windows for aid, label, frames in read_training_export(path)]
    if extra:
        print(f"extra data: {len(extra)} operator verdicts ({sum(c.label for c in extra)} true alarms)")
        scfd += extra   # labelled like the scfd clips: each verdict counts once
    print(f"{len(scfd)} scfd clips, {len(train_ord)} training ordinary clips "
          f"({sum(c.seconds for c in train_ord) / 60:.1f} min), {len(eval_ord)} evaluation-only ordinary clips "
          f"({sum(c.seconds for c in eval_ord) / 60:.1f} min), {len(falls)} fall videos")
    if not args.no_cv:
        nested_cv(scfd, train_ord, args.shuffles)
    names, C, thr = choose(scfd, train_ord, 0)
    model = fit(scfd + train_ord, C, 0)
    use(scfd + train_ord + eval_ord + falls, names)
    print(f"final: features {names}, C = {C}, threshold = {thr}")
    for name, clips in (("scfd no-fight (in-sample)", [c for c in scfd if c.label == 0]),
                        ("training ordinary (in-sample)", train_ord),
                        ("evaluation-only ordinary (never trained on)", eval_ord),
                        ("fall-only videos (never trained on)", falls)):
        n, hours, fired = per_hour(model, clips, thr)
        print(f"  {name}: {n} alarms in {hours * 60:.1f} min = {n / hours if hours else 0:.1f} per camera-hour "
              f"{fired}")
    rec = np.mean([c.alarms(prob(model, c), thr) > 0 for c in scfd if c.label == 1])
    print(f"  scfd fight recall (in-sample): {rec:.3f}")
    coef = np.mean([cc.estimator.coef_[0] for cc in model[-1].calibrated_classifiers_], axis=0)
    print("  standardised LR weights (mean over the calibration folds): " +
          ", ".join(f"{n} {w:+.2f}" for n, w in zip(names, coef, strict=True)))
    if args.write:
        prov = {"trained_on": "scfd-dev (MIT) 50 fight + 50 no-fight; normal/ (CC BY 4.0, MIT); "
                              "hard-negative/mmaction2_* and samples/demo_skeleton (Apache-2.0)",
                "script": "scripts/train_fight_classifier.py"}
        digest = write_onnx(model, names, C, thr, REPO / "models" / "fight-stage2.onnx", prov)
        print(f"wrote models/fight-stage2.onnx sha256 {digest} (put it into models/manifest.toml)")
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
