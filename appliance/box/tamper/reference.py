"""The tamper reference: what the camera's untampered view looks like, as features and numbers.

Never an image. Per lighting mode (``day`` = colour, ``night`` = the camera's monochrome
infrared mode) it keeps:

- ORB descriptors and normalised positions of the *static* corners: corners found in the
  reference frame (person boxes masked out) that are found again, at the same place, in most
  of the other reference frames — so corners on passers-by and moving things are dropped;
- the contrast-normalised sharpness of each cell of an 8x6 grid, for the cells that are
  textured and steady across the reference frames (None elsewhere);
- brightness, contrast, entropy and colour statistics (for the record and for the report).

A 256-bit ORB descriptor is a set of brightness comparisons around a corner: it cannot be
turned back into the picture. File format (JSON, ``[tamper] reference``; docs/tamper.md)::

    {"format": "appliance-tamper-reference", "version": 1,
     "modes": {"day": MODE, "night": MODE}}        # either mode may be missing
    MODE = {"source": "provision" | "learned", "unix_ms": int, "frames": int,
            "brightness": float, "contrast": float, "entropy_bits": float, "chroma": float,
            "cells": [[float | null] * 8] * 6, "cell_std": [[float | null] * 8] * 6,
            "orb": {"width": int, "height": int, "points": [[x, y], ...], "descriptors": base64}}
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.box.tamper.measure import (
    GRID_COLS,
    GRID_ROWS,
    Corners,
    FrameMeasures,
    measure_and_detect,
)
from appliance.common.durable import atomic_write
from appliance.common.errors import ApplianceError

FORMAT = "appliance-tamper-reference"
VERSION = 1
MODES = ("day", "night")
#: A reference corner is static when found again within this share of the width ...
STATIC_CORNER_TOLERANCE = 0.01
#: ... in at least this share of the other reference frames.
STATIC_CORNER_SHARE = 0.6
#: A cell is kept when its sharpness varies less than this across the reference frames ...
STATIC_CELL_CV = 0.35
#: ... and it has texture (grey-level std and sharpness above these).
TEXTURED_CELL_STD = 6.0
TEXTURED_CELL_SHARPNESS = 0.05
#: A reference is usable with at least this many static corners or textured cells.
MIN_STATIC_CORNERS = 20
MIN_STATIC_CELLS = 6


class ReferenceError(ApplianceError):
    exit_code = 2


@dataclass(frozen=True)
class ModeReference:
    source: str                 # "provision" or "learned"
    unix_ms: int
    frames: int
    brightness: float
    contrast: float
    entropy_bits: float
    chroma: float
    cells: np.ndarray           # float32[GRID_ROWS, GRID_COLS] sharpness, NaN = not a static textured cell
    cell_std: np.ndarray        # float32[GRID_ROWS, GRID_COLS] grey-level spread, NaN where cells is
    corners: Corners

    @property
    def static_cells(self) -> int:
        return int(np.isfinite(self.cells).sum())

    def with_cells(self, cells: np.ndarray, cell_std: np.ndarray) -> ModeReference:
        return replace(self, cells=cells.astype(np.float32), cell_std=cell_std.astype(np.float32))

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "unix_ms": self.unix_ms, "frames": self.frames,
            "brightness": round(self.brightness, 2), "contrast": round(self.contrast, 2),
            "entropy_bits": round(self.entropy_bits, 3), "chroma": round(self.chroma, 2),
            "cells": _grid_json(self.cells, 5), "cell_std": _grid_json(self.cell_std, 2),
            "orb": {"width": self.corners.width, "height": self.corners.height,
                    "points": np.round(self.corners.points, 5).tolist(),
                    "descriptors": base64.b64encode(self.corners.descriptors.tobytes()).decode("ascii")},
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> ModeReference:
        orb = doc["orb"]
        points = np.asarray(orb["points"], np.float32).reshape(-1, 2)
        descriptors = np.frombuffer(base64.b64decode(orb["descriptors"], validate=True), np.uint8)
        if descriptors.size != 32 * len(points):
            raise ValueError("ORB descriptors and points differ in number")
        return ModeReference(str(doc["source"]), int(doc["unix_ms"]), int(doc["frames"]),
                             float(doc["brightness"]), float(doc["contrast"]), float(doc["entropy_bits"]),
                             float(doc["chroma"]), _grid(doc["cells"]), _grid(doc["cell_std"]),
                             Corners(points, descriptors.reshape(-1, 32).copy(), int(orb["width"]),
                                     int(orb["height"])))


def _grid_json(grid: np.ndarray, digits: int) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else round(float(v), digits) for v in row] for row in grid]


def _grid(rows: Any) -> np.ndarray:
    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], np.float32)
    if grid.shape != (GRID_ROWS, GRID_COLS):
        raise ValueError(f"cell grids must be {GRID_ROWS}x{GRID_COLS}")
    return grid


@dataclass(frozen=True)
class TamperReference:
    modes: dict[str, ModeReference]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "modes": {m: r.to_json() for m, r in sorted(self.modes.items())}}

    def with_mode(self, mode: str, ref: ModeReference) -> TamperReference:
        return TamperReference({**self.modes, mode: ref})

    def describe(self) -> str:
        if not self.modes:
            return "no reference"
        return "; ".join(f"{m} ({r.source}): {len(r.corners)} static corners, {r.static_cells} of "
                         f"{GRID_ROWS * GRID_COLS} cells" for m, r in sorted(self.modes.items()))


def mode_of(measures: FrameMeasures, night_max_chroma: float) -> str:
    """``night`` when the image is monochrome (the camera switched to infrared), else ``day``."""
    return "night" if measures.chroma <= night_max_chroma else "day"


def learn_from_images(images: Sequence[np.ndarray], person_boxes: Sequence[np.ndarray | None] | None = None,
                      *, source: str, night_max_chroma: float) -> tuple[str, ModeReference]:
    """(mode, reference) from a few frames of one mode (e.g. the frames `provision check` grabs)."""
    boxes = list(person_boxes) if person_boxes is not None else [None] * len(images)
    pairs = [measure_and_detect(im, b) for im, b in zip(images, boxes, strict=True)]
    modes = [mode_of(m, night_max_chroma) for m, _ in pairs]
    mode = max(MODES, key=modes.count)
    return mode, learn_mode_reference([m for m, _ in pairs], [c for _, c in pairs],
                                      [0 if b is None else len(b) for b in boxes], source=source)


def learn_mode_reference(measures: Sequence[FrameMeasures], corners: Sequence[Corners],
                         persons: Sequence[int] | None = None, *, source: str) -> ModeReference:
    """A reference from the measures and corners of a few samples of one mode.

    The reference corners are those of the sample with the fewest persons in view that are found
    again in most other samples. Raises :class:`ReferenceError` when the view has too little
    structure to be a reference (a covered lens, a blank wall): better no reference than one
    that hides a tamper.
    """
    if not measures or len(measures) != len(corners):
        raise ReferenceError("no frames to learn a tamper reference from")
    persons = list(persons) if persons is not None else [0] * len(measures)
    order = sorted(range(len(measures)), key=lambda i: persons[i])
    ref_corners = corners[order[0]]
    if len(measures) > 1 and len(ref_corners):
        ref_corners = _static_corners(ref_corners, [corners[i] for i in order[1:]])
    stack = np.stack([m.cell_sharpness for m in measures]).astype(np.float64)
    stds = np.stack([m.cell_std for m in measures])
    finite = np.isfinite(stack)          # NaN: a person was in the cell
    n = finite.sum(axis=0)
    mean = np.where(finite, stack, 0.0).sum(axis=0) / np.maximum(n, 1)
    spread = np.sqrt(np.where(finite, (stack - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n, 1))
    steady = (n >= max(1, len(measures) // 2)) & (spread <= STATIC_CELL_CV * np.maximum(mean, 1e-9))
    textured = (np.median(stds, axis=0) >= TEXTURED_CELL_STD) & (mean >= TEXTURED_CELL_SHARPNESS)
    cells = np.where(steady & textured, mean, np.nan).astype(np.float32)
    cell_std = np.where(steady & textured, np.median(stds, axis=0), np.nan).astype(np.float32)
    ref = ModeReference(source, int(time.time() * 1000), len(measures),
                        float(np.mean([m.brightness for m in measures])), float(np.mean([m.contrast for m in measures])),
                        float(np.mean([m.entropy_bits for m in measures])), float(np.mean([m.chroma for m in measures])),
                        cells, cell_std, ref_corners)
    if len(ref.corners) < MIN_STATIC_CORNERS or ref.static_cells < MIN_STATIC_CELLS:
        raise ReferenceError(f"the view has too little structure for a tamper reference ({len(ref.corners)} static "
                             f"corners, {ref.static_cells} textured cells; need {MIN_STATIC_CORNERS} and "
                             f"{MIN_STATIC_CELLS}): is the lens covered or dirty, or the camera pointing at a blank "
                             "surface? (fix: clean, uncover or aim the camera, then run the check again)")
    return ref


def _static_corners(reference: Corners, others: list[Corners]) -> Corners:
    """Keeps the reference corners found again, at the same place, in most of ``others``."""
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    found = np.zeros(len(reference), np.int32)
    counted = 0
    for other in others:
        if len(other) == 0:
            counted += 1
            continue
        counted += 1
        for m in matcher.match(reference.descriptors, other.descriptors):
            if np.linalg.norm(reference.points[m.queryIdx] - other.points[m.trainIdx]) <= STATIC_CORNER_TOLERANCE:
                found[m.queryIdx] += 1
    keep = found >= max(1, int(np.ceil(STATIC_CORNER_SHARE * counted)))
    return Corners(reference.points[keep], reference.descriptors[keep], reference.width, reference.height)


# -- file -------------------------------------------------------------------------------


def save_reference(path: str | Path, reference: TamperReference) -> None:
    """Atomically writes the reference (0600: it describes the view, only the pixel process reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(reference.to_json(), sort_keys=True, separators=(",", ":")).encode("ascii")
    atomic_write(path, data, path.parent, mode=0o600)


def load_reference(path: str | Path) -> TamperReference | None:
    """The stored reference, or None when there is none yet; a broken file raises naming the fix."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReferenceError(f"{path}: cannot read the tamper reference: {exc} "
                             "(fix: run `appliance provision check` again to record a new one)") from None
    try:
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION}")
        modes = {m: ModeReference.from_json(r) for m, r in doc["modes"].items() if m in MODES}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ReferenceError(f"{path}: not a valid tamper reference ({exc}) "
                             "(fix: run `appliance provision check` again to record a new one)") from None
    return TamperReference(modes)
