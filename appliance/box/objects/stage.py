"""The object stage: (masked frame, TrackedFrame, focus tracks) → HandScan (objects near wrists).

Where the detector runs, and why there only: a whole-frame YOLOX pass at 416 px sees a knife in
a 960 px frame as a few pixels, and costs ~22 ms (2 threads) on top of ~20 ms of pose. So the
stage crops around *persons with a visible wrist* (the person's box grown by ``crop_margin`` of
its longer side, squared), which magnifies the hands, and spends at most ``max_crops`` detector
runs per analysed frame:

1. *focus* tracks first, every frame: a person with an open weapon candidate (an object near a
   wrist in the previous scan) or in an open violent episode (the behaviour stage's
   :meth:`~appliance.behaviour.BehaviourAnalyzer.focus_tracks`), so "several consecutive frames"
   means consecutive analysed frames;
2. then the others whose last scan is at least ``rescan_s`` old, oldest first.

A found object counts for the person whose crop it came from only when its box lies within
``wrist_distance`` torso lengths of one of that person's confident wrists; the nearer wrist is
the hand. Only labels, scores and boxes leave this stage (a :class:`~appliance.types.HandScan`).
"""

from __future__ import annotations

import numpy as np

from appliance.box.objects.detector import ObjectDetector
from appliance.contracts.types import KP, HandScan, HeldObject, TrackedFrame, TrackedPerson

WRISTS = (("left", KP["left_wrist"]), ("right", KP["right_wrist"]))
#: A wrist keypoint below this confidence is not used (the behaviour stage's keypoint_min_conf).
WRIST_MIN_CONF = 0.3
#: Crops smaller than this (pixels) are not worth a detector run: nothing in them is recognisable.
MIN_CROP_PX = 24


def torso_length(kp: np.ndarray, box: np.ndarray) -> float:
    """Mid-shoulder to mid-hip in pixels; a third of the box height when those are not seen."""
    sho, hip = kp[[KP["left_shoulder"], KP["right_shoulder"]]], kp[[KP["left_hip"], KP["right_hip"]]]
    if (sho[:, 2] >= WRIST_MIN_CONF).all() and (hip[:, 2] >= WRIST_MIN_CONF).all():
        length = float(np.hypot(*(sho[:, :2].mean(0) - hip[:, :2].mean(0))))
        if length > 1.0:
            return length
    return max(1.0, float(box[3] - box[1]) / 3.0)


def box_point_distance(box: np.ndarray, point: np.ndarray) -> float:
    """Distance from a point to an axis-aligned box (0 inside)."""
    dx = max(float(box[0]) - point[0], 0.0, point[0] - float(box[2]))
    dy = max(float(box[1]) - point[1], 0.0, point[1] - float(box[3]))
    return float(np.hypot(dx, dy))


class ObjectStage:
    """>>> stage = ObjectStage(cfg.objects)
    >>> scan = stage.update(frame.image, tracked, focus={7})
    """

    def __init__(self, cfg, *, models_dir: str | None = None, detector: ObjectDetector | None = None):
        self.cfg = cfg
        self.detector = detector or ObjectDetector(cfg.model, models_dir=models_dir, threads=cfg.threads)
        self._last_scan: dict[int, float] = {}

    def update(self, image: np.ndarray, tracked: TrackedFrame, focus: set[int] | frozenset[int] = frozenset()) -> HandScan:
        t = tracked.t
        people = {p.track_id: p for p in tracked.persons if self._has_wrist(p)}
        for tid in [tid for tid, last in self._last_scan.items() if t - last > 60.0]:
            del self._last_scan[tid]          # bounded: forget tracks gone for a minute
        urgent = [tid for tid in people if tid in focus]
        routine = sorted((tid for tid in people if tid not in urgent
                          and t - self._last_scan.get(tid, -np.inf) >= self.cfg.rescan_s - 1e-6),
                         key=lambda tid: self._last_scan.get(tid, -np.inf))
        scanned, found = [], []
        for tid in (urgent + routine)[: self.cfg.max_crops]:
            held = self._scan(image, people[tid])
            if held is None:
                continue
            scanned.append(tid)
            self._last_scan[tid] = t
            found += held
        return HandScan(tracked.frame_index, t, tuple(scanned), tuple(found))

    @staticmethod
    def _has_wrist(p: TrackedPerson) -> bool:
        return any(p.keypoints[j, 2] >= WRIST_MIN_CONF for _, j in WRISTS)

    def crop_box(self, person: TrackedPerson, width: int, height: int) -> tuple[int, int, int, int]:
        """The square crop around a person, clipped to the image: (x1, y1, x2, y2) pixels."""
        x1, y1, x2, y2 = (float(v) for v in person.box)
        side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * self.cfg.crop_margin)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        return (max(0, int(cx - side / 2)), max(0, int(cy - side / 2)),
                min(width, int(np.ceil(cx + side / 2))), min(height, int(np.ceil(cy + side / 2))))

    def _scan(self, image: np.ndarray, person: TrackedPerson) -> list[HeldObject] | None:
        """Objects near this person's wrists; None when the crop is too small to scan."""
        h, w = image.shape[:2]
        cx1, cy1, cx2, cy2 = self.crop_box(person, w, h)
        if cx2 - cx1 < MIN_CROP_PX or cy2 - cy1 < MIN_CROP_PX:
            return None
        found = self.detector(image[cy1:cy2, cx1:cx2], classes=self.cfg.classes, min_score=self.cfg.min_score)
        torso = torso_length(person.keypoints, person.box)
        out = []
        for box, score, label in zip(found.boxes, found.scores, found.labels()):
            frame_box = box + np.array([cx1, cy1, cx1, cy1], np.float32)
            best = None
            for hand, j in WRISTS:
                if person.keypoints[j, 2] < WRIST_MIN_CONF:
                    continue
                d = box_point_distance(frame_box, person.keypoints[j, :2]) / torso
                if best is None or d < best[1]:
                    best = (hand, d)
            if best is not None and best[1] <= self.cfg.wrist_distance:
                out.append(HeldObject(person.track_id, label, float(score), best[0], round(best[1], 3), frame_box))
        return out
