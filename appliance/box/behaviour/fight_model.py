"""Window-level fight classifier: skeleton features of the last few seconds → P(fight).

The kinematic rules in :mod:`appliance.box.behaviour.analyzer` need the pose model to keep both
fighters as clean tracks; in real CCTV it often does not (blurred, tangled, small bodies). This
classifier instead summarises *everything the tracker saw* in a sliding window (default the
last 2 s, causal): how fast limbs move relative to the body, how close and overlapping bodies
are, how erratic the motion is, how confident the keypoints are. A logistic regression over
those :data:`FEATURE_NAMES` gives the probability; each feature's contribution (weight ×
standardised value) is the explanation an operator or a court can read.

The model is data (``models/fight-window-lr.json``, listed with its sha256 in
``models/manifest.toml`` and loaded through :func:`appliance.box.pose.manifest.verified_model`, so
a changed file is refused). It is trained by ``scripts/train_fight_classifier.py``; see
docs/behaviour.md for how and how well.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.box.behaviour import features as F
from appliance.common.errors import ModelError
from appliance.contracts.types import TrackedFrame

#: Keypoints below this confidence are not used for positions (as the rules' default).
MIN_CONF = 0.3
#: Two samples further apart than this are not differentiated (a track gap, not motion).
MAX_STEP_S = 0.35
#: Distances are clipped here (torso lengths): beyond it, persons do not interact.
FAR = 6.0
#: Pose change is measured on the head and arms: legs move fast relative to the hips in walking.
UPPER_BODY = tuple(range(11))
#: An ankle above the other by this much (torso lengths) is lifted (a kick, not a step).
KICK_LIFT = 0.5
#: Speeds are compressed with log1p after clipping here (torso lengths / s): keypoint jumps of
#: occluded persons reach hundreds and would otherwise dominate.
SPEED_CLIP = 60.0

# Window feature names, with their units; the model file lists the ones it uses, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "persons_mean",                     # persons per frame
    "limb_speed_p50_log_torso_per_s",   # log1p of wrist (or lifted ankle) speed relative to the hips
    "limb_speed_p90_log_torso_per_s",
    "pose_change_p50_log_torso_per_s",  # mean head/arm keypoint speed relative to the hips, log1p
    "pose_change_p90_log_torso_per_s",
    "body_speed_p50_log_torso_per_s",   # hip (reference point) speed, log1p
    "body_accel_p90_log_torso_per_s2",  # change of hip velocity between steps, log1p
    "box_size_change_p90_per_s",        # |d log(box height)| / dt
    "box_aspect_change_p90_per_s",      # |d log(box width / height)| / dt
    "pair_distance_min_torso",          # closest hip-to-hip distance in the window
    "pair_distance_median_torso",       # median over frames of the closest pair
    "close_pair_fraction",              # frames with a pair within 1.5 torso lengths
    "pair_box_iou_mean",                # mean over frames of the largest box overlap
    "wrist_to_other_head_min_torso",    # closest wrist to another person's head
    "arm_raised_fraction",              # visible arms with the wrist above the shoulder
    "torso_lean_p90_deg",               # torso angle from vertical
    "keypoint_conf_mean",               # mean keypoint confidence of the persons seen
    "keypoint_conf_std",                # spread of keypoint confidence within a person
    "track_churn_per_person",           # distinct track ids / most persons in one frame (<= 5)
    "frames_with_person_fraction",      # analysed frames in the window with anybody seen
    "person_limb_speed_median_max_log",     # the most active person: median of its limb speeds
    "person_pose_change_median_max_log",    # the most active person: median of its pose change
    "close_pair_limb_speed_median_log",     # the most active pair ever within 2 torso lengths:
                                            # the lower of the two persons' median limb speeds
    "limb_steps_over_4_fraction",           # limb steps faster than 4 torso lengths / s
    "limb_steps_over_8_fraction",           # ... faster than 8
    "persons_max",                          # most persons in one frame
    "path_straightness_median",             # per track: net hip displacement / path length
                                            # (walking ~1, scuffling in place low); median
)
FEATURE_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _foot_lift(kp: np.ndarray, ankle: int, scale: float) -> float:
    other = F.ANKLES[1] if ankle == F.ANKLES[0] else F.ANKLES[0]
    if kp[other, 2] < MIN_CONF or kp[ankle, 2] < MIN_CONF:
        return 0.0
    return float(kp[other, 1] - kp[ankle, 1]) / scale


def _pct(values: list[float], q: float, default: float) -> float:
    return float(np.percentile(values, q)) if values else default


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _head(kp: np.ndarray) -> np.ndarray | None:
    pts = [kp[i, :2] for i in F.HEAD if kp[i, 2] >= MIN_CONF]
    return np.mean(pts, axis=0) if pts else None


def window_features(frames: list[TrackedFrame] | tuple[TrackedFrame, ...]) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector (float64) of a window of tracked frames in time order."""
    # Body scale per track: median torso length over the window (box height / 3 if never seen).
    torsos: dict[int, list[float]] = {}
    for f in frames:
        for p in f.persons:
            tl = F.torso_length(p.keypoints, MIN_CONF)
            if tl is not None and tl > 1.0:
                torsos.setdefault(p.track_id, []).append(tl)
    scale_of: dict[int, float] = {tid: float(np.median(v)) for tid, v in torsos.items()}

    def scale(p) -> float:
        return scale_of.get(p.track_id) or F.fallback_scale(p.box)

    limb, pose_change, body_speed, body_accel, size_change, aspect_change = [], [], [], [], [], []
    pair_min, ious, wrist_head, lean = [], [], [], []
    arms_up = arms_seen = 0
    conf_mean, conf_std = [], []
    counts, ids = [], set()
    last: dict[int, tuple[float, object, np.ndarray | None]] = {}   # tid -> (t, person, velocity)
    limb_of: dict[int, list[float]] = {}
    change_of: dict[int, list[float]] = {}
    close_pairs: set[tuple[int, int]] = set()
    path: dict[int, list[np.ndarray]] = {}   # tid -> reference points (torso lengths) in order
    for f in frames:
        counts.append(len(f.persons))
        for p in f.persons:
            ids.add(p.track_id)
            kp, box, s = p.keypoints, p.box, scale(p)
            conf_mean.append(float(np.mean(kp[:, 2])))
            conf_std.append(float(np.std(kp[:, 2])))
            angle = F.torso_angle_deg(kp, MIN_CONF)
            if angle is not None:
                lean.append(angle)
            for w, sh in ((F.WRISTS[0], F.L_SHO), (F.WRISTS[1], F.R_SHO)):
                if kp[w, 2] >= MIN_CONF and kp[sh, 2] >= MIN_CONF:
                    arms_seen += 1
                    arms_up += int(kp[w, 1] < kp[sh, 1])
            velocity = None
            prev = last.get(p.track_id)
            if prev is not None and 0.0 < f.t - prev[0] <= MAX_STEP_S:
                dt = f.t - prev[0]
                q = prev[1]
                speeds = F.relative_speeds(q.keypoints, q.box, kp, box, dt, s,
                                           (*F.WRISTS, *F.ANKLES), MIN_CONF)
                # Walking swings the feet as fast relative to the hips as a kick, so an ankle
                # counts only when lifted off the ground (as in the kick rule).
                speeds = {j: v for j, v in speeds.items() if j in F.WRISTS or _foot_lift(kp, j, s) >= KICK_LIFT}
                if speeds:
                    limb.append(min(max(speeds.values()), SPEED_CLIP))
                    limb_of.setdefault(p.track_id, []).append(limb[-1])
                allkp = F.relative_speeds(q.keypoints, q.box, kp, box, dt, s, UPPER_BODY, MIN_CONF)
                if len(allkp) >= 4:
                    pose_change.append(min(float(np.mean(list(allkp.values()))), SPEED_CLIP))
                    change_of.setdefault(p.track_id, []).append(pose_change[-1])
                r0, r1 = F.common_reference(q.keypoints, q.box, kp, box, MIN_CONF)
                velocity = (r1 - r0) / dt / s
                body_speed.append(min(float(np.hypot(*velocity)), SPEED_CLIP))
                if prev[2] is not None:
                    body_accel.append(min(float(np.hypot(*(velocity - prev[2]))) / dt, 10 * SPEED_CLIP))
                h0, h1 = q.box[3] - q.box[1], box[3] - box[1]
                w0, w1 = q.box[2] - q.box[0], box[2] - box[0]
                if min(h0, h1, w0, w1) > 1.0:
                    size_change.append(abs(math.log(h1 / h0)) / dt)
                    aspect_change.append(abs(math.log((w1 / h1) / (w0 / h0))) / dt)
            last[p.track_id] = (f.t, p, velocity)
            path.setdefault(p.track_id, []).append(F.reference_point(kp, box, MIN_CONF) / s)
        persons = f.persons
        if len(persons) >= 2:
            best_d, best_iou, best_wh = FAR, 0.0, FAR
            refs = [F.reference_point(p.keypoints, p.box, MIN_CONF) for p in persons]
            heads = [_head(p.keypoints) for p in persons]
            for i, a in enumerate(persons):
                for j in range(len(persons)):
                    if j == i:
                        continue
                    b = persons[j]
                    s = 0.5 * (scale(a) + scale(b))
                    if j > i:
                        d = float(np.hypot(*(refs[i] - refs[j]))) / s
                        best_d = min(best_d, d)
                        if d < 2.0:
                            close_pairs.add((a.track_id, b.track_id))
                        best_iou = max(best_iou, _iou(a.box, b.box))
                    if heads[j] is not None:
                        for w in F.WRISTS:
                            if a.keypoints[w, 2] >= MIN_CONF:
                                best_wh = min(best_wh, float(np.hypot(*(a.keypoints[w, :2] - heads[j]))) / s)
            pair_min.append(best_d)
            ious.append(best_iou)
            wrist_head.append(best_wh)
    mean_persons = float(np.mean(counts)) if counts else 0.0
    straightness = []
    for pts in path.values():
        if len(pts) >= 5:
            arr = np.array(pts)
            length = float(np.sum(np.hypot(*np.diff(arr, axis=0).T)))
            if length > 0.5:
                straightness.append(float(np.hypot(*(arr[-1] - arr[0]))) / length)
    # Sustained, not sporadic: a person's *median* over >= 3 steps (keypoint jumps are sporadic).
    med_limb = {tid: float(np.median(v)) for tid, v in limb_of.items() if len(v) >= 3}
    med_change = {tid: float(np.median(v)) for tid, v in change_of.items() if len(v) >= 3}
    pair_limb = [min(med_limb[a], med_limb[b]) for a, b in close_pairs if a in med_limb and b in med_limb]
    log = math.log1p
    vec = {
        "persons_mean": mean_persons,
        "limb_speed_p50_log_torso_per_s": log(_pct(limb, 50, 0.0)),
        "limb_speed_p90_log_torso_per_s": log(_pct(limb, 90, 0.0)),
        "pose_change_p50_log_torso_per_s": log(_pct(pose_change, 50, 0.0)),
        "pose_change_p90_log_torso_per_s": log(_pct(pose_change, 90, 0.0)),
        "body_speed_p50_log_torso_per_s": log(_pct(body_speed, 50, 0.0)),
        "body_accel_p90_log_torso_per_s2": log(_pct(body_accel, 90, 0.0)),
        "box_size_change_p90_per_s": min(_pct(size_change, 90, 0.0), 20.0),
        "box_aspect_change_p90_per_s": min(_pct(aspect_change, 90, 0.0), 20.0),
        "pair_distance_min_torso": min(pair_min) if pair_min else FAR,
        "pair_distance_median_torso": float(np.median(pair_min)) if pair_min else FAR,
        "close_pair_fraction": (sum(d < 1.5 for d in pair_min) / len(frames)) if frames else 0.0,
        "pair_box_iou_mean": (sum(ious) / len(frames)) if frames else 0.0,
        "wrist_to_other_head_min_torso": min(wrist_head) if wrist_head else FAR,
        "arm_raised_fraction": arms_up / arms_seen if arms_seen else 0.0,
        "torso_lean_p90_deg": _pct(lean, 90, 0.0),
        "keypoint_conf_mean": float(np.mean(conf_mean)) if conf_mean else 0.0,
        "keypoint_conf_std": float(np.mean(conf_std)) if conf_std else 0.0,
        "track_churn_per_person": min(len(ids) / max(1, max(counts, default=0)), 5.0),
        "frames_with_person_fraction": (sum(c > 0 for c in counts) / len(counts)) if counts else 0.0,
        "person_limb_speed_median_max_log": log(max(med_limb.values(), default=0.0)),
        "person_pose_change_median_max_log": log(max(med_change.values(), default=0.0)),
        "close_pair_limb_speed_median_log": log(max(pair_limb, default=0.0)),
        "limb_steps_over_4_fraction": float(np.mean(np.array(limb) > 4.0)) if limb else 0.0,
        "limb_steps_over_8_fraction": float(np.mean(np.array(limb) > 8.0)) if limb else 0.0,
        "persons_max": float(max(counts, default=0)),
        "path_straightness_median": float(np.median(straightness)) if straightness else 0.5,
    }
    return np.array([vec[n] for n in FEATURE_NAMES], np.float64)


def has_pair(frames) -> bool:
    """A fight needs two persons: at least one frame of the window shows two or more."""
    return any(len(f.persons) >= 2 for f in frames)


def readable(name: str, value: float) -> str:
    """``name = value`` in physical units: log1p-compressed speeds are shown as speeds again."""
    if "_log" in name:
        name, value = name.replace("_log", ""), math.expm1(value)
        if "torso" not in name:
            name += "_torso_per_s"
    return f"{name} = {value:.2f}"


class FrameWindow:
    """The last ``seconds`` of tracked frames (bounded: at most ``max_frames``)."""

    def __init__(self, seconds: float, max_frames: int = 600):
        self.seconds = seconds
        self.frames: deque[TrackedFrame] = deque(maxlen=max_frames)

    def push(self, frame: TrackedFrame) -> None:
        self.frames.append(frame)
        while self.frames and self.frames[0].t < frame.t - self.seconds + 1e-6:
            self.frames.popleft()

    @property
    def span_s(self) -> float:
        return self.frames[-1].t - self.frames[0].t if self.frames else 0.0


@dataclass(frozen=True)
class FightModel:
    """A logistic regression over standardised window features, and how to apply it.

    p = sigmoid(bias + sum_i weight_i * (x_i - mean_i) / std_i); an event fires at
    p >= ``threshold`` in ``consecutive_windows`` successive windows (one per analysed frame), each
    holding at least ``min_window_s`` of frames of which one shows two or more persons.
    """

    name: str
    sha256: str
    feature_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    window_s: float
    min_window_s: float
    consecutive_windows: int = 1

    @staticmethod
    def from_bytes(blob: bytes, name: str = "", sha256: str = "") -> FightModel:
        try:
            doc = json.loads(blob.decode("utf-8"))
            names = tuple(doc["features"])
            unknown = [n for n in names if n not in FEATURE_INDEX]
            if unknown:
                raise ValueError(f"unknown features {unknown}")
            mean = np.asarray(doc["mean"], np.float64)
            std = np.asarray(doc["std"], np.float64)
            weights = np.asarray(doc["weights"], np.float64)
            if not (mean.shape == std.shape == weights.shape == (len(names),)) or np.any(std <= 0):
                raise ValueError("features, mean, std and weights must have equal lengths, std > 0")
            model = FightModel(name or doc.get("name", ""), sha256, names, mean, std, weights,
                               float(doc["bias"]), float(doc["threshold"]), float(doc["window_s"]),
                               float(doc["min_window_s"]), int(doc.get("consecutive_windows", 1)))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"fight model {name!r} is not a valid model file: {exc}") from None
        if (not 0.0 < model.threshold < 1.0 or not 0.0 < model.min_window_s <= model.window_s
                or not 1 <= model.consecutive_windows <= 100):
            raise ModelError(f"fight model {name!r}: threshold must be in (0, 1), "
                             "0 < min_window_s <= window_s and 1 <= consecutive_windows <= 100")
        return model

    @staticmethod
    def load(name: str, models_dir: str | Path | None = None) -> FightModel:
        """Loads a manifest-listed model file after checking its sha256 (a changed file is refused)."""
        from appliance.box.pose.manifest import verified_model

        entry, blob = verified_model(name, models_dir)
        return FightModel.from_bytes(blob, entry.name, entry.sha256)

    def select(self, full: np.ndarray) -> np.ndarray:
        """This model's features out of a full :func:`window_features` vector."""
        return full[[FEATURE_INDEX[n] for n in self.feature_names]]

    def probability(self, full: np.ndarray) -> float:
        z = (self.select(full) - self.mean) / self.std
        return float(1.0 / (1.0 + math.exp(-float(np.clip(self.bias + z @ self.weights, -50, 50)))))

    def contributions(self, full: np.ndarray, top: int = 4) -> list[dict[str, float | str]]:
        """The ``top`` features pushing most towards *fight*: name, value, log-odds contribution."""
        x = self.select(full)
        parts = self.weights * (x - self.mean) / self.std
        order = np.argsort(-parts)[:top]
        return [{"feature": self.feature_names[i], "value": round(float(x[i]), 3),
                 "log_odds": round(float(parts[i]), 3),
                 "readable": readable(self.feature_names[i], float(x[i]))} for i in order if parts[i] > 0]
