"""Track-to-detection similarities: box IoU and keypoint similarity (OKS)."""

from __future__ import annotations

import numpy as np

from appliance.contracts.types import NUM_KEYPOINTS

#: COCO per-keypoint standard deviations (Ronchi & Perona), COCO-17 order.
COCO_SIGMAS = np.array([.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
                        .107, .107, .087, .087, .089, .089])
assert COCO_SIGMAS.shape == (NUM_KEYPOINTS,)

#: keypoints less confident than this are left out of OKS
KEYPOINT_MIN_CONFIDENCE = 0.3
#: fewer keypoints than this visible in both skeletons → OKS is not used for the pair
MIN_SHARED_KEYPOINTS = 4


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2) → [N, M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def oks_matrix(a: np.ndarray, b: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object keypoint similarity of skeletons a [N, 17, 3] and b [M, 17, 3].

    ``areas`` [N] is the object scale s² (box area of a's persons). Returns (oks [N, M],
    valid [N, M]); a pair is valid when at least :data:`MIN_SHARED_KEYPOINTS` keypoints are
    confident in both, and its OKS is the mean over those keypoints.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    vis = (a[:, None, :, 2] >= KEYPOINT_MIN_CONFIDENCE) & (b[None, :, :, 2] >= KEYPOINT_MIN_CONFIDENCE)
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)           # [N, M, 17]
    k2 = (2 * COCO_SIGMAS) ** 2
    s2 = np.maximum(np.asarray(areas, np.float64), 1.0)[:, None, None]
    per_kp = np.exp(-d2 / (2 * s2 * k2))
    shared = vis.sum(-1)
    oks = np.where(shared > 0, (per_kp * vis).sum(-1) / np.maximum(shared, 1), 0.0)
    return oks, shared >= MIN_SHARED_KEYPOINTS
