"""`analyze --overlay`: a WebM with skeletons and track ids drawn, for visual checking.

The one path in the offline tool that writes pixels to disk, and only when explicitly asked.
Frames are the masked frames the pipeline saw, so masks are visible in the overlay too.
"""

from __future__ import annotations

import cv2
import numpy as np

from appliance.common.errors import InputError
from appliance.common.video import open_vp8_writer
from appliance.contracts.types import SKELETON_EDGES, TrackedFrame

MIN_KEYPOINT_CONF = 0.3


def _colour(track_id: int) -> tuple[int, int, int]:
    # Spread hues so neighbouring ids get distinguishable colours.
    hue = (track_id * 47) % 180
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_tracked(image: np.ndarray, tracked: TrackedFrame | None) -> np.ndarray:
    """Draws boxes, skeletons and ids onto a copy of ``image``."""
    out = image.copy()
    if tracked is None:
        return out
    for p in tracked.persons:
        colour = _colour(p.track_id)
        x1, y1, x2, y2 = (int(v) for v in p.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 1)
        cv2.putText(out, f"#{p.track_id}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                    cv2.LINE_AA)
        kp = p.keypoints
        for a, b in SKELETON_EDGES:
            if kp[a, 2] >= MIN_KEYPOINT_CONF and kp[b, 2] >= MIN_KEYPOINT_CONF:
                cv2.line(out, (int(kp[a, 0]), int(kp[a, 1])), (int(kp[b, 0]), int(kp[b, 1])), colour, 2,
                         cv2.LINE_AA)
        for x, y, c in kp:
            if c >= MIN_KEYPOINT_CONF:
                cv2.circle(out, (int(x), int(y)), 3, colour, -1, cv2.LINE_AA)
    return out


class OverlayWriter:
    """Writes every ingested frame with the most recent skeletons drawn."""

    def __init__(self, path: str, fps: float):
        if not path.endswith(".webm"):
            raise InputError(f"--overlay {path}: the file name must end in .webm (VP8 WebM)")
        self.path = path
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._tracked: TrackedFrame | None = None

    def set_tracked(self, tracked: TrackedFrame) -> None:
        self._tracked = tracked

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = open_vp8_writer(self.path, self.fps, (w, h))
            if not self._writer.isOpened():
                raise InputError(f"--overlay {self.path}: cannot open a VP8 WebM writer there")
        self._writer.write(draw_tracked(image, self._tracked))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
