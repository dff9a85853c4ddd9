"""Multi-person pose estimation with an ONNX YOLO-pose model: Frame → Detections.

Pre-processing letterboxes the frame to the model width keeping the aspect ratio, and pads
the height only up to the next multiple of 32, so a 16:9 camera runs at 640×384 instead of
640×640 (≈ 40 % less compute). Decoding is vectorised over all anchors; overlapping persons
are merged by OpenCV's NMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from appliance.box.pose.manifest import ModelEntry, verified_session
from appliance.common.errors import ModelError
from appliance.contracts.types import NUM_KEYPOINTS, Detections, Frame

if TYPE_CHECKING:
    from appliance.box.pose.movenet import MoveNetEstimator

PAD_VALUE = 114  # the grey Ultralytics pads with; the model was trained on it
STRIDE = 32


@dataclass(frozen=True)
class Letterbox:
    """How a frame was mapped into the model input: input = frame * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: int
    pad_y: int
    input_w: int
    input_h: int


def letterbox_geometry(frame_w: int, frame_h: int, input_width: int) -> Letterbox:
    scale = input_width / max(frame_w, frame_h)
    new_w, new_h = round(frame_w * scale), round(frame_h * scale)
    input_w = -(-new_w // STRIDE) * STRIDE
    input_h = -(-new_h // STRIDE) * STRIDE
    return Letterbox(scale, (input_w - new_w) // 2, (input_h - new_h) // 2, input_w, input_h)


def letterbox(image: np.ndarray, input_width: int, pad_value: int) -> tuple[np.ndarray, Letterbox]:
    """uint8[H, W, 3] → uint8[h, w, 3] resized keeping the aspect ratio and padded with
    ``pad_value`` to multiples of 32 (centred), and the geometry. Both pose models use it."""
    h, w = image.shape[:2]
    lb = letterbox_geometry(w, h, input_width)
    new_w, new_h = round(w * lb.scale), round(h * lb.scale)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) \
        if (new_w, new_h) != (w, h) else image
    padded = cv2.copyMakeBorder(
        resized, lb.pad_y, lb.input_h - new_h - lb.pad_y, lb.pad_x, lb.input_w - new_w - lb.pad_x,
        cv2.BORDER_CONSTANT, value=(pad_value, pad_value, pad_value))
    return padded, lb


class LetterboxedPoseModel:
    """What every pose model does with a frame: letterbox, infer, decode back to frame pixels.

    Subclasses provide ``preprocess``, ``infer_raw`` and ``decode``; the behaviour stage only
    ever sees the :class:`Detections` this returns, whichever model made them.
    """

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        raise NotImplementedError

    def infer_raw(self, blob: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, raw: np.ndarray, lb: Letterbox, frame_index: int = 0, t: float = 0.0) -> Detections:
        raise NotImplementedError

    def __call__(self, frame: Frame | np.ndarray) -> Detections:
        image = frame.image if isinstance(frame, Frame) else frame
        blob, lb = self.preprocess(image)
        raw = self.infer_raw(blob)
        if isinstance(frame, Frame):
            return self.decode(raw, lb, frame.index, frame.t)
        return self.decode(raw, lb)


class PoseEstimator(LetterboxedPoseModel):
    """Runs the manifest-verified pose model on frames.

    >>> est = PoseEstimator("yolo11n-pose-int8", input_width=640, threads=2)
    >>> dets = est(frame)            # Detections in frame pixels
    """

    def __init__(self, model: str = "yolo11n-pose-int8", *, models_dir: str | None = None,
                 input_width: int = 640, threads: int = 2, score_threshold: float = 0.35,
                 nms_iou: float = 0.5, max_persons: int = 50):
        self.entry: ModelEntry
        self.entry, self.session = verified_session(model, models_dir, threads=threads,
                                                    architecture=("yolo-pose",))
        self.input_name = self.session.get_inputs()[0].name
        self.input_width = input_width
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_persons = max_persons

    @property
    def model_sha256(self) -> str:
        return self.entry.sha256

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """uint8[H, W, 3] BGR → float32[1, 3, h, w] RGB 0..1 letterboxed, and the geometry."""
        padded, lb = letterbox(image, self.input_width, PAD_VALUE)
        blob = cv2.dnn.blobFromImage(padded, scalefactor=1 / 255.0, swapRB=True)
        return blob, lb

    def infer_raw(self, blob: np.ndarray) -> np.ndarray:
        """The model's raw output float32[56, A] for one input."""
        return self.session.run(None, {self.input_name: blob})[0][0]

    def decode(self, raw: np.ndarray, lb: Letterbox, frame_index: int = 0, t: float = 0.0) -> Detections:
        """Raw output float32[56, A] → Detections in frame pixels (after NMS)."""
        scores = raw[4]
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return Detections.empty(frame_index, t)
        cand = raw[:, keep].T  # [K, 56]
        cx, cy, bw, bh = cand[:, 0], cand[:, 1], cand[:, 2], cand[:, 3]
        xywh = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        kept = cv2.dnn.NMSBoxes(xywh.tolist(), cand[:, 4].tolist(), self.score_threshold, self.nms_iou,
                                top_k=self.max_persons)
        idx = np.asarray(kept, dtype=np.int64).reshape(-1)[: self.max_persons]
        sel = cand[idx]
        boxes = np.empty((len(idx), 4), np.float32)
        boxes[:, 0] = (sel[:, 0] - sel[:, 2] / 2 - lb.pad_x) / lb.scale
        boxes[:, 1] = (sel[:, 1] - sel[:, 3] / 2 - lb.pad_y) / lb.scale
        boxes[:, 2] = (sel[:, 0] + sel[:, 2] / 2 - lb.pad_x) / lb.scale
        boxes[:, 3] = (sel[:, 1] + sel[:, 3] / 2 - lb.pad_y) / lb.scale
        kpts = sel[:, 5:].reshape(-1, NUM_KEYPOINTS, 3).astype(np.float32, copy=True)
        kpts[:, :, 0] = (kpts[:, :, 0] - lb.pad_x) / lb.scale
        kpts[:, :, 1] = (kpts[:, :, 1] - lb.pad_y) / lb.scale
        return Detections(frame_index, t, boxes, sel[:, 4].astype(np.float32), kpts)



def estimator_from_config(pose_cfg) -> PoseEstimator | MoveNetEstimator:
    """Builds the estimator the manifest entry of ``pose.model`` calls for (YOLO-pose or
    MoveNet), from a validated :class:`appliance.config.PoseConfig`. Both return the same
    :class:`~appliance.types.Detections`."""
    from appliance.box.pose.manifest import POSE_ARCHITECTURES, load_manifest

    models_dir = pose_cfg.models_dir or None
    entry = load_manifest(models_dir).get(pose_cfg.model)
    if entry is not None and entry.architecture not in POSE_ARCHITECTURES:
        pose_models = [e.name for e in load_manifest(models_dir).values() if e.architecture in POSE_ARCHITECTURES]
        raise ModelError(f"pose.model = {pose_cfg.model!r} is a {entry.architecture} model, not a pose model "
                         f"(fix: one of {', '.join(pose_models)})")
    input_width = pose_cfg.input_width or (entry.input_width if entry is not None else 0) or 640
    if entry is not None and entry.architecture == "movenet-multipose":
        from appliance.box.pose.movenet import MoveNetEstimator

        return MoveNetEstimator(pose_cfg.model, models_dir=models_dir, input_width=input_width,
                                threads=pose_cfg.threads, score_threshold=pose_cfg.score_threshold,
                                max_persons=pose_cfg.max_persons)
    return PoseEstimator(
        pose_cfg.model, models_dir=models_dir, input_width=input_width,
        threads=pose_cfg.threads, score_threshold=pose_cfg.score_threshold,
        nms_iou=pose_cfg.nms_iou, max_persons=pose_cfg.max_persons)
