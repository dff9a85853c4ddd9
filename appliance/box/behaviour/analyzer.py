"""TrackedFrame → Event: kinematic detectors over a bounded per-track skeleton history.

Each analysed frame the analyzer

1. appends every person's skeleton to its track's history (a deque bounded by
   ``history_s``; tracks not seen for ``history_s`` are forgotten, and at most
   ``max_tracks`` histories exist),
2. derives each person's body scale (median torso length over the history) and limb speeds
   relative to the person's own hips (between this and the previous sample),
3. runs the detectors (docs/behaviour.md says what each one measures):
   person pairs → strike, kick, push, strangle, fight; single persons → fall, lying,
4. turns per-frame observations into *episodes*: an episode is reported once, at the first
   confident observation (so a trigger can fire at once), and again at most every
   ``repeat_s`` while it goes on; it ends after ``episode_gap_s`` without evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.box.behaviour import features as F
from appliance.box.behaviour.config import BehaviourConfig
from appliance.box.behaviour.fight_model import FEATURE_NAMES, FightModel, RegionScore, RegionWindows, readable_value
from appliance.box.behaviour.weapon import WeaponCounter
from appliance.contracts.types import Event, HandScan, Pattern, TrackedFrame

#: Two samples further apart than this are not differentiated (a track gap, not motion).
MAX_STEP_S = 0.35
#: Pairs further apart than this (hip to hip, torso lengths) are never examined.
PAIR_RANGE = 4.0
#: A punch extends the arm: the wrist moves away from its own shoulder by at least this much
#: (torso lengths) in the step that lands. Rejects hands that are merely swung or carried.
STRIKE_MIN_EXTENSION = 0.25
#: A kicking foot is off the ground: above the standing foot by this much (torso lengths).
#: Walking feet move as fast relative to the hips as a kick but stay near the ground, so a
#: foot counts as violent motion only when lifted.
KICK_MIN_LIFT = 0.5
#: A fight needs at least this many violent limb steps in its window: one or two fast steps are
#: what keypoints jumping between two passers-by look like.
FIGHT_MIN_VIOLENT_STEPS = 3
#: A collapse (a fall seen end-on) leaves the body at most this share of its upright
#: height-to-width ratio: standing about 2.3, on the ground about 1.3 or less.
COLLAPSE_ASPECT = 0.7
#: A person who ends down, having lost COLLAPSE_ASPECT of their
#: height-to-width ratio, has fallen when the hips dropped this share of ``fall_drop``.
TIPOVER_DROP_SHARE = 0.5
#: ... and when the body is now clearly wider than high: a person bent over with bent knees
#: (torso horizontal, hips lower, legs upright) is about as wide as high.
TIPOVER_MAX_ASPECT = 0.75
#: A box within this share of the image size from its border may be cut by the frame edge: its
#: shape then says nothing about the body's posture.
EDGE_MARGIN = 0.02


def _foot_lift(kp: np.ndarray, ankle: int, scale: float, min_conf: float = 0.3) -> float:
    """How far ``ankle`` is above the other ankle, torso lengths (0 when it cannot be told)."""
    other = F.ANKLES[1] if ankle == F.ANKLES[0] else F.ANKLES[0]
    if kp[other, 2] < min_conf or kp[ankle, 2] < min_conf:
        return 0.0
    return float(kp[other, 1] - kp[ankle, 1]) / scale


@dataclass
class _Sample:
    t: float
    kp: np.ndarray    # float32[17, 3]
    box: np.ndarray   # float32[4]
    limb_speed: float | None = None   # fastest wrist/ankle vs the hips since the previous sample


@dataclass
class _TrackHistory:
    samples: deque = field(default_factory=deque)
    torso: deque = field(default_factory=lambda: deque(maxlen=30))   # recent torso lengths (px)
    down_since: float | None = None       # lying: first t of the current down spell
    last_down_t: float | None = None
    neck_grip: dict = field(default_factory=dict)   # other track id -> first t of the grip

    @property
    def last_t(self) -> float:
        return self.samples[-1].t


@dataclass
class _Person:
    """One person in the current frame, with the derived quantities the detectors use."""

    track_id: int
    sample: _Sample
    prev: _Sample | None          # previous sample when it is recent enough to differentiate
    scale: float                  # torso length, pixels
    anchors: F.Anchors
    ref: np.ndarray               # hips (else shoulders, else box centre), pixels
    wrist_speed: dict[int, float]     # joint -> torso lengths / s, relative to the hips
    ankle_speed: dict[int, float]
    velocity: np.ndarray | None   # reference point velocity, torso lengths / s
    angle: float | None           # torso angle from vertical, degrees


@dataclass(frozen=True)
class Observation:
    """One detector firing in one frame (before episode bookkeeping)."""

    pattern: Pattern
    t: float
    start_t: float
    track_ids: tuple[int, ...]
    confidence: float
    explanation: dict[str, Any]
    #: The stage-2 region the evidence belongs to (None: the persons' own tracks are the region).
    region: int | None = None

    @property
    def episode_key(self) -> tuple:
        """Episodes are per region (or pair, or person), not per pattern: a fight, strike or push
        of the same persons is one episode (one alarm), and a second, unrelated fight in the
        scene is reported at once, not folded into the first one's."""
        where = ("region", self.region) if self.region is not None else ("tracks", tuple(sorted(self.track_ids)))
        return ("violent" if self.pattern.violent else self.pattern.value, where)


@dataclass
class _Episode:
    start_t: float
    last_t: float
    reported_t: float
    track_ids: list[int]


def _at_frame_edge(box: np.ndarray, frame_size: tuple[int, int]) -> bool:
    """Whether a box touches the image border (within EDGE_MARGIN of the image size)."""
    w, h = frame_size
    if w <= 0 or h <= 0:
        return False
    mx, my = EDGE_MARGIN * w, EDGE_MARGIN * h
    return bool(box[0] <= mx or box[1] <= my or box[2] >= w - mx or box[3] >= h - my)


def _confidence(ratio: float, *more: float) -> float:
    """0.5 at a threshold, rising to 1 at twice it; the mean over the cues that fired."""
    parts = [ratio, *more]
    return float(np.mean([0.5 + 0.5 * min(max(p - 1.0, 0.0), 1.0) for p in parts]))


def _r(x: float) -> float:
    return round(float(x), 2)


class BehaviourAnalyzer:
    """Feed :meth:`update` every analysed frame in time order; it returns new events.

    >>> analyzer = BehaviourAnalyzer(BehaviourConfig())
    >>> for tracked in frames:
    ...     for event in analyzer.update(tracked): ...
    >>> analyzer.flush()
    """

    def __init__(self, cfg: BehaviourConfig | None = None, *, models_dir: str | None = None,
                 objects=None):
        """``models_dir``: where the fight classifier's manifest is (default: bundled models/).
        Raises :class:`~appliance.common.errors.ModelError` when the named model is missing or its
        file's sha256 differs from the manifest (a changed model is refused, not ignored).
        ``objects``: the :class:`~appliance.box.config.ObjectsConfig` whose ``min_frames`` and
        ``min_score`` the weapon pattern uses (default: the defaults)."""
        from appliance.box.config import ObjectsConfig

        self.cfg = cfg or BehaviourConfig()
        objects = objects or ObjectsConfig()
        self.weapons = WeaponCounter(objects.min_frames, objects.min_score)
        self._tracks: dict[int, _TrackHistory] = {}
        self._episodes: dict[tuple, _Episode] = {}
        self._t: float | None = None
        self._frame_size: tuple[int, int] = (0, 0)
        self.fight_model: FightModel | None = None
        #: The highest stage-2 fight probability of the last analysed frame among regions with
        #: two-person evidence (0 when none was computed).
        self.fight_probability = 0.0
        #: P(fight) at which a region's window counts: ``[behaviour] fight_threshold`` when set
        #: (a site moving along the DET without retraining), else the model's own operating point.
        self.fight_threshold = 0.0
        if self.cfg.fight_model:
            self.fight_model = FightModel.load(self.cfg.fight_model, models_dir)
            self.fight_threshold = self.cfg.fight_threshold or self.fight_model.threshold
        self._regions = RegionWindows(self.fight_model.window_s if self.fight_model else 2.0)
        #: Regions with two-person evidence this frame (strike, kick, push, strangle need one).
        self._two_person_regions: dict[int, RegionScore] = {}
        self._relative_motion: dict[int, float] = {}
        #: This frame's stage-2 regions (features; for training and tests).
        self.region_scores: list[RegionScore] = []

    # ------------------------------------------------------------------ public

    def update(self, frame: TrackedFrame, evidence: tuple = (), scan: HandScan | None = None) -> list[Event]:
        """``evidence``: stage 2's :class:`~appliance.box.behaviour.stage2.RegionEvidence` for this
        frame's open candidates (none: no violent pattern can be confirmed; the kinematic fight
        rule, ``fight_model = ""``, needs none). ``scan``: the object stage's result for this
        frame (weapon pattern), if it runs."""
        t = float(frame.t)
        if self._t is not None and t < self._t:
            raise ValueError(f"frames must come in time order: t={t} after {self._t}")
        self._t = t
        self._frame_size = frame.frame_size
        self.fight_probability = 0.0
        persons = [self._ingest(p, t) for p in frame.persons]
        self._prune(t)
        fights = self._stage2(persons, evidence, t)
        observations = self._pair_observations(persons, t) + fights + self._single_observations(persons, t)
        if scan is not None:
            observations += [Observation(*obs) for obs in self.weapons.update(scan)]
        return self._episode_events(observations, t)

    def focus_tracks(self) -> set[int]:
        """Tracks the object stage should scan in the next frame: open weapon candidates and the
        persons of open violent episodes (where a weapon matters most)."""
        focus = set(self.weapons.candidate_tracks)
        for (kind, _where), episode in self._episodes.items():
            if kind == "violent":
                focus.update(episode.track_ids)
        return focus

    def flush(self) -> list[Event]:
        """End of stream: episodes are reported at their onset, so nothing is pending."""
        self._episodes.clear()
        return []

    @property
    def tracked_histories(self) -> int:
        """How many per-track histories are held (bounded by ``max_tracks``)."""
        return len(self._tracks)

    @property
    def history_samples(self) -> int:
        return sum(len(h.samples) for h in self._tracks.values())

    # ------------------------------------------------------------------ history

    def _ingest(self, p, t: float) -> _Person:
        cfg = self.cfg
        hist = self._tracks.get(p.track_id)
        if hist is None:
            hist = self._tracks[p.track_id] = _TrackHistory()
        kp = np.asarray(p.keypoints, np.float32)
        box = np.asarray(p.box, np.float32)
        prev = hist.samples[-1] if hist.samples else None
        if prev is not None and not (0.0 < t - prev.t <= MAX_STEP_S):
            prev = None
        sample = _Sample(t, kp, box)
        hist.samples.append(sample)
        torso = F.torso_length(kp, cfg.keypoint_min_conf)
        if torso is not None and torso > 1.0:
            hist.torso.append(torso)
        scale = float(np.median(hist.torso)) if hist.torso else F.fallback_scale(box)
        wrist_speed: dict[int, float] = {}
        ankle_speed: dict[int, float] = {}
        velocity = None
        if prev is not None:
            dt = t - prev.t
            wrist_speed = F.relative_speeds(prev.kp, prev.box, kp, box, dt, scale, F.WRISTS, cfg.keypoint_min_conf)
            ankle_speed = F.relative_speeds(prev.kp, prev.box, kp, box, dt, scale, F.ANKLES, cfg.keypoint_min_conf)
            r0, r1 = F.common_reference(prev.kp, prev.box, kp, box, cfg.keypoint_min_conf)
            velocity = (r1 - r0) / dt / scale
            sample.limb_speed = max([0.0, *wrist_speed.values(),
                                     *(v for j, v in ankle_speed.items()
                                       if _foot_lift(kp, j, scale, cfg.keypoint_min_conf) >= KICK_MIN_LIFT)])
        return _Person(p.track_id, sample, prev, scale, F.anchors(kp, box, cfg.keypoint_min_conf),
                       F.reference_point(kp, box, cfg.keypoint_min_conf), wrist_speed, ankle_speed,
                       velocity, F.torso_angle_deg(kp, F.POSTURE_MIN_CONF))

    def _prune(self, t: float) -> None:
        horizon = t - self.cfg.history_s
        for tid in list(self._tracks):
            hist = self._tracks[tid]
            while hist.samples and hist.samples[0].t < horizon:
                hist.samples.popleft()
            if not hist.samples:
                del self._tracks[tid]
        excess = len(self._tracks) - self.cfg.max_tracks
        if excess > 0:
            for tid in sorted(self._tracks, key=lambda i: self._tracks[i].last_t)[:excess]:
                del self._tracks[tid]
        for hist in self._tracks.values():
            for other in [o for o in hist.neck_grip if o not in self._tracks]:
                del hist.neck_grip[other]

    # ------------------------------------------------------------------ detectors

    def _pair_observations(self, persons: list[_Person], t: float) -> list[Observation]:
        out: list[Observation] = []
        for i, a in enumerate(persons):
            for b in persons[i + 1:]:
                scale = 0.5 * (a.scale + b.scale)
                dist = float(np.hypot(*(a.ref - b.ref))) / scale
                if dist > PAIR_RANGE:
                    continue
                region, moving = None, 0.0
                if self.fight_model is not None:
                    # A violent rule needs the pair to be a stage-2 candidate region with
                    # two-person evidence: stage 1 saw them within reach with moving limbs, and
                    # the pixels (tracks not one body twice, or two persons in the zoomed crop)
                    # confirm two bodies.
                    region = self._region_of((a.track_id, b.track_id))
                    if region is None:
                        continue
                    # ... and both bodies must move in themselves in this frame (a blow or a push
                    # moves the actor's limbs and the target's body; a keypoint jump of a low-score
                    # skeleton beside someone standing or walking does not).
                    moving = min(self._relative_motion.get(a.track_id, 0.0),
                                 self._relative_motion.get(b.track_id, 0.0))
                    if moving < self.cfg.violent_min_relative_motion:
                        continue
                for actor, target in ((a, b), (b, a)):
                    for detect in (self._strike, self._kick, self._push, self._strangle):
                        obs = detect(actor, target, scale, t)
                        if obs is not None:
                            explanation = obs.explanation if region is None else {
                                **obs.explanation, "relative_motion_min_box_heights_per_s": _r(moving)}
                            out.append(dataclasses.replace(obs, region=region, explanation=explanation))
                fight = self._fight(a, b, dist, t) if self.fight_model is None else None
                if fight is not None:
                    out.append(fight)
        return out

    def _strike(self, actor: _Person, target: _Person, scale: float, t: float) -> Observation | None:
        cfg = self.cfg
        prev = actor.prev
        if prev is None:
            return None   # no speeds without a previous sample
        goals = [g for g in (target.anchors.head, target.anchors.neck, target.ref) if g is not None]
        goals_arr = np.concatenate([np.array(goals, np.float32).reshape(-1, 2), target.anchors.body])
        best = None
        for j, speed in actor.wrist_speed.items():
            if speed < cfg.strike_wrist_speed:
                continue
            reach = F.min_distance(actor.sample.kp[j, :2], goals_arr) / scale
            before = F.min_distance(prev.kp[j, :2], goals_arr) / scale
            sho = F.L_SHO if j == F.WRISTS[0] else F.R_SHO
            if actor.sample.kp[sho, 2] < cfg.keypoint_min_conf or prev.kp[sho, 2] < cfg.keypoint_min_conf:
                continue
            extension = (float(np.hypot(*(actor.sample.kp[j, :2] - actor.sample.kp[sho, :2])))
                         - float(np.hypot(*(prev.kp[j, :2] - prev.kp[sho, :2])))) / actor.scale
            # A blow lands: the arm extends, the wrist ends near the body and came from further away.
            if reach <= cfg.strike_reach and before > reach and extension >= STRIKE_MIN_EXTENSION:
                conf = _confidence(speed / cfg.strike_wrist_speed, 2.0 - reach / cfg.strike_reach)
                if best is None or conf > best[0]:
                    best = (conf, speed, reach, j, extension)
        if best is None:
            return None
        conf, speed, reach, j, extension = best
        return Observation(Pattern.STRIKE, t, prev.t, (actor.track_id, target.track_id), conf, {
            "attacker_track": actor.track_id,
            "wrist": "left" if j == F.WRISTS[0] else "right",
            "wrist_speed_torso_per_s": _r(speed),
            "wrist_to_target_torso": _r(reach),
            "arm_extension_torso": _r(extension),
        })

    def _kick(self, actor: _Person, target: _Person, scale: float, t: float) -> Observation | None:
        cfg = self.cfg
        prev = actor.prev
        if prev is None:
            return None   # no speeds without a previous sample
        kp = actor.sample.kp
        best = None
        for j, speed in actor.ankle_speed.items():
            if speed < cfg.kick_ankle_speed:
                continue
            lift = _foot_lift(kp, j, actor.scale, cfg.keypoint_min_conf)
            if lift < KICK_MIN_LIFT:
                continue
            reach = F.min_distance(kp[j, :2], target.anchors.body) / scale
            before = F.min_distance(prev.kp[j, :2], target.anchors.body) / scale
            if reach <= cfg.kick_reach and before > reach:
                conf = _confidence(speed / cfg.kick_ankle_speed, 2.0 - reach / cfg.kick_reach)
                if best is None or conf > best[0]:
                    best = (conf, speed, reach, lift)
        if best is None:
            return None
        conf, speed, reach, lift = best
        return Observation(Pattern.KICK, t, prev.t, (actor.track_id, target.track_id), conf, {
            "attacker_track": actor.track_id,
            "ankle_speed_torso_per_s": _r(speed),
            "ankle_to_target_torso": _r(reach),
            "foot_lift_torso": _r(lift),
        })

    def _push(self, actor: _Person, target: _Person, scale: float, t: float) -> Observation | None:
        """Hands on the other's torso, then the other is *accelerated* away from the actor.

        Acceleration, not speed: two passers-by separate quickly too, but nobody's motion
        changes when they do.
        """
        cfg = self.cfg
        samples = self._tracks[target.track_id].samples
        if actor.prev is None or target.prev is None or len(samples) < 3 or actor.prev.t != target.prev.t:
            return None   # contact is judged on one frame where both were seen
        before = samples[-3]
        if not (0.0 < target.prev.t - before.t <= MAX_STEP_S):
            return None
        mc = cfg.keypoint_min_conf
        torso_pts = np.array([target.prev.kp[i, :2] for i in (F.L_SHO, F.R_SHO, F.L_HIP, F.R_HIP)
                              if target.prev.kp[i, 2] >= mc], np.float32).reshape(-1, 2)
        contact = min((F.min_distance(actor.prev.kp[j, :2], torso_pts) / scale
                       for j in F.WRISTS if actor.prev.kp[j, 2] >= mc), default=math.inf)
        if contact > cfg.push_reach:
            return None
        b_before, b0 = F.common_reference(before.kp, before.box, target.prev.kp, target.prev.box, mc)
        b0_, b1 = F.common_reference(target.prev.kp, target.prev.box, target.sample.kp, target.sample.box, mc)
        a0 = F.reference_point(actor.prev.kp, actor.prev.box, mc)
        away = b0 - a0
        norm = float(np.hypot(*away))
        if norm < 1e-6:
            return None
        away /= norm
        v_before = float(np.dot(b0 - b_before, away)) / (target.prev.t - before.t) / scale
        v_after = float(np.dot(b1 - b0_, away)) / (t - target.prev.t) / scale
        gain = v_after - v_before
        if gain < cfg.push_speed:
            return None
        conf = _confidence(gain / cfg.push_speed, 2.0 - contact / cfg.push_reach)
        return Observation(Pattern.PUSH, t, actor.prev.t, (actor.track_id, target.track_id), conf, {
            "attacker_track": actor.track_id,
            "hand_to_torso_before_torso": _r(contact),
            "target_speed_away_before_torso_per_s": _r(v_before),
            "target_speed_away_after_torso_per_s": _r(v_after),
        })

    def _strangle(self, actor: _Person, target: _Person, scale: float, t: float) -> Observation | None:
        cfg = self.cfg
        hist = self._tracks[actor.track_id]
        neck = target.anchors.neck
        kp = actor.sample.kp
        grip = None
        if neck is not None and all(kp[j, 2] >= cfg.keypoint_min_conf for j in F.WRISTS):
            grip = max(float(np.hypot(*(kp[j, :2] - neck))) / scale for j in F.WRISTS)
        if grip is None or grip > cfg.strangle_reach:
            hist.neck_grip.pop(target.track_id, None)
            return None
        since = hist.neck_grip.setdefault(target.track_id, t)
        held = t - since
        if held < cfg.strangle_min_s:
            return None
        conf = _confidence(held / cfg.strangle_min_s, 2.0 - grip / cfg.strangle_reach)
        return Observation(Pattern.STRANGLE, t, since, (actor.track_id, target.track_id), conf, {
            "attacker_track": actor.track_id,
            "hands_to_neck_torso": _r(grip),
            "held_s": _r(held),
        })

    def _fight(self, a: _Person, b: _Person, dist: float, t: float) -> Observation | None:
        """Two persons within reach of each other whose limbs moved violently in much of a window.

        The window's evidence is both persons' own limb-speed history, not only the frames in
        which both were detected: in a brawl the pose model loses one of them often.
        """
        cfg = self.cfg
        if dist > cfg.fight_distance:
            return None
        t0 = t - cfg.fight_window_s - 1e-6
        speeds = [s.limb_speed for p in (a, b) for s in self._tracks[p.track_id].samples
                  if s.t >= t0 and s.limb_speed is not None]
        if len(speeds) < 3:
            return None
        violent = sum(1 for v in speeds if v >= cfg.fight_limb_speed)
        fraction = violent / len(speeds)
        if violent < FIGHT_MIN_VIOLENT_STEPS or fraction < cfg.fight_min_fraction:
            return None
        median_speed = float(np.median(speeds))
        conf = _confidence(fraction / cfg.fight_min_fraction, median_speed / cfg.fight_limb_speed)
        first = min(s.t for p in (a, b) for s in self._tracks[p.track_id].samples if s.t >= t0)
        key = (min(a.track_id, b.track_id), max(a.track_id, b.track_id))
        return Observation(Pattern.FIGHT, t, first, key, conf, {
            "violent_steps_fraction": _r(fraction),
            "median_limb_speed_torso_per_s": _r(median_speed),
            "hip_distance_torso": _r(dist),
            "window_s": _r(t - first),
        })

    def _stage2(self, persons: list[_Person], evidence: tuple, t: float) -> list[Observation]:
        """The stage-2 classifier per candidate region; a fight observation per region whose
        P(fight) reached the threshold in ``consecutive_windows`` windows in a row with
        two-person evidence and its persons moving in themselves (relative motion)."""
        self._two_person_regions = {}
        # Each measured person's relative motion this frame (the highest over the regions holding it).
        self._relative_motion = {}
        for ev in evidence:
            for tid, v in zip(ev.key, ev.person_relative_motion, strict=False):
                self._relative_motion[tid] = max(v, self._relative_motion.get(tid, 0.0))
        model = self.fight_model
        samples = {p.track_id: (p.prev, p.sample) for p in persons}
        self.region_scores = self._regions.update(t, evidence, samples) if evidence else []
        if model is None:
            return []
        out = []
        for ev, score in zip(evidence, self.region_scores, strict=True):   # one score per evidence
            if score.two_persons:
                self._two_person_regions[score.region] = score
            # Two bodies moving in themselves, like the rules (the less moving one decides).
            moving = min(ev.person_relative_motion, default=0.0)
            if score.span_s < model.min_window_s - 1e-6 or not score.two_persons or \
                    moving < self.cfg.violent_min_relative_motion:
                self._regions.set_run(score.region, 0)
                continue
            p = model.probability(score.features)
            self.fight_probability = max(self.fight_probability, p)
            threshold = self.fight_threshold
            run = score.run + 1 if p >= threshold else 0
            self._regions.set_run(score.region, run)
            if run < model.consecutive_windows:
                continue
            # 0.5 at the operating threshold, 1 at certainty (the other detectors' convention).
            conf = 0.5 + 0.5 * (p - threshold) / (1.0 - threshold)
            explanation: dict[str, Any] = {
                "stage": 2,
                "region": score.region,
                "fight_probability": _r(p),
                "threshold_probability": threshold,
                "window_s": _r(score.span_s),
                "consecutive_windows": run,
                "two_person_fraction": _r(score.two_person_fraction),
                "relative_motion_min_box_heights_per_s": _r(moving),
            }
            for name in model.feature_names:
                value = score.features[FEATURE_NAMES.index(name)]
                explanation[name.replace("_log", "").replace("_p50", "").replace("_p75", "")] = \
                    readable_value(name, value)
            explanation["model"] = model.name
            explanation["model_sha256"] = model.sha256[:16]
            out.append(Observation(Pattern.FIGHT, t, score.start_t, score.track_ids, conf, explanation,
                                   region=score.region))
        return out

    def _region_of(self, ids: tuple[int, ...]) -> int | None:
        """The stage-2 region holding all of ``ids`` with two-person evidence this frame (the
        kinematic strike, kick, push and strangle rules need one; they are physical and
        explained, so they do not also need the classifier's probability)."""
        for rid, score in self._two_person_regions.items():
            if set(ids) <= set(score.track_ids):
                return rid
        return None

    def _single_observations(self, persons: list[_Person], t: float) -> list[Observation]:
        out: list[Observation] = []
        for p in persons:
            for detect in (self._fall, self._lying):
                obs = detect(p, t)
                if obs is not None:
                    out.append(obs)
        return out

    def _is_down(self, p: _Person) -> bool:
        return F.is_down(p.sample.kp, p.sample.box, self.cfg.lying_angle_deg)

    def _fall(self, p: _Person, t: float) -> Observation | None:
        """Upright, then within ``fall_window_s`` down with the body ``fall_drop`` torso lengths
        lower (cue ``down``); or one of two shape cues for falls the torso angle misses:

        * ``tip-over`` (down, falling away from the camera): the body lands further up the image,
          so the hips drop only ``TIPOVER_DROP_SHARE`` of ``fall_drop``; but the whole body, legs
          included, is now clearly horizontal (bending over keeps the legs upright).
        * ``collapse`` (not down, falling towards or away from the camera along the line of
          sight): the torso is foreshortened, not tilted. The hips drop further than any squat
          takes them (``collapse_drop``) faster than anyone sits down (``collapse_window_s``).
          Walking towards the camera also moves the hips down the image, but keeps the body's
          upright shape.

        Both shape cues need the body to have lost COLLAPSE_ASPECT of its height-to-width ratio,
        and neither judges a body at the image border: someone walking out at the bottom towards
        the camera loses height exactly like a collapse (scfd nofi011), and pose models place
        confident ankles even below the border, so a fall there is left to the ``down`` cue.
        """
        cfg = self.cfg
        down = self._is_down(p)
        at_edge = _at_frame_edge(p.sample.box, self._frame_size)
        if not down and at_edge:
            return None
        # Only a falling person needs the shape: walkers (the hot path) never get that far.
        aspect = F.body_aspect(p.sample.kp, p.sample.box) if down else None
        if down:
            assert aspect is not None
            window_s, full_drop = cfg.fall_window_s, cfg.fall_drop
            shape_cue = "tip-over" if aspect <= TIPOVER_MAX_ASPECT and not at_edge else None
            shape_drop = TIPOVER_DROP_SHARE * cfg.fall_drop
        else:
            window_s, full_drop = cfg.collapse_window_s, math.inf
            shape_cue, shape_drop = "collapse", cfg.collapse_drop
        pc = F.POSTURE_MIN_CONF
        best: tuple[float, float, float, float | None] | None = None
        for s in self._tracks[p.track_id].samples:
            if s.t < t - window_s or s.t >= t:
                continue
            # Hips (else shoulders, else box centre), the same point before and after. The drop
            # comes first: it rules out nearly every sample of someone walking.
            r0, r1 = F.common_reference(s.kp, s.box, p.sample.kp, p.sample.box, pc)
            drop = float(r1[1] - r0[1]) / max(F.torso_length(s.kp, pc) or p.scale, p.scale)
            if drop < full_drop and (shape_cue is None or drop < shape_drop):
                continue
            angle0 = F.torso_angle_deg(s.kp, pc)
            if angle0 is None or angle0 >= cfg.lying_angle_deg:
                continue   # a fall starts from an upright posture
            if drop >= full_drop:
                best = (drop, s.t, angle0, None)   # the last upright sample: where the fall began
                continue
            aspect0 = F.body_aspect(s.kp, s.box)
            if aspect is None:
                aspect = F.body_aspect(p.sample.kp, p.sample.box)
            if aspect <= COLLAPSE_ASPECT * aspect0:
                best = (drop, s.t, angle0, aspect0)
        if best is None:
            return None
        drop, t0, angle0, aspect_before = best
        if aspect_before is None:
            conf = _confidence(drop / cfg.fall_drop, (p.angle or cfg.lying_angle_deg) / cfg.lying_angle_deg)
            cue: dict[str, Any] = {"cue": "down"}
        else:
            assert aspect is not None
            conf = _confidence(drop / shape_drop, COLLAPSE_ASPECT * aspect_before / max(aspect, 1e-6))
            cue = {"cue": shape_cue, "height_to_width_ratio_before": _r(aspect_before),
                   "height_to_width_ratio_after": _r(aspect)}
        return Observation(Pattern.FALL, t, t0, (p.track_id,), conf, {
            "body_drop_torso": _r(drop),
            "drop_time_s": _r(t - t0),
            "torso_angle_before_deg": _r(angle0),
            "torso_angle_after_deg": _r(p.angle) if p.angle is not None else None,
            **cue,
        })

    def _lying(self, p: _Person, t: float) -> Observation | None:
        cfg = self.cfg
        hist = self._tracks[p.track_id]
        if not self._is_down(p):
            # One upright frame does not end a spell (pose flickers); half a second does.
            if hist.last_down_t is not None and t - hist.last_down_t > 0.5:
                hist.down_since = None
            return None
        if hist.down_since is None:
            hist.down_since = t
        hist.last_down_t = t
        down = t - hist.down_since
        if down < cfg.lying_min_s:
            return None
        conf = _confidence(down / cfg.lying_min_s)
        return Observation(Pattern.LYING, t, hist.down_since, (p.track_id,), conf, {
            "down_s": _r(down),
            "torso_angle_deg": _r(p.angle) if p.angle is not None else None,
        })

    # ------------------------------------------------------------------ episodes

    def _episode_events(self, observations: list[Observation], t: float) -> list[Event]:
        cfg = self.cfg
        for key in list(self._episodes):
            if t - self._episodes[key].last_t > cfg.episode_gap_s:
                del self._episodes[key]
        best: dict[tuple, Observation] = {}
        tracks: dict[tuple, list[int]] = {}
        for obs in observations:
            if obs.confidence < cfg.min_confidence:
                continue
            key = obs.episode_key
            tracks.setdefault(key, [])
            tracks[key] += [i for i in obs.track_ids if i not in tracks[key]]
            if key not in best or obs.confidence > best[key].confidence:
                best[key] = obs
        events: list[Event] = []
        for key in sorted(best, key=repr):   # a fixed order, so output is deterministic
            obs = best[key]
            ep = self._episodes.get(key)
            if ep is None:
                ep = self._episodes[key] = _Episode(obs.start_t, t, t, list(obs.track_ids))
                report_start = obs.start_t
            else:
                ep.last_t = t
                ep.track_ids += [i for i in tracks[key] if i not in ep.track_ids]
                if t - ep.reported_t < cfg.repeat_s:
                    continue
                report_start = ep.reported_t
                ep.reported_t = t
            ids = [*obs.track_ids, *[i for i in ep.track_ids if i not in obs.track_ids]]
            events.append(Event(obs.pattern, float(report_start), t, tuple(ids), round(obs.confidence, 3),
                                dict(obs.explanation)))
        return events
