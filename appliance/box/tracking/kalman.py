"""Constant-velocity Kalman filter on boxes, vectorised over tracks, driven by real time.

State ``[cx, cy, w, h, vcx, vcy, vw, vh]`` (pixels and pixels per second), measurement
``[cx, cy, w, h]``. This is ByteTrack's 8-dimensional filter in the (cx, cy, w, h) form of
BoT-SORT: a person's box changes its aspect ratio a lot when arms swing or someone bends
over, and width as a state follows that better than aspect ratio.

ByteTrack tunes its noise per frame at 30 fps. Analysis here runs at ~10 fps and skips
frames when inference is slow, so the transition uses the real ``dt`` and the process noise
grows with it (variance ∝ dt): predicting over 0.3 s behaves like three 0.1 s steps.
Noise is proportional to the box size, so near and far persons are treated alike.
"""

from __future__ import annotations

import numpy as np

REFERENCE_DT = 1 / 30       # the frame interval ByteTrack's weights were tuned for
STD_POSITION = 1 / 20       # × size: measurement noise, and process noise per reference step
STD_VELOCITY = 1 / 160      # × size per reference step, converted to per second below

_H = np.hstack([np.eye(4), np.zeros((4, 4))])


def _size_scale(boxes_cxcywh: np.ndarray) -> np.ndarray:
    """[N, 4] → [N, 4] the size each coordinate's noise is proportional to: w, h, w, h."""
    w, h = boxes_cxcywh[:, 2], boxes_cxcywh[:, 3]
    return np.stack([w, h, w, h], axis=1)


def initiate(measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from measurements [N, 4] (cx, cy, w, h): means [N, 8], covariances [N, 8, 8]."""
    n = measurements.shape[0]
    mean = np.zeros((n, 8))
    mean[:, :4] = measurements
    size = _size_scale(measurements)
    std = np.hstack([2 * STD_POSITION * size, 10 * STD_VELOCITY / REFERENCE_DT * size])
    cov = np.zeros((n, 8, 8))
    idx = np.arange(8)
    cov[:, idx, idx] = std ** 2
    return mean, cov


def predict(mean: np.ndarray, cov: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Advances [N, 8] means and [N, 8, 8] covariances by ``dt`` seconds (dt ≥ 0)."""
    if mean.shape[0] == 0 or dt <= 0:
        return mean.copy(), cov.copy()
    transition = np.eye(8)
    transition[:4, 4:] = dt * np.eye(4)
    steps = dt / REFERENCE_DT
    size = _size_scale(np.maximum(mean[:, :4], 1.0))
    std = np.hstack([STD_POSITION * size, STD_VELOCITY / REFERENCE_DT * size])
    q = np.zeros_like(cov)
    idx = np.arange(8)
    q[:, idx, idx] = std ** 2 * steps
    mean = mean @ transition.T
    cov = transition @ cov @ transition.T + q
    return mean, cov


def update(mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corrects [N, 8] / [N, 8, 8] with measurements [N, 4] (cx, cy, w, h)."""
    if mean.shape[0] == 0:
        return mean.copy(), cov.copy()
    size = _size_scale(np.maximum(mean[:, :4], 1.0))
    r = np.zeros((mean.shape[0], 4, 4))
    idx = np.arange(4)
    r[:, idx, idx] = (STD_POSITION * size) ** 2
    projected_mean = mean[:, :4]
    projected_cov = _H @ cov @ _H.T + r                      # [N, 4, 4]
    cross = cov @ _H.T                                       # [N, 8, 4]
    # gain = cross @ inv(projected_cov), via a solve on the transposed system (both symmetric)
    gain = np.linalg.solve(projected_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
    innovation = measurements - projected_mean
    mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    cov = cov - gain @ projected_cov @ gain.transpose(0, 2, 1)
    return mean, cov


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w, h], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    half_w, half_h = boxes[:, 2] / 2, boxes[:, 3] / 2
    return np.stack([boxes[:, 0] - half_w, boxes[:, 1] - half_h,
                     boxes[:, 0] + half_w, boxes[:, 1] + half_h], axis=1)
