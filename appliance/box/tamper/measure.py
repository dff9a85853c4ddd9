"""What the tamper checks measure on one frame: a few numbers and ORB corners, never pixels kept.

Shapes (documented at the boundary):

    image           uint8[H, W, 3] BGR, a (masked, downscaled) ring frame
    person_boxes    float[N, 4] x1, y1, x2, y2 in the image's pixels (may be empty)
    FrameMeasures.cell_sharpness   float32[GRID_ROWS, GRID_COLS], NaN where a person is
    FrameMeasures.cell_std         float32[GRID_ROWS, GRID_COLS] grey-level std per cell
    Corners.points                 float32[K, 2] normalised 0..1 (x / width, y / height)
    Corners.descriptors            uint8[K, 32] ORB (rBRIEF, 256 bits)

The thumbnail and the grey image exist only inside :func:`measure_frame` (RAM, freed on return);
the only thing carried from one sample to the next for the frozen check is the 320x240 grey
thumbnail in the detector (RAM only, replaced at every sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Statistics are taken on a THUMB_W x THUMB_H grey thumbnail (whatever the camera's aspect).
THUMB_W, THUMB_H = 320, 240
GRID_COLS, GRID_ROWS = 8, 6
CELL_W, CELL_H = THUMB_W // GRID_COLS, THUMB_H // GRID_ROWS
#: ORB runs on the frame downscaled to this width (aspect kept).
ORB_WIDTH = 480
ORB_FEATURES = 500
#: Colour is judged on a tiny thumbnail.
CHROMA_W, CHROMA_H = 64, 48
#: Grey level counted as saturated.
SATURATED_LEVEL = 250
#: Sharpness is the variance of the Laplacian over the cell's variance plus this floor, so a
#: change of illumination (which scales both) does not read as blur, and flat cells stay small.
SHARPNESS_VAR_FLOOR = 25.0

_ORB: cv2.ORB | None = None


def _orb() -> cv2.ORB:
    global _ORB
    if _ORB is None:
        _ORB = cv2.ORB.create(nfeatures=ORB_FEATURES, fastThreshold=12)
    return _ORB


@dataclass(frozen=True)
class Corners:
    """ORB corners of a view: positions normalised 0..1 and their descriptors."""

    points: np.ndarray        # float32[K, 2]
    descriptors: np.ndarray   # uint8[K, 32]
    width: int                # the width ORB ran at (pixels), for pixel tolerances
    height: int

    def __len__(self) -> int:
        return len(self.points)

    @staticmethod
    def empty(width: int = ORB_WIDTH, height: int = 270) -> Corners:
        return Corners(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), width, height)


@dataclass(frozen=True)
class FrameMeasures:
    """The numbers one frame gives the tamper checks."""

    brightness: float          # mean grey level 0..255
    contrast: float            # grey-level standard deviation
    entropy_bits: float        # Shannon entropy of the 256-bin grey histogram
    saturated: float           # share of pixels >= SATURATED_LEVEL
    chroma: float              # 90th percentile of (max - min) over B, G, R: ~0 for an infrared image
    cell_sharpness: np.ndarray  # float32[GRID_ROWS, GRID_COLS], NaN under a person
    cell_std: np.ndarray        # float32[GRID_ROWS, GRID_COLS]
    thumb: np.ndarray           # uint8[THUMB_H, THUMB_W] grey (RAM only: the next sample's frozen check)


def person_cell_mask(person_boxes: np.ndarray | None, width: int, height: int, margin: float = 0.1) -> np.ndarray:
    """bool[GRID_ROWS, GRID_COLS]: cells touched by a person box (grown by ``margin``)."""
    mask = np.zeros((GRID_ROWS, GRID_COLS), bool)
    if person_boxes is None or len(person_boxes) == 0:
        return mask
    sx, sy = GRID_COLS / width, GRID_ROWS / height
    for x1, y1, x2, y2 in np.asarray(person_boxes, float).reshape(-1, 4):
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        c1, c2 = int(max(0, (x1 - mx) * sx)), int(min(GRID_COLS - 1, (x2 + mx) * sx))
        r1, r2 = int(max(0, (y1 - my) * sy)), int(min(GRID_ROWS - 1, (y2 + my) * sy))
        mask[r1:r2 + 1, c1:c2 + 1] = True
    return mask


def _prepare(image: np.ndarray) -> tuple[np.ndarray, float]:
    """(grey image ORB_WIDTH wide, chroma): one colour conversion and one resize per sample."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"tamper frames must be uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
    h, w = image.shape[:2]
    ow = min(ORB_WIDTH, w)
    oh = max(1, round(h * ow / w))
    tiny = cv2.resize(image, (CHROMA_W, CHROMA_H), interpolation=cv2.INTER_AREA)
    b, g, r = cv2.split(tiny)
    # The 90th percentile, not the mean: a grey cloth over most of the lens must not read as
    # the camera's monochrome night mode while the rest of the view is still in colour.
    chroma = np.percentile(cv2.subtract(cv2.max(cv2.max(b, g), r), cv2.min(cv2.min(b, g), r)), 90)
    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (ow, oh), interpolation=cv2.INTER_AREA)
    return grey, float(chroma)


def measure_and_detect(image: np.ndarray, person_boxes: np.ndarray | None = None) -> tuple[FrameMeasures, Corners]:
    """Both halves of a sample on one shared grey image (what the detector calls)."""
    grey, chroma = _prepare(image)
    h, w = image.shape[:2]
    return _measure(grey, chroma, person_boxes, w, h), _corners(grey, person_boxes, w)


def measure_frame(image: np.ndarray, person_boxes: np.ndarray | None = None) -> FrameMeasures:
    grey, chroma = _prepare(image)
    return _measure(grey, chroma, person_boxes, image.shape[1], image.shape[0])


def detect_corners(image: np.ndarray, person_boxes: np.ndarray | None = None) -> Corners:
    """ORB corners of ``image`` outside person boxes (grown by 10 %)."""
    grey, _ = _prepare(image)
    return _corners(grey, person_boxes, image.shape[1])


def _measure(grey_orb: np.ndarray, chroma: float, person_boxes: np.ndarray | None, w: int, h: int) -> FrameMeasures:
    grey = cv2.resize(grey_orb, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA)
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / grey.size
    entropy = float(-(p * np.log2(p)).sum())
    g = grey.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=1)
    cell_var = g.reshape(GRID_ROWS, CELL_H, GRID_COLS, CELL_W).var(axis=(1, 3))
    sharp = lap.reshape(GRID_ROWS, CELL_H, GRID_COLS, CELL_W).var(axis=(1, 3)) / (cell_var + SHARPNESS_VAR_FLOOR)
    sharp[person_cell_mask(person_boxes, w, h)] = np.nan
    mean, std = cv2.meanStdDev(grey)
    return FrameMeasures(brightness=float(mean[0, 0]), contrast=float(std[0, 0]), entropy_bits=entropy,
                         saturated=float(np.count_nonzero(grey >= SATURATED_LEVEL)) / grey.size, chroma=chroma,
                         cell_sharpness=sharp.astype(np.float32), cell_std=np.sqrt(cell_var).astype(np.float32),
                         thumb=grey)


def _corners(grey: np.ndarray, person_boxes: np.ndarray | None, w: int) -> Corners:
    oh, ow = grey.shape
    mask = None
    if person_boxes is not None and len(person_boxes):
        mask = np.full((oh, ow), 255, np.uint8)
        s = ow / w
        for x1, y1, x2, y2 in np.asarray(person_boxes, float).reshape(-1, 4):
            mx, my = (x2 - x1) * 0.1, (y2 - y1) * 0.1
            cv2.rectangle(mask, (int((x1 - mx) * s), int((y1 - my) * s)), (int((x2 + mx) * s), int((y2 + my) * s)),
                          0, thickness=-1)
    keypoints, descriptors = _orb().detectAndCompute(grey, mask)
    if descriptors is None or not keypoints:
        return Corners.empty(ow, oh)
    pts = np.array([k.pt for k in keypoints], np.float32) / np.array([ow, oh], np.float32)
    return Corners(pts, descriptors.astype(np.uint8), ow, oh)


@dataclass(frozen=True)
class ViewMatch:
    """How the current view relates to the reference corners."""

    matches: int
    inliers: int
    inlier_ratio: float   # inliers / reference corners
    shift: float          # median displacement of the inner frame points, share of the width (inf: none)
    rotation_deg: float   # rotation of the view about the optical axis (0 when unknown)


#: Lowe's ratio test for ORB matches, and the RANSAC reprojection threshold in ORB pixels.
MATCH_RATIO = 0.8
RANSAC_PX = 4.0
MIN_HOMOGRAPHY_INLIERS = 8
_INNER = np.array([[x, y] for x in (0.25, 0.5, 0.75) for y in (0.25, 0.5, 0.75)], np.float32)
_MATCHER: cv2.BFMatcher | None = None


def visible_corners(reference: Corners, person_boxes: np.ndarray | None, w: int, h: int) -> Corners:
    """The reference corners not hidden behind a person now (boxes grown by 10 %)."""
    if person_boxes is None or not len(person_boxes) or not len(reference):
        return reference
    px = reference.points * np.array([w, h], np.float32)
    hidden = np.zeros(len(reference), bool)
    for x1, y1, x2, y2 in np.asarray(person_boxes, float).reshape(-1, 4):
        mx, my = (x2 - x1) * 0.1, (y2 - y1) * 0.1
        hidden |= (px[:, 0] >= x1 - mx) & (px[:, 0] <= x2 + mx) & (px[:, 1] >= y1 - my) & (px[:, 1] <= y2 + my)
    return Corners(reference.points[~hidden], reference.descriptors[~hidden], reference.width, reference.height)


def match_view(reference: Corners, current: Corners) -> ViewMatch:
    """ORB matches (ratio test) → RANSAC homography → inlier ratio and shift of the view.

    Pass the reference through :func:`visible_corners` first, so persons standing in front of
    static corners do not read as a moved camera."""
    global _MATCHER
    if len(reference) < 2 or len(current) < 2:
        return ViewMatch(0, 0, 0.0, float("inf"), 0.0)
    if _MATCHER is None:
        _MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = _MATCHER.knnMatch(reference.descriptors, current.descriptors, k=2)
    good = [m for m, *rest in (p for p in pairs if p) if not rest or m.distance < MATCH_RATIO * rest[0].distance]
    if len(good) < MIN_HOMOGRAPHY_INLIERS:
        return ViewMatch(len(good), 0, 0.0, float("inf"), 0.0)
    scale = np.array([current.width, current.height], np.float32)
    src = reference.points[[m.queryIdx for m in good]] * scale
    dst = current.points[[m.trainIdx for m in good]] * scale
    homography, inlier_mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX)
    if homography is None:
        return ViewMatch(len(good), 0, 0.0, float("inf"), 0.0)
    inliers = int(inlier_mask.sum())
    inner = _INNER * scale
    moved = cv2.perspectiveTransform(inner[None], homography)[0]
    shift = float(np.median(np.linalg.norm(moved - inner, axis=1)) / current.width)
    # The rotation read off a homography is swayed by its perspective terms: fit a similarity
    # (rotation, scale, shift) to the inliers instead.
    keep = inlier_mask.ravel().astype(bool)
    similarity, _ = cv2.estimateAffinePartial2D(src[keep], dst[keep], method=cv2.LMEDS)
    rotation = 0.0 if similarity is None else float(np.degrees(np.arctan2(similarity[1, 0], similarity[0, 0])))
    return ViewMatch(len(good), inliers, inliers / len(reference), shift, rotation)
