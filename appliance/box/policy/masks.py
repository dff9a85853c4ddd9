"""Privacy masks: polygons whose pixels are blacked out before anything looks at them.

The runtime applies a :class:`MaskSet` to every frame *before* it enters the ring buffer and
before inference, so nobody inside a mask is analysed and every clip already carries the masks
burned in. The clip builder applies them once more (defence in depth: the cost is one
vectorised AND per clip frame, and it keeps clips masked even if a future capture path forgets).

Cost: one ``cv2.bitwise_and`` with a precomputed 3-channel keep-mask, cached per frame size —
about 0.1 ms for 960×540 on this machine (``bench/policy.py``), the same as a plain copy.

Rasterisation is conservative: polygons are filled with sub-pixel precision and then grown by
one pixel, so rounding can only hide a little more, never show a little of what is masked.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from appliance.box.config import Region

_SHIFT = 4                       # fillPoly fractional bits: 1/16 px vertex precision
_GROW = np.ones((3, 3), np.uint8)


class MaskSet:
    """Privacy-mask polygons (normalised 0..1) and their pixel masks per frame size."""

    def __init__(self, regions: tuple[Region, ...] = ()):
        for r in regions:
            if len(r.polygon) < 3:
                raise ValueError(f"privacy mask {r.name!r}: a polygon needs at least 3 points")
        self.regions = tuple(regions)
        self._keep: dict[tuple[int, int], np.ndarray] = {}   # (w, h) → uint8[h, w, 3], 0 = masked
        self._lock = threading.Lock()   # capture and clip threads may ask for a new size at once

    @classmethod
    def from_regions(cls, regions: tuple[Region, ...] | list[Region], width: int | None = None,
                     height: int | None = None) -> MaskSet:
        """Builds the set and, when the size is known, precomputes its mask."""
        masks = cls(tuple(regions))
        if width and height:
            masks.keep_mask(int(width), int(height))
        return masks

    def __bool__(self) -> bool:
        return bool(self.regions)

    def __repr__(self) -> str:
        return f"MaskSet({', '.join(r.name for r in self.regions) or 'empty'})"

    def masked_pixels(self, width: int, height: int) -> np.ndarray:
        """bool[h, w]: True where a pixel is blacked out."""
        if not self.regions:
            return np.zeros((height, width), bool)
        return self.keep_mask(width, height)[:, :, 0] == 0

    def keep_mask(self, width: int, height: int) -> np.ndarray:
        """uint8[h, w, 3]: 255 where pixels are kept, 0 where masked (read-only, cached)."""
        key = (width, height)
        keep = self._keep.get(key)
        if keep is None:
            with self._lock:
                keep = self._keep.get(key)
                if keep is None:
                    keep = self._rasterise(width, height)
                    self._keep[key] = keep
        return keep

    def _rasterise(self, width: int, height: int) -> np.ndarray:
        masked = np.zeros((height, width), np.uint8)
        scale = np.array([width, height], np.float64) * (1 << _SHIFT)
        polys = [np.round(np.asarray(r.polygon, np.float64) * scale).astype(np.int32) for r in self.regions]
        cv2.fillPoly(masked, polys, 255, lineType=cv2.LINE_8, shift=_SHIFT)
        grown = cv2.dilate(masked, _GROW)
        keep = cv2.merge([cv2.bitwise_not(grown)] * 3)
        keep.setflags(write=False)
        return keep

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A copy of ``image`` (uint8[H, W, 3]) with masked pixels black.

        With no masks configured the input itself is returned (frames are treated as
        immutable downstream; the ring copies on push)."""
        if not self.regions:
            return image
        h, w = image.shape[:2]
        return cv2.bitwise_and(image, self.keep_mask(w, h))

    def apply_inplace(self, image: np.ndarray) -> np.ndarray:
        """Blacks out masked pixels in ``image`` itself and returns it."""
        if self.regions:
            h, w = image.shape[:2]
            cv2.bitwise_and(image, self.keep_mask(w, h), dst=image)
        return image
