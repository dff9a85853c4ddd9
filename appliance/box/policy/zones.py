"""Analysis zones: the parts of the picture where an event may count.

Zones are polygons from the camera config (``[[zones]]``, normalised 0..1 of the frame). The
policy gate applies them to an event's persons' foot points (docs/legal-profiles.md, *Zones*);
the detectors and the tracker see the whole (masked) frame, so identities stay stable when a
person walks across a zone border. No zone configured means the whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from appliance.box.config import Region


@dataclass(frozen=True, eq=False)
class ZoneSet:
    """Named polygons, kept in normalised coordinates; point tests are exact
    (``cv2.pointPolygonTest``), with points on the border counting as inside."""

    regions: tuple[Region, ...] = ()
    width: int = 0      # the frame the positions come from; informational (tests use 0..1 coordinates)
    height: int = 0

    @classmethod
    def from_regions(cls, regions: tuple[Region, ...] | list[Region], width: int = 0, height: int = 0) -> ZoneSet:
        regions = tuple(regions)
        for r in regions:
            if len(r.polygon) < 3:
                raise ValueError(f"zone {r.name!r}: a polygon needs at least 3 points")
        return cls(regions, width, height)

    @property
    def whole_frame(self) -> bool:
        return not self.regions

    def _contours(self) -> tuple[np.ndarray, ...]:
        cached = self.__dict__.get("_contours_cache")
        if cached is None:
            cached = tuple(np.asarray(r.polygon, np.float32).reshape(-1, 1, 2) for r in self.regions)
            object.__setattr__(self, "_contours_cache", cached)
        return cached

    def zone_of(self, x: float, y: float) -> str | None:
        """Name of the first zone containing the normalised point, or None.
        With no zones configured every point is in the zone ``"whole-frame"``."""
        if not self.regions:
            return "whole-frame"
        for region, contour in zip(self.regions, self._contours()):
            if cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0:
                return region.name
        return None

    def contains(self, x: float, y: float) -> bool:
        return self.zone_of(x, y) is not None
