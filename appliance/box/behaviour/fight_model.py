"""Stage-2 fight classifier: per candidate region, a window of skeleton, interaction and motion
numbers → calibrated P(fight).

Stage 1 (:mod:`appliance.box.behaviour.stage2`) opens candidate regions; stage 2 measures them
(motion energy, zoomed re-pose). :class:`RegionWindows` keeps, per region, the last
``window_s`` seconds of one row of physical quantities per analysed frame (:data:`ROW_FIELDS`)
and summarises them into :data:`FEATURE_NAMES` — few, each one an operator can read:

* ``union_motion_energy_p50``: median share of the pair's union box that changed beyond the
  scene's noise (above the background's share);
* ``person_motion_energy_min_p50``: the same for the *less* moving of the two persons (both
  must move in a fight; a walker passing someone who stands still does not);
* ``wrist_speed_pair_p75_log_torso_per_s``: log1p of the lower of the two persons' fastest
  wrist speeds relative to their own hips (whole-frame skeletons);
* ``zoomed_wrist_speed_pair_p75_log_torso_per_s``: the same from the zoomed re-pose;
* ``zoomed_persons_mean``: persons the zoomed re-pose finds in the region;
* ``region_speed_p50_log_per_s``: log1p of the union box's centre speed in union-box heights
  per second (people walking together travel; a scuffle stays in place).

Two-person evidence is a rule, not a learned weight: a region's window counts only when at
least half its frames show two distinct bodies (two tracks whose boxes are not the same body,
or two persons in the zoomed re-pose). One person falling, dancing or running alone cannot
produce a violent pattern.

The model is data: an ONNX graph (scikit-learn logistic regression with Platt calibration,
converted by skl2onnx) in ``models/``, listed with its sha256 in ``models/manifest.toml`` and
loaded through :func:`appliance.box.pose.manifest.verified_model`; its feature names, threshold and
window settings are metadata inside the hashed file. Trained by
``scripts/train_fight_classifier.py``; docs/behaviour.md has how and how well.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.box.behaviour import features as F
from appliance.common.errors import ModelError

MIN_CONF = 0.3
MAX_STEP_S = 0.35
#: Two tracks whose boxes overlap more than this are taken to be one body seen twice.
SAME_BODY_IOU = 0.6
#: A region seen again is the same region when its union box overlaps the last one this much
#: (track ids switch in a brawl; the place does not).
REGION_IOU = 0.3
#: Regions not measured for this long are forgotten.
REGION_TIMEOUT_S = 1.0
#: Most regions kept at once (bounded state).
MAX_REGIONS = 32
SPEED_CLIP = 60.0

#: One row per analysed frame and region (physical units in the names).
ROW_FIELDS = ("t", "union_motion_energy", "person_motion_energy_min", "wrist_speed_pair_torso_per_s",
              "zoomed_wrist_speed_pair_torso_per_s", "zoomed_persons", "two_persons", "cx", "cy", "h")

#: Every window quantity the analyzer computes; a model uses the ones its metadata names (the
#: training script keeps only features whose weight says "more of it, more likely a fight").
FEATURE_NAMES: tuple[str, ...] = (
    "union_motion_energy_p50",
    "person_motion_energy_min_p50",
    "wrist_speed_pair_p75_log_torso_per_s",
    "zoomed_wrist_speed_pair_p75_log_torso_per_s",
    "zoomed_persons_mean",
    "region_speed_p50_log_per_s",
)
#: Features shown as physical values (log1p undone) in explanations.
_LOG_FEATURES = {n for n in FEATURE_NAMES if "_log" in n}


def readable_value(name: str, value: float) -> float:
    return round(float(np.expm1(value) if name in _LOG_FEATURES else value), 3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _wrist_speed(kp0: np.ndarray, box0: np.ndarray, kp1: np.ndarray, box1: np.ndarray, dt: float) -> float | None:
    scale = F.torso_length(kp1, MIN_CONF) or F.fallback_scale(box1)
    speeds = F.relative_speeds(kp0, box0, kp1, box1, dt, max(scale, 1.0), F.WRISTS, MIN_CONF)
    return min(max(speeds.values()), SPEED_CLIP) if speeds else None


def _pair_low(values: list[float]) -> float:
    """The lower of the two most active persons' values (both must move), nan with fewer."""
    if len(values) < 2:
        return math.nan
    return sorted(values)[-2]


@dataclass
class _Region:
    rid: int
    key: tuple[int, ...]
    box: np.ndarray
    last_t: float
    rows: deque = field(default_factory=deque)
    zoomed_prev: tuple | None = None          # (t, boxes, keypoints) of the last zoomed re-pose
    run: int = 0                              # consecutive windows at or above the threshold
    track_ids: set = field(default_factory=set)


@dataclass(frozen=True)
class RegionScore:
    """A region's window this frame: features, and P(fight) when a model is loaded."""

    region: int
    track_ids: tuple[int, ...]
    start_t: float
    span_s: float
    features: np.ndarray          # float64[len(FEATURE_NAMES)]
    two_person_fraction: float
    probability: float | None
    run: int

    @property
    def two_persons(self) -> bool:
        return self.two_person_fraction >= 0.5


class RegionWindows:
    """Per candidate region, a window of rows from stage 2 (bounded: ``MAX_REGIONS`` regions,
    ``window_s`` seconds each)."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self._regions: list[_Region] = []
        self._next = 1

    def _region_for(self, ev, t: float, taken: set[int]) -> _Region:
        """The region this evidence continues (same persons, or a shared person, or the same
        place), else a new one. A region continues at most one candidate per frame."""
        best = None
        free = [r for r in self._regions if r.rid not in taken]
        for r in free:
            if r.key == ev.key:
                return r
        for r in free:
            ov = _iou(r.box, ev.union_box)
            if (set(r.key) & set(ev.key)) or ov >= REGION_IOU:
                score = ov + (1.0 if set(r.key) & set(ev.key) else 0.0)
                if best is None or score > best[0]:
                    best = (score, r)
        if best is not None:
            return best[1]
        r = _Region(self._next, ev.key, ev.union_box, t)
        self._next += 1
        self._regions.append(r)
        if len(self._regions) > MAX_REGIONS:
            self._regions.sort(key=lambda x: x.last_t)
            self._regions.pop(0)
        return r

    def update(self, t: float, evidence, persons: dict) -> list[RegionScore]:
        """``evidence``: this frame's RegionEvidence; ``persons``: track id → (prev sample, sample)
        where a sample has ``t``, ``kp``, ``box`` (the analyzer's history). Returns the scores of
        the regions measured in this frame (features only; the model is applied by the caller)."""
        self._regions = [r for r in self._regions if t - r.last_t <= REGION_TIMEOUT_S]
        out = []
        seen: set[int] = set()
        for ev in evidence:
            r = self._region_for(ev, t, seen)
            seen.add(r.rid)
            r.key, r.box, r.last_t = ev.key, ev.union_box, t
            r.track_ids.update(ev.key)
            r.rows.append(self._row(r, ev, t, persons))
            while r.rows and r.rows[0][0] < t - self.window_s + 1e-6:
                r.rows.popleft()
            out.append(self._score(r))
        return out

    def _row(self, r: _Region, ev, t: float, persons: dict) -> tuple:
        speeds = []
        for tid in ev.key:
            prev, cur = persons.get(tid, (None, None))
            if prev is not None and cur is not None and 0 < cur.t - prev.t <= MAX_STEP_S:
                v = _wrist_speed(prev.kp, prev.box, cur.kp, cur.box, cur.t - prev.t)
                if v is not None:
                    speeds.append(v)
        boxes = [persons[tid][1].box for tid in ev.key if tid in persons and persons[tid][1] is not None]
        two = len(boxes) >= 2 and _iou(boxes[0], boxes[1]) < SAME_BODY_IOU
        zspeeds = []
        zp = ev.zoomed_persons
        if ev.zoomed is not None:
            zb, zk = ev.zoomed.boxes, ev.zoomed.keypoints
            if r.zoomed_prev is not None and 0 < t - r.zoomed_prev[0] <= MAX_STEP_S:
                t0, pb, pk = r.zoomed_prev
                for i in range(len(zb)):
                    c1 = 0.5 * (zb[i, :2] + zb[i, 2:])
                    h1 = max(float(zb[i, 3] - zb[i, 1]), 1.0)
                    if len(pb) == 0:
                        break
                    c0 = 0.5 * (pb[:, :2] + pb[:, 2:])
                    d = np.hypot(*(c0 - c1).T)
                    j = int(np.argmin(d))
                    if d[j] <= 0.5 * h1:
                        v = _wrist_speed(pk[j], pb[j], zk[i], zb[i], t - t0)
                        if v is not None:
                            zspeeds.append(v)
            r.zoomed_prev = (t, zb, zk)
            two = two or zp >= 2
        ub = ev.union_box
        return (t, ev.union_motion_energy, min(ev.person_motion_energy) if ev.person_motion_energy else 0.0,
                _pair_low(speeds), _pair_low(zspeeds), float(zp), float(two),
                0.5 * float(ub[0] + ub[2]), 0.5 * float(ub[1] + ub[3]), max(float(ub[3] - ub[1]), 1.0))

    def _score(self, r: _Region) -> RegionScore:
        rows = np.array(r.rows, np.float64)
        return RegionScore(r.rid, tuple(sorted(r.track_ids)), float(rows[0, 0]), float(rows[-1, 0] - rows[0, 0]),
                           window_features(rows), float(rows[:, 6].mean()), None, r.run)

    def set_run(self, rid: int, run: int) -> None:
        for r in self._regions:
            if r.rid == rid:
                r.run = run


def _nanpct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if x.size else 0.0


def window_features(rows: np.ndarray) -> np.ndarray:
    """:data:`FEATURE_NAMES` of a region's rows (float64[n, len(ROW_FIELDS)], time order)."""
    t = rows[:, 0]
    speed = []
    for i in range(1, len(rows)):
        dt = t[i] - t[i - 1]
        if 0 < dt <= MAX_STEP_S:
            speed.append(math.hypot(rows[i, 7] - rows[i - 1, 7], rows[i, 8] - rows[i - 1, 8]) / rows[i, 9] / dt)
    return np.array([
        float(np.median(rows[:, 1])),
        float(np.median(rows[:, 2])),
        math.log1p(_nanpct(rows[:, 3], 75)),
        math.log1p(_nanpct(rows[:, 4], 75)),
        float(np.mean(rows[:, 5])),
        math.log1p(float(np.median(speed)) if speed else 0.0),
    ], np.float64)


class FightModel:
    """The manifest-verified ONNX classifier and its operating point (metadata in the file)."""

    def __init__(self, blob: bytes, name: str = "", sha256: str = ""):
        import onnxruntime as ort

        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
            meta = json.loads(self.session.get_modelmeta().custom_metadata_map["appliance"])
        except Exception as exc:
            raise ModelError(f"fight model {name!r}: not a usable ONNX classifier with appliance metadata: {exc}") \
                from None
        self.name, self.sha256 = name, sha256
        self.feature_names = tuple(meta.get("features", ()))
        unknown = [n for n in self.feature_names if n not in FEATURE_NAMES]
        if not self.feature_names or unknown:
            raise ModelError(f"fight model {name!r}: features {unknown or '(none)'} are not among this version's "
                             f"{list(FEATURE_NAMES)}; retrain with scripts/train_fight_classifier.py")
        self._select = [FEATURE_NAMES.index(n) for n in self.feature_names]
        self.threshold = float(meta["threshold"])
        self.consecutive_windows = int(meta["consecutive_windows"])
        self.window_s = float(meta["window_s"])
        self.min_window_s = float(meta["min_window_s"])
        if not (0.0 < self.threshold < 1.0 and self.consecutive_windows >= 1
                and 0.0 < self.min_window_s <= self.window_s):
            raise ModelError(f"fight model {name!r}: operating point out of range in its metadata")
        self.meta = meta
        self.input_name = self.session.get_inputs()[0].name
        self._prob_output = self.session.get_outputs()[1].name

    @staticmethod
    def load(name: str, models_dir: str | Path | None = None) -> FightModel:
        from appliance.box.pose.manifest import verified_model

        entry, blob = verified_model(name, models_dir)
        return FightModel(blob, entry.name, entry.sha256)

    def probability(self, features: np.ndarray) -> float:
        """P(fight) of one window's :data:`FEATURE_NAMES` vector (the model picks its own)."""
        x = np.asarray(features, np.float32)[self._select].reshape(1, -1)
        out = self.session.run([self._prob_output], {self.input_name: x})[0]
        return float(np.asarray(out).reshape(-1)[-1])
