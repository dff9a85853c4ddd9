"""Body-scale-normalised quantities of one skeleton, and of one skeleton's motion.

Everything the detectors compare is expressed in *torso lengths* (mid-shoulder to mid-hip)
of the person concerned, so a threshold means the same near and far from the camera. Pure
functions over ``float32[17, 3]`` COCO-17 keypoints (x, y pixels, confidence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.contracts.types import KP

L_SHO, R_SHO, L_HIP, R_HIP = KP["left_shoulder"], KP["right_shoulder"], KP["left_hip"], KP["right_hip"]
WRISTS = (KP["left_wrist"], KP["right_wrist"])
ANKLES = (KP["left_ankle"], KP["right_ankle"])
KNEES = (KP["left_knee"], KP["right_knee"])
HEAD = (KP["nose"], KP["left_eye"], KP["right_eye"], KP["left_ear"], KP["right_ear"])
#: Points that make up the body a blow or kick can land on (head, shoulders, elbows, hips, knees).
BODY = (*HEAD, L_SHO, R_SHO, KP["left_elbow"], KP["right_elbow"], L_HIP, R_HIP, *KNEES)

#: A standing adult's box is about three torso lengths high; used only when the torso is hidden.
BOX_HEIGHT_PER_TORSO = 3.0
#: Posture (upright or down) is judged with a lower keypoint confidence than motion: a person
#: on the ground is seen from an unusual angle and scored lower (UR Fall, AlphaPose: median hip
#: score 0.37 lying vs 0.77 standing), and a direction needs no precise point.
POSTURE_MIN_CONF = 0.15


def _mid(kp: np.ndarray, a: int, b: int, min_conf: float) -> np.ndarray | None:
    if kp[a, 2] >= min_conf and kp[b, 2] >= min_conf:
        return (kp[a, :2] + kp[b, :2]) * 0.5
    return None


def torso_length(kp: np.ndarray, min_conf: float) -> float | None:
    """Mid-shoulder to mid-hip distance in pixels, or None when a point is not confident."""
    sho, hip = _mid(kp, L_SHO, R_SHO, min_conf), _mid(kp, L_HIP, R_HIP, min_conf)
    if sho is None or hip is None:
        return None
    return float(np.hypot(*(sho - hip)))


def fallback_scale(box: np.ndarray) -> float:
    return max(float(box[3] - box[1]) / BOX_HEIGHT_PER_TORSO, 1.0)


def torso_angle_deg(kp: np.ndarray, min_conf: float) -> float | None:
    """Angle of the hip→shoulder vector from straight up: 0 upright, 90 horizontal, 180 head down."""
    sho, hip = _mid(kp, L_SHO, R_SHO, min_conf), _mid(kp, L_HIP, R_HIP, min_conf)
    if sho is None or hip is None:
        return None
    dx, dy = sho - hip
    norm = math.hypot(dx, dy)
    if norm < 1e-6:
        return None
    return math.degrees(math.acos(max(-1.0, min(1.0, -dy / norm))))


def is_down(kp: np.ndarray, box: np.ndarray, lying_angle_deg: float) -> bool:
    """Whether a skeleton is on the ground: torso tilted past ``lying_angle_deg`` from vertical;
    when the torso is hidden, a skeleton (else a box) clearly wider than high."""
    angle = torso_angle_deg(kp, POSTURE_MIN_CONF)
    if angle is not None:
        return angle >= lying_angle_deg
    pts = kp[kp[:, 2] >= POSTURE_MIN_CONF, :2]
    if len(pts) >= 5:
        w, h = np.ptp(pts[:, 0]), np.ptp(pts[:, 1])
    else:
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
    return w > 1.3 * h


def body_aspect(kp: np.ndarray, box: np.ndarray) -> float:
    """Height over width of the confident skeleton (else the box): about 2-3 for a person
    standing, about 1 or less for one on the ground, whatever the camera angle."""
    pts = kp[kp[:, 2] >= POSTURE_MIN_CONF, :2]
    if len(pts) >= 5:
        w, h = float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1]))
    else:
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
    return h / max(w, 1.0)


@dataclass(frozen=True)
class Anchors:
    """Reference points of one skeleton (pixels); None where the keypoints are not confident."""

    hips: np.ndarray | None
    shoulders: np.ndarray | None
    neck: np.ndarray | None
    head: np.ndarray | None
    body: np.ndarray     # float32[K, 2] confident BODY points (may be empty)


def anchors(kp: np.ndarray, box: np.ndarray, min_conf: float) -> Anchors:
    hips = _mid(kp, L_HIP, R_HIP, min_conf)
    shoulders = _mid(kp, L_SHO, R_SHO, min_conf)
    head_pts = [kp[i, :2] for i in HEAD if kp[i, 2] >= min_conf]
    head = np.mean(head_pts, axis=0) if head_pts else None
    neck = None
    if shoulders is not None:
        # The neck sits a quarter of the way from the shoulder line to the face.
        neck = shoulders if head is None else shoulders + 0.25 * (head - shoulders)
    body = np.array([kp[i, :2] for i in BODY if kp[i, 2] >= min_conf], np.float32).reshape(-1, 2)
    return Anchors(hips, shoulders, neck, head, body)


def reference_point(kp: np.ndarray, box: np.ndarray, min_conf: float) -> np.ndarray:
    """Hips, else shoulders, else box centre: where a person 'is'."""
    for a, b in ((L_HIP, R_HIP), (L_SHO, R_SHO)):
        mid = _mid(kp, a, b, min_conf)
        if mid is not None:
            return mid
    return np.array([(box[0] + box[2]) * 0.5, (box[1] + box[3]) * 0.5], np.float32)


def common_reference(kp0: np.ndarray, box0: np.ndarray, kp1: np.ndarray, box1: np.ndarray,
                     min_conf: float) -> tuple[np.ndarray, np.ndarray]:
    """The same reference point in two frames (so a hip/shoulder switch is not read as motion)."""
    for a, b in ((L_HIP, R_HIP), (L_SHO, R_SHO)):
        m0, m1 = _mid(kp0, a, b, min_conf), _mid(kp1, a, b, min_conf)
        if m0 is not None and m1 is not None:
            return m0, m1
    c0 = np.array([(box0[0] + box0[2]) * 0.5, (box0[1] + box0[3]) * 0.5], np.float32)
    c1 = np.array([(box1[0] + box1[2]) * 0.5, (box1[1] + box1[3]) * 0.5], np.float32)
    return c0, c1


def relative_speeds(kp0: np.ndarray, box0: np.ndarray, kp1: np.ndarray, box1: np.ndarray,
                    dt: float, scale: float, joints: tuple[int, ...], min_conf: float) -> dict[int, float]:
    """Speed of each joint relative to the body's own reference point, torso lengths per second.

    Relative to the hips so that walking or a panning camera does not count as limb motion.
    """
    ref0, ref1 = common_reference(kp0, box0, kp1, box1, min_conf)
    out: dict[int, float] = {}
    for j in joints:
        if kp0[j, 2] >= min_conf and kp1[j, 2] >= min_conf:
            d = (kp1[j, :2] - ref1) - (kp0[j, :2] - ref0)
            out[j] = float(np.hypot(d[0], d[1])) / dt / scale
    return out


def min_distance(point: np.ndarray, points: np.ndarray) -> float:
    if points.size == 0:
        return math.inf
    return float(np.min(np.hypot(points[:, 0] - point[0], points[:, 1] - point[1])))
