"""Bystander pixelation: the clip's ``redacted`` rendition (docs/clip.md, "Bystander pixelation").

Persons who are not in the trigger's event (bystanders) are covered with a coarse block mosaic
in every clip frame, on the box, before sealing; the event's own persons are left untouched and
only their boxes are recorded (``involved_boxes``) so the console can outline them.

Shapes at the boundary:

    SeenPersons     one analysed frame: t (stream s); tracked {track_id: float32[2, 4]} and
                    untracked float32[M, 2, 4]: per person (body box, head box), each
                    x1, y1, x2, y2 in frame pixels (head box from the face keypoints: head_box)
    plan_redaction  clip frame times float[N] + SeenPersons[...] -> RedactionPlan, per clip frame:
                      body[i]  float32[K, 4]  bystanders' boxes, dilated
                      keep[i]  float32[J, 4]  the event's persons' boxes
                      heads[i] float32[L, 4]  bystanders' head boxes, dilated
                    and involved {track_id (str): ((frame_index, x, y, w, h), ...)} int pixels
    pixelate        uint8[H, W, 3] + one frame's plan -> a new uint8[H, W, 3] (input unchanged)

Where a bystander and an involved person overlap (a brawl: people pressed together), a box
cannot say whose pixels are whose. The rule: a bystander's whole (dilated) box is pixelated
except inside an involved person's box — so the event stays visible to the operator — and the
bystander's **head** is pixelated everywhere, inside an involved person's box too: the face is
what identifies. (Pixelating whole boxes without exception hid 91 % of the involved persons on
the bundled fight sample; this rule keeps them visible and every detected bystander's face
covered.)

Analysis runs at ``analysis.fps``, the clip at the ring's rate, so a clip frame usually lies
between two analysed frames: a bystander's body is covered by the union of the boxes before
and after (the path they walked), their head by its interpolated position, and both are
carried ``hold_s`` past the last and before the first time they were seen, so one missed
detection does not unmask them. Detections that no confirmed
track took (a tentative track's first frames, a low-score detection) are covered too, without
an id, ``hold_s`` either way, unless they lie mostly inside an involved person's box (that
person's own duplicate or not-yet-confirmed track).

Not covered: a person the pose model never detected in an analysed frame within ``hold_s``
(too small, heavily occluded, at the frame edge); a bystander undetected for longer than
``hold_s``; the body (not the head) of a bystander inside an involved person's box; a bystander
whose only detection lies mostly inside an involved person's box (taken for that person). An
involved person whose track id changed mid-clip is pixelated under the new id (privacy first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from appliance.box.config import RedactionConfig

#: An untracked detection whose box lies this much (intersection over the smaller box) inside an
#: involved person's box near its time is that person (a duplicate detection, or the first
#: frames of their track before it was confirmed), not a bystander.
INVOLVED_OVERLAP = 0.6
#: Face keypoints (COCO-17: nose, eyes, ears) and the confidence at which one counts.
FACE_KEYPOINTS = slice(0, 5)
KEYPOINT_MIN_SCORE = 0.3
#: A head box is at least this fraction of the body box's width, and grown by at least this margin.
HEAD_MIN_WIDTH = 0.3
HEAD_MIN_MARGIN = 0.3


def describe(settings: RedactionConfig) -> dict[str, object]:
    """The ``redaction`` entry of the redacted rendition's metadata (docs/envelope.md)."""
    return {"method": "mosaic", "block_px": settings.block_px, "blocks_per_height": settings.blocks_per_height,
            "margin": settings.margin, "hold_s": settings.hold_s,
            "covers": "bystanders the pose model detected (tracked, tentative or low-score) within hold_s: "
                      "the whole box outside the event's persons' boxes, the head everywhere; not persons it "
                      "never detected"}


def head_box(box: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """A square around the confident face keypoints (``keypoints`` float32[17, 3]); without
    any, the top quarter of the body ``box`` (a person seen from behind, a poor detection)."""
    face = np.asarray(keypoints, np.float32)[FACE_KEYPOINTS]
    ok = face[face[:, 2] >= KEYPOINT_MIN_SCORE, :2]
    x1, y1, x2, y2 = (float(v) for v in box)
    if len(ok) == 0:
        return np.array([x1, y1, x2, y1 + 0.25 * (y2 - y1)], np.float32)
    cx, cy = ok.mean(axis=0)
    half = max(float(np.ptp(ok[:, 0])), float(np.ptp(ok[:, 1])), HEAD_MIN_WIDTH * (x2 - x1)) * 0.75
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


@dataclass(frozen=True)
class SeenPersons:
    """Who the pose stage saw in one analysed frame: (body box, head box) per person."""

    t: float
    tracked: Mapping[int, np.ndarray]      # track_id -> float32[2, 4]
    untracked: np.ndarray                  # float32[M, 2, 4]: detections no confirmed track took


@dataclass(frozen=True)
class RedactionPlan:
    """What to pixelate in each clip frame, and the involved persons' boxes for the console.

    body, keep, heads: one float32[K, 4] array per clip frame each (see the module docstring).
    involved: {track_id: ((frame_index, x, y, w, h), ...)} integer pixels, not dilated.
    pixelated_tracks: ids of the bystander tracks covered in at least one frame.
    untracked_boxes: how many anonymous (untracked) boxes were covered over the clip.
    """

    body: tuple[np.ndarray, ...]
    keep: tuple[np.ndarray, ...]
    heads: tuple[np.ndarray, ...]
    involved: Mapping[str, tuple[tuple[int, int, int, int, int], ...]]
    pixelated_tracks: tuple[str, ...]
    untracked_boxes: int

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.body[index], self.keep[index], self.heads[index]


class _Timeline:
    """One track's (body, head) boxes over time (times ascending)."""

    def __init__(self, samples: list[tuple[float, np.ndarray]]):
        samples.sort(key=lambda s: s[0])
        self.times = np.array([t for t, _ in samples], np.float64)
        self.boxes = np.stack([b for _, b in samples]).astype(np.float32)    # [N, 2, 4]

    def _neighbours(self, t: float, hold_s: float) -> tuple[int | None, int | None]:
        i = int(np.searchsorted(self.times, t))
        before = i - 1 if i > 0 and t - self.times[i - 1] <= hold_s else None
        after = i if i < len(self.times) and self.times[i] - t <= hold_s else None
        return before, after

    def cover(self, t: float, hold_s: float) -> np.ndarray | None:
        """The union of the body boxes seen just before and just after ``t`` (within
        ``hold_s``): the path walked in between is covered."""
        before, after = self._neighbours(t, hold_s)
        picked = [self.boxes[k, 0] for k in (before, after) if k is not None]
        if not picked:
            return None
        stacked = np.stack(picked)
        return np.concatenate([stacked[:, :2].min(0), stacked[:, 2:].max(0)])

    def outline(self, t: float, hold_s: float, part: int = 0) -> np.ndarray | None:
        """The body (``part`` 0) or head (1) box at ``t``, linearly interpolated between the
        neighbours (within ``hold_s``), else the nearest one's."""
        before, after = self._neighbours(t, hold_s)
        if before is not None and after is not None and self.times[after] > self.times[before]:
            w = (t - self.times[before]) / (self.times[after] - self.times[before])
            return (1 - w) * self.boxes[before, part] + w * self.boxes[after, part]
        k = before if before is not None else after
        return None if k is None else self.boxes[k, part]


def _overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two boxes (x1, y1, x2, y2) over the smaller one's area."""
    ix = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    iy = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    smaller = min(float((a[2] - a[0]) * (a[3] - a[1])), float((b[2] - b[0]) * (b[3] - b[1])))
    return ix * iy / smaller if smaller > 0 else 0.0


def dilate(box: np.ndarray, margin: float, size: tuple[int, int]) -> np.ndarray:
    """``box`` grown by ``margin`` of its width/height on each side (+2 px), clipped to ``size`` (w, h)."""
    w, h = box[2] - box[0], box[3] - box[1]
    dx, dy = margin * w + 2, margin * h + 2
    out = np.array([box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy], np.float32)
    out[[0, 2]] = np.clip(out[[0, 2]], 0, size[0])
    out[[1, 3]] = np.clip(out[[1, 3]], 0, size[1])
    return out


def _is_involved(box: np.ndarray, t: float, lines: Sequence[_Timeline], hold_s: float) -> bool:
    """An untracked detection mostly inside an involved person's box near ``t`` is that person
    (a duplicate, or their tentative track before it was confirmed), not a bystander."""
    for line in lines:
        near = line.outline(t, hold_s)
        if near is not None and _overlap_of_smaller(box, near) >= INVOLVED_OVERLAP:
            return True
    return False


def _stack(boxes: list[np.ndarray]) -> np.ndarray:
    return np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)


def plan_redaction(frame_times: Sequence[float], seen: Iterable[SeenPersons], involved_ids: Iterable[int],
                   settings: RedactionConfig, frame_size: tuple[int, int],
                   scale: tuple[float, float] = (1.0, 1.0)) -> RedactionPlan:
    """Decides, for each clip frame, what to pixelate (bystanders) and where the event's persons
    are. ``frame_size`` (w, h) of the clip; ``scale`` maps analysed-frame pixels to it."""
    involved = set(int(i) for i in involved_ids)
    hold = settings.hold_s
    head_margin = max(settings.margin, HEAD_MIN_MARGIN)
    samples: dict[int, list[tuple[float, np.ndarray]]] = {}
    loose_seen: list[tuple[float, np.ndarray]] = []
    sx, sy = scale
    factor = np.array([sx, sy, sx, sy], np.float32)
    lo, hi = (min(frame_times) - hold, max(frame_times) + hold) if frame_times else (0.0, -1.0)
    for s in seen:
        if not lo <= s.t <= hi:
            continue
        for tid, pair in s.tracked.items():
            samples.setdefault(int(tid), []).append((s.t, np.asarray(pair, np.float32).reshape(2, 4) * factor))
        loose_seen += [(s.t, pair) for pair in np.asarray(s.untracked, np.float32).reshape(-1, 2, 4) * factor]
    timelines = {tid: _Timeline(v) for tid, v in samples.items()}
    involved_lines = [line for tid, line in timelines.items() if tid in involved]
    loose = [(t, pair) for t, pair in loose_seen if not _is_involved(pair[0], t, involved_lines, hold)]
    body: list[np.ndarray] = []
    keep: list[np.ndarray] = []
    heads: list[np.ndarray] = []
    outlines: dict[str, list[tuple[int, int, int, int, int]]] = {}
    pixelated: set[int] = set()
    used_untracked = 0
    for index, t in enumerate(frame_times):
        frame_body, frame_keep, frame_heads = [], [], []
        for tid, line in timelines.items():
            if tid in involved:
                outline = line.outline(t, hold)
                if outline is not None:
                    frame_keep.append(outline)
                    x1, y1, x2, y2 = (round(float(v)) for v in outline)
                    outlines.setdefault(str(tid), []).append((index, x1, y1, max(0, x2 - x1), max(0, y2 - y1)))
                continue
            covered, head = line.cover(t, hold), line.outline(t, hold, part=1)
            if covered is not None and head is not None:
                frame_body.append(dilate(covered, settings.margin, frame_size))
                # The head follows its path (interpolated), not the union: it is what must stay
                # covered inside an involved person's box, so it is kept tight there.
                frame_heads.append(dilate(head, head_margin, frame_size))
                pixelated.add(tid)
        # Untracked detections have no identity to follow: each is carried hold_s either way.
        for seen_t, pair in loose:
            if abs(seen_t - t) <= hold:
                frame_body.append(dilate(pair[0], settings.margin, frame_size))
                frame_heads.append(dilate(pair[1], head_margin, frame_size))
                used_untracked += 1
        body.append(_stack(frame_body))
        keep.append(_stack(frame_keep))
        heads.append(_stack(frame_heads))
    return RedactionPlan(tuple(body), tuple(keep), tuple(heads), {k: tuple(v) for k, v in outlines.items()},
                         tuple(str(t) for t in sorted(pixelated)), used_untracked)


def _mosaic(out: np.ndarray, boxes: np.ndarray, settings: RedactionConfig, reference: float | None = None) -> None:
    """Replaces each box of ``out`` (in place) by blocks of its mean colour, on a grid anchored at
    the frame origin; the block is the box height (or ``reference``) / ``blocks_per_height``,
    never below ``block_px``."""
    h, w = out.shape[:2]
    for box in np.asarray(boxes, np.float32).reshape(-1, 4):
        height = reference if reference is not None else float(box[3] - box[1])
        block = max(settings.block_px, math.ceil(height / max(1, settings.blocks_per_height)))
        x1, y1 = int(box[0]) // block * block, int(box[1]) // block * block
        x2, y2 = min(w, math.ceil(float(box[2]) / block) * block), min(h, math.ceil(float(box[3]) / block) * block)
        if x2 <= x1 or y2 <= y1:
            continue
        region = out[y1:y2, x1:x2]
        small = cv2.resize(region, (max(1, math.ceil((x2 - x1) / block)), max(1, math.ceil((y2 - y1) / block))),
                           interpolation=cv2.INTER_AREA)
        out[y1:y2, x1:x2] = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)


def pixelate(image: np.ndarray, body: np.ndarray, keep: np.ndarray, heads: np.ndarray,
             settings: RedactionConfig) -> np.ndarray:
    """A copy of ``image`` (uint8[H, W, 3]): the ``body`` boxes as a block mosaic, except inside
    the ``keep`` boxes (the event's persons), then the ``heads`` as a mosaic everywhere."""
    out = image.copy()
    _mosaic(out, body, settings)
    h, w = image.shape[:2]
    for box in np.asarray(keep, np.float32).reshape(-1, 4):
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(w, math.ceil(float(box[2]))), min(h, math.ceil(float(box[3])))
        if x2 > x1 and y2 > y1:
            out[y1:y2, x1:x2] = image[y1:y2, x1:x2]
    # Heads in blocks no smaller than the body's would be (a head is ~1/4 of a person's height).
    for box in np.asarray(heads, np.float32).reshape(-1, 4):
        _mosaic(out, box, settings, reference=4.0 * float(box[3] - box[1]) / (1 + 2 * HEAD_MIN_MARGIN))
    return out
