"""Two-stage fight evidence: a cheap gate on every analysed frame, pixel evidence only while a
candidate is open.

Stage 1 (:class:`CandidateGate`, skeletons only, every analysed frame): a *candidate* is two
tracked persons within reach of each other (hips within ``CANDIDATE_REACH`` torso lengths or
boxes touching), or one box wide enough to hold two upright bodies, with elevated limb motion
(some wrist or ankle faster than ``CANDIDATE_LIMB_SPEED`` torso lengths/s relative to the hips
in the last second). One person walking, standing or lying alone is never a candidate, so
ordinary scenes cost nothing more.

Stage 2 (:class:`Stage2`, pixels, only for open candidates, at most ``max_regions`` a frame):

* **motion energy**: the share of pixels inside each candidate person's box and inside the pair's
  union box that changed since the previous analysed frame by more than the scene's own noise,
  minus the share that changed in the background (outside every person's box). A share of the
  box area, so it does not depend on how large the persons appear; relative to the background,
  so camera noise and a lighting change do not count.
* **zoomed re-pose**: the union box plus margin is cut from the ring frame (full ring
  resolution) and given to the pose model alone, so a small or tangled pair gets 2-4x the
  pixels of the whole-frame pass.
* **relative motion**: optical flow inside the union box and each person's box minus the box's
  own translation (:func:`relative_motion`): walking moves a body as one piece, a blow or a
  push moves limbs, head and torso against each other.

Privacy: everything here runs inside the pixel process on frames already in the RAM ring. What
leaves it is :class:`RegionEvidence`: a few numbers per region and person and the zoomed
skeletons (keypoints in frame pixels, like the whole-frame pass). No image, difference image or
crop is kept, logged or sent (docs/behaviour.md, "Privacy of stage 2").
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from appliance.box.behaviour import features as F
from appliance.contracts.types import Detections, HandScan, TrackedFrame

#: Two persons interact when their hips are within this many torso lengths (mean of the two).
CANDIDATE_REACH = 2.5
#: Elevated limb motion: a wrist or lifted ankle relative to the hips, torso lengths / s. Low on
#: purpose (recall first): a person standing still stays below ~1, walking arms swing at 1-3.
CANDIDATE_LIMB_SPEED = 2.0
#: Seconds over which a person's fastest limb step counts as recent motion.
CANDIDATE_ACTIVITY_S = 1.0
#: One box wider than this share of its height may hold two upright bodies (one person ~0.4).
WIDE_BOX_ASPECT = 0.8
#: Keypoints below this confidence are not used by the gate.
MIN_CONF = 0.3
#: Two samples further apart than this are not differentiated.
MAX_STEP_S = 0.35
#: Crop margin around the union box, as a share of its larger side.
CROP_MARGIN = 0.25
#: Overlapping regions share one re-pose when their joint crop's larger side is at most this many
#: times each member's own (no region's zoom drops by more than this factor). On the dev
#: footage's frames with two regions, 94 % of the crops overlap and 73 % of those share.
SHARED_CROP_GROWTH = 1.5
#: A zoomed detection counts as a person at this score (the whole-frame pass starts tracks at 0.5).
ZOOM_MIN_SCORE = 0.3
#: Motion is measured on the frame downscaled by this factor (cost; boxes keep their share).
MOTION_DOWNSCALE = 2
#: A pixel has changed when its grey level differs by more than max(this, 3x the median
#: background difference): sensor noise of a still camera is a few grey levels.
MOTION_MIN_DIFF = 12
#: Relative motion (optical flow minus each box's own translation) is measured on the union box
#: resampled to this height in pixels — the same flow resolution for a pair near or far from the
#: camera — at most this many times enlarged, and at most this many box heights wide (cost).
FLOW_BOX_HEIGHT = 96
FLOW_MAX_UPSCALE = 4.0
FLOW_MAX_ASPECT = 4.0
#: Context around the union box given to the flow (a share of its larger side).
FLOW_MARGIN = 0.15


@dataclass(frozen=True, eq=False)
class Candidate:
    """Stage 1's output: persons who may be fighting.

    key: the track ids concerned (sorted; one id for a wide box); box: ``float32[4]`` their
    union box in frame pixels; reason: ``"pair"`` or ``"wide-box"``.
    """

    key: tuple[int, ...]
    box: np.ndarray
    reason: str


@dataclass(frozen=True, eq=False)
class RegionEvidence:
    """Stage 2's output for one candidate in one frame: numbers and skeletons, never pixels.

    union_motion_energy: share of the union box's pixels that changed beyond the scene noise,
    minus the background's share (0..1). person_motion_energy: the same per person, in ``key``
    order. background_motion: share of pixels outside all persons that changed (0..1).
    crop: ``float32[4]`` the re-posed region in frame pixels; zoom: pose-input pixels per frame
    pixel in the crop; zoomed: the persons found in the crop (frame pixels, score >=
    ``ZOOM_MIN_SCORE``), or None when the re-pose was not run. union_relative_motion,
    person_relative_motion: see :func:`relative_motion`.
    """

    key: tuple[int, ...]
    reason: str
    union_box: np.ndarray
    union_motion_energy: float
    person_motion_energy: tuple[float, ...]
    background_motion: float
    crop: np.ndarray
    zoom: float
    zoomed: Detections | None
    #: Optical flow inside the union box and each person's box (``key`` order) minus the box's
    #: own translation, box heights per second (:func:`relative_motion`); 0 without a previous frame.
    union_relative_motion: float = 0.0
    person_relative_motion: tuple[float, ...] = ()

    @property
    def zoomed_persons(self) -> int:
        return 0 if self.zoomed is None else len(self.zoomed.scores)


@dataclass(frozen=True)
class AnalysedFrame:
    """What the pixel process hands the behaviour stage for one analysed frame."""

    tracked: TrackedFrame
    evidence: tuple[RegionEvidence, ...] = ()
    scan: HandScan | None = None    # the object stage's result (weapon pattern), when it ran


def _union(boxes: list[np.ndarray]) -> np.ndarray:
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.array([arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max()], np.float32)


def _boxes_touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3])


@dataclass
class _GateTrack:
    t: float
    kp: np.ndarray
    box: np.ndarray
    torso: deque = field(default_factory=lambda: deque(maxlen=15))
    steps: deque = field(default_factory=deque)   # (t, fastest limb speed)


class CandidateGate:
    """Stage 1. Feed every analysed frame; returns the open candidates (often none).

    Bounded state: one entry per track seen in the last ``CANDIDATE_ACTIVITY_S`` seconds.
    """

    def __init__(self) -> None:
        self._tracks: dict[int, _GateTrack] = {}

    def update(self, frame: TrackedFrame) -> tuple[Candidate, ...]:
        t = float(frame.t)
        active: dict[int, bool] = {}
        scale: dict[int, float] = {}
        for p in frame.persons:
            tr = self._tracks.get(p.track_id)
            kp = np.asarray(p.keypoints, np.float32)
            box = np.asarray(p.box, np.float32)
            if tr is None:
                tr = self._tracks[p.track_id] = _GateTrack(t, kp, box)
            torso = F.torso_length(kp, MIN_CONF)
            if torso is not None and torso > 1.0:
                tr.torso.append(torso)
            s = float(np.median(tr.torso)) if tr.torso else F.fallback_scale(box)
            if 0.0 < t - tr.t <= MAX_STEP_S:
                speeds = F.relative_speeds(tr.kp, tr.box, kp, box, t - tr.t, s, F.WRISTS + F.ANKLES, MIN_CONF)
                tr.steps.append((t, max(speeds.values(), default=0.0)))
            tr.t, tr.kp, tr.box = t, kp, box
            while tr.steps and tr.steps[0][0] < t - CANDIDATE_ACTIVITY_S:
                tr.steps.popleft()
            active[p.track_id] = any(v >= CANDIDATE_LIMB_SPEED for _, v in tr.steps)
            scale[p.track_id] = s
        for tid in [i for i, tr in self._tracks.items() if t - tr.t > CANDIDATE_ACTIVITY_S]:
            del self._tracks[tid]
        out: list[Candidate] = []
        persons = list(frame.persons)
        for i, a in enumerate(persons):
            for b in persons[i + 1:]:
                if not (active[a.track_id] or active[b.track_id]):
                    continue
                s = 0.5 * (scale[a.track_id] + scale[b.track_id])
                ra = F.reference_point(a.keypoints, a.box, MIN_CONF)
                rb = F.reference_point(b.keypoints, b.box, MIN_CONF)
                if float(np.hypot(*(ra - rb))) / s <= CANDIDATE_REACH or _boxes_touch(a.box, b.box):
                    key = tuple(sorted((a.track_id, b.track_id)))
                    out.append(Candidate(key, _union([a.box, b.box]), "pair"))
            w, h = float(a.box[2] - a.box[0]), float(a.box[3] - a.box[1])
            # A box cut by the image border is wide because half the body is outside.
            if active[a.track_id] and h > 0 and w / h >= WIDE_BOX_ASPECT and \
                    not _at_border(a.box, frame.frame_size) and not F.is_down(a.keypoints, a.box, 60.0):
                out.append(Candidate((a.track_id,), np.asarray(a.box, np.float32).copy(), "wide-box"))
        return tuple(out)


def _at_border(box: np.ndarray, frame_size: tuple[int, int], margin: float = 0.02) -> bool:
    w, h = frame_size
    return bool(box[0] <= margin * w or box[1] <= margin * h or box[2] >= (1 - margin) * w
                or box[3] >= (1 - margin) * h)


def crop_box(box: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """The union box plus ``CROP_MARGIN`` of its larger side, clipped to the frame (int pixels)."""
    w, h = frame_size
    m = CROP_MARGIN * _side(box)
    x1, y1 = max(0.0, float(box[0]) - m), max(0.0, float(box[1]) - m)
    x2, y2 = min(float(w), float(box[2]) + m), min(float(h), float(box[3]) + m)
    return np.array([math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)], np.float32)


class MotionField:
    """Changed pixels between two frames, for box shares in O(1) each (an integral image).

    Built only while a candidate is open; holds a downscaled boolean image in RAM, dropped after
    the frame's evidence is computed.
    """

    def __init__(self, prev: np.ndarray, cur: np.ndarray, person_boxes: list[np.ndarray]):
        f = MOTION_DOWNSCALE
        size = (max(1, cur.shape[1] // f), max(1, cur.shape[0] // f))
        g0 = cv2.cvtColor(cv2.resize(prev, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        g1 = cv2.cvtColor(cv2.resize(cur, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        diff = cv2.absdiff(g0, g1)
        people = np.zeros(diff.shape, np.uint8)
        for b in person_boxes:
            x1, y1, x2, y2 = (round(float(v) / f) for v in b)
            people[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = 1
        outside = diff[people == 0]
        noise = float(np.median(outside[::7])) if outside.size else 0.0
        changed = (diff > max(MOTION_MIN_DIFF, 3.0 * noise)).astype(np.uint8)
        self._integral = cv2.integral(changed)
        n_out = int(outside.size)
        changed_out = int(changed.sum()) - int(changed[people == 1].sum())
        self.background = changed_out / n_out if n_out else 0.0
        self._shape = diff.shape

    def share(self, box: np.ndarray) -> float:
        """Share of the box's pixels that changed (0..1)."""
        f = MOTION_DOWNSCALE
        h, w = self._shape
        x1, y1 = min(max(round(float(box[0]) / f), 0), w), min(max(round(float(box[1]) / f), 0), h)
        x2, y2 = min(max(round(float(box[2]) / f), 0), w), min(max(round(float(box[3]) / f), 0), h)
        area = (x2 - x1) * (y2 - y1)
        if area <= 0:
            return 0.0
        ii = self._integral
        return float(ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]) / area

    def energy(self, box: np.ndarray) -> float:
        """Motion energy: the box's changed share above the background's (0..1)."""
        return max(0.0, self.share(box) - self.background)


def relative_motion(prev: np.ndarray, cur: np.ndarray, union_box: np.ndarray, person_boxes: list[np.ndarray],
                    dt_s: float) -> tuple[float, tuple[float, ...]]:
    """Motion inside the union box and inside each person's box *relative to the box's own
    translation*, box heights per second.

    Dense optical flow (Farnebäck) between the two frames over the union box plus
    ``FLOW_MARGIN``, resampled so the box is ``FLOW_BOX_HEIGHT`` pixels high; inside a box the
    median flow vector (the whole body moving: walking, a camera pan) is subtracted and the mean
    length of what remains is divided by the box height and ``dt_s``. A person walking or
    standing moves as one piece (legs and arm swing aside); a person hitting, grabbing or being
    hit moves limbs, head and torso against each other. Scale-free (box heights), and a still
    scene's noise stays near 0. Pixels stay here: the flow field is a local array.
    """
    none = (0.0, tuple(0.0 for _ in person_boxes))
    ub = np.asarray(union_box, np.float32)
    bw, bh = max(float(ub[2] - ub[0]), 8.0), max(float(ub[3] - ub[1]), 8.0)
    if dt_s <= 0 or prev.shape != cur.shape:
        return none
    f = min(FLOW_MAX_UPSCALE, FLOW_BOX_HEIGHT / bh, FLOW_MAX_ASPECT * FLOW_BOX_HEIGHT / bw)
    h, w = cur.shape[:2]
    m = FLOW_MARGIN * max(bw, bh)
    ox, oy = max(0, int(ub[0] - m)), max(0, int(ub[1] - m))
    ex, ey = min(w, math.ceil(ub[2] + m)), min(h, math.ceil(ub[3] + m))
    if ex - ox < 8 or ey - oy < 8:
        return none
    size = (max(8, round((ex - ox) * f)), max(8, round((ey - oy) * f)))
    interp = cv2.INTER_AREA if f < 1.0 else cv2.INTER_LINEAR
    g0 = cv2.resize(cv2.cvtColor(prev[oy:ey, ox:ex], cv2.COLOR_BGR2GRAY), size, interpolation=interp)
    g1 = cv2.resize(cv2.cvtColor(cur[oy:ey, ox:ex], cv2.COLOR_BGR2GRAY), size, interpolation=interp)
    flow = cv2.calcOpticalFlowFarneback(g0, g1, np.zeros((size[1], size[0], 2), np.float32), 0.5, 3, 9, 3, 5, 1.1, 0)

    def residual(box: np.ndarray) -> float:
        x1, x2 = max(0, round((float(box[0]) - ox) * f)), min(size[0], round((float(box[2]) - ox) * f))
        y1, y2 = max(0, round((float(box[1]) - oy) * f)), min(size[1], round((float(box[3]) - oy) * f))
        if x2 - x1 < 4 or y2 - y1 < 4:
            return 0.0
        v = flow[y1:y2, x1:x2].reshape(-1, 2)
        r = np.hypot(*(v - np.median(v, axis=0)).T)
        return float(r.mean()) / (max(float(box[3] - box[1]), 8.0) * f) / dt_s

    return residual(ub), tuple(residual(np.asarray(b, np.float32)) for b in person_boxes)


class Stage2:
    """Stage 2 for the open candidates of one frame: motion energy and the zoomed re-pose.

    ``estimator``: the runtime's :class:`~appliance.box.pose.PoseEstimator` (or None: no re-pose).
    Cost is bounded by ``max_regions`` (pose runs per frame at most that many times more), and
    overlapping regions share one re-pose (:meth:`_repose`).
    """

    def __init__(self, estimator=None, *, max_regions: int = 2, zoom: bool = True):
        self.estimator = estimator
        self.max_regions = max_regions
        self.zoom = zoom and estimator is not None
        self.regions_measured = 0     # counters for bench and tests
        self.repose_runs = 0

    def measure(self, image: np.ndarray, prev_image: np.ndarray | None, candidates: tuple[Candidate, ...],
                tracked: TrackedFrame, dt_s: float | None = None) -> tuple[RegionEvidence, ...]:
        """``prev_image``: the previous analysed frame from the ring, ``dt_s`` seconds earlier
        (relative motion needs both; without them it is 0)."""
        if not candidates:
            return ()
        h, w = image.shape[:2]
        boxes = {p.track_id: np.asarray(p.box, np.float32) for p in tracked.persons}
        motion = None
        if prev_image is not None and prev_image.shape == image.shape:
            motion = MotionField(prev_image, image, list(boxes.values()))
        scored = []
        for c in candidates:
            union_e = motion.energy(c.box) if motion else 0.0
            person_e = tuple(motion.energy(boxes[k]) if motion and k in boxes else 0.0 for k in c.key)
            scored.append((union_e, c, person_e))
        scored.sort(key=lambda s: -s[0])   # the most moving regions first
        chosen = scored[: self.max_regions]
        crops = [crop_box(c.box, (w, h)) for _, c, _ in chosen]
        zoomed_per_region = self._repose(image, crops, tracked) if self.zoom else [(0.0, None)] * len(crops)
        out = []
        for (union_e, c, person_e), crop, (zoom, zoomed) in zip(chosen, crops, zoomed_per_region):
            union_rel, person_rel = 0.0, tuple(0.0 for _ in c.key)
            if motion is not None and prev_image is not None and dt_s:
                union_rel, person_rel = relative_motion(prev_image, image, c.box,
                                                        [boxes.get(k, c.box) for k in c.key], dt_s)
            self.regions_measured += 1
            out.append(RegionEvidence(c.key, c.reason, c.box, union_e, person_e,
                                      motion.background if motion else 0.0, crop, zoom, zoomed,
                                      union_rel, person_rel))
        return tuple(out)

    def _repose(self, image: np.ndarray, crops: list[np.ndarray], tracked: TrackedFrame
                ) -> list[tuple[float, Detections | None]]:
        """The zoomed re-pose of each region's crop, as (zoom, persons found in the crop).

        Regions whose crops overlap share one pose run on their joint crop when it is at most
        ``SHARED_CROP_GROWTH`` times larger than each (crowded fights open overlapping pairs: A-B
        and B-C), so a frame usually pays one re-pose, not one per region; each region keeps the
        persons lying mostly inside its own crop.
        """
        result: list[tuple[float, Detections | None]] = [(0.0, None)] * len(crops)
        for members, joint in _share_crops(crops):
            x1, y1, x2, y2 = (int(v) for v in joint)
            if x2 - x1 < 16 or y2 - y1 < 16:
                continue
            dets = self.estimator(np.ascontiguousarray(image[y1:y2, x1:x2]))
            self.repose_runs += 1
            zoom = self.estimator.input_width / max(x2 - x1, y2 - y1)
            keep = dets.scores >= ZOOM_MIN_SCORE
            kp = dets.keypoints[keep].copy()
            kp[:, :, 0] += x1
            kp[:, :, 1] += y1
            bx = dets.boxes[keep] + np.array([x1, y1, x1, y1], np.float32)
            scores = dets.scores[keep]
            for i in members:
                inside = _mostly_inside(bx, crops[i]) if len(members) > 1 else np.ones(len(bx), bool)
                result[i] = (zoom, Detections(tracked.frame_index, tracked.t, bx[inside], scores[inside], kp[inside]))
        return result


def _share_crops(crops: list[np.ndarray]) -> list[tuple[list[int], np.ndarray]]:
    """Group regions whose crops overlap and whose joint crop's larger side stays within
    ``SHARED_CROP_GROWTH`` of every member's: (member indices, joint crop)."""
    groups: list[tuple[list[int], np.ndarray]] = []
    for i, crop in enumerate(crops):
        for members, joint in groups:
            merged = _union([joint, crop])
            smallest = min(_side(crops[j]) for j in [*members, i])
            if _boxes_touch(joint, crop) and _side(merged) <= SHARED_CROP_GROWTH * smallest:
                members.append(i)
                joint[:] = merged
                break
        else:
            groups.append(([i], crop.copy()))
    return groups


def _side(box: np.ndarray) -> float:
    return max(float(box[2] - box[0]), float(box[3] - box[1]))


def _mostly_inside(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Which boxes lie at least half inside the crop (by area)."""
    ix = np.clip(np.minimum(boxes[:, 2], crop[2]) - np.maximum(boxes[:, 0], crop[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], crop[3]) - np.maximum(boxes[:, 1], crop[1]), 0, None)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 1e-6, None) * np.clip(boxes[:, 3] - boxes[:, 1], 1e-6, None)
    return (ix * iy) / area >= 0.5
