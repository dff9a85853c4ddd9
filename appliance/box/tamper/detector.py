"""Camera tamper detection: conditions per sample, a state machine per kind, day/night references.

    ring frame (+ person boxes) ──every 1/tamper.fps s──► measure_frame, detect_corners
        ──► conditions against the current mode's reference ──► TamperStateMachine per kind
        ──► TamperEvent (raised / cleared): audit record and health statement, never pixels

Kinds, checked in this order; the first that holds is the sample's condition (a covered
lens also loses its edges and corners: that is a cover, not also a defocus and a move):

    blinded    saturated pixels >= saturated_fraction, or a bright image without contrast
    covered    dark and without contrast, or histogram entropy < min_entropy_bits, or (partial
               cover) >= covered_fraction of the reference's textured cells turned flat
    defocused  median sharpness of the static cells (persons masked) / reference < defocus_ratio
    moved      RANSAC homography of ORB matches: the view shifted by > max_shift, or fewer than
               min_inlier_ratio of the reference's static corners still match
    frozen     (independent of the others) the sample is identical to the previous one

A condition becomes a tamper when it has held for ``persist_s`` and is cleared when it has
been gone for ``clear_s`` (:class:`TamperStateMachine`). References are kept per lighting
mode (day = colour, night = monochrome infrared); a mode without one learns it after
``relearn_s`` seconds without any sign of tamper (docs/tamper.md).
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from appliance.box.config import TamperConfig
from appliance.box.tamper.measure import (
    CELL_H,
    CELL_W,
    GRID_COLS,
    GRID_ROWS,
    Corners,
    FrameMeasures,
    ViewMatch,
    match_view,
    measure_and_detect,
    visible_corners,
)
from appliance.box.tamper.reference import (
    MIN_STATIC_CELLS,
    MIN_STATIC_CORNERS,
    MODES,
    ModeReference,
    ReferenceError,
    TamperReference,
    learn_mode_reference,
    mode_of,
)

log = logging.getLogger(__name__)


class TamperKind(enum.StrEnum):
    BLINDED = "blinded"
    COVERED = "covered"
    DEFOCUSED = "defocused"
    MOVED = "moved"
    FROZEN = "frozen"


#: A cell counts as covered when its grey-level spread fell below this share of the reference's
#: (a cloth or hand over the lens is flat; its sensor noise can still look "sharp") ...
COVER_CELL_STD_SHARE = 0.25
#: ... and below this absolute spread.
COVER_CELL_STD = 6.0
#: The shift is trusted only with this many RANSAC inliers.
MIN_RELIABLE_INLIERS = 15
#: Cells with at least this grey-level spread take part in the frozen check.
FROZEN_CELL_STD = 2.0
#: Samples in a row of the other lighting mode before the detector switches references.
MODE_SWITCH_SAMPLES = 3
#: Samples a runtime reference is learnt from (spread over relearn_s).
LEARN_SAMPLES = 10


@dataclass(frozen=True)
class TamperEvent:
    """A tamper raised or cleared. Numbers only: never pixels, boxes or persons."""

    kind: TamperKind
    state: str                  # "raised" | "cleared"
    t: float                    # stream time of the sample that decided it
    wall: float                 # Unix time of that sample
    since_t: float              # stream time the condition began (raised) or ended (cleared)
    mode: str                   # "day" | "night"
    measures: dict[str, float]  # the sample's figures (docs/tamper.md)

    def fields(self) -> dict[str, Any]:
        """The ``camera.tamper`` audit record's fields (docs/audit-log.md §4)."""
        from appliance.contracts.audit.canonical import utc_iso

        return {"kind": self.kind.value, "state": self.state, "time": utc_iso(self.wall),
                "stream_t": round(self.t, 3), "since_stream_t": round(self.since_t, 3), "mode": self.mode,
                "measures": self.measures}


class KindState(enum.Enum):
    OK = "ok"
    PENDING = "pending"         # the condition holds, not yet for persist_s
    TAMPERED = "tampered"
    CLEARING = "clearing"       # tampered, the condition has been gone for less than clear_s


class TamperStateMachine:
    """One kind's persistence: OK → PENDING → (persist_s) TAMPERED → CLEARING → (clear_s) OK.

    A gap between samples longer than ``persist_s`` (camera reconnecting) restarts a pending
    condition: persistence must be observed, not assumed across the gap.
    """

    def __init__(self, kind: TamperKind, persist_s: float, clear_s: float):
        self.kind = kind
        self.persist_s = persist_s
        self.clear_s = clear_s
        self.state = KindState.OK
        self.since_t = 0.0                     # start of the current PENDING / CLEARING phase
        self.raised_t: float | None = None
        self.phase_start = 0.0                 # after a transition: when its condition began / ended
        self._last_t: float | None = None

    def step(self, active: bool, t: float) -> str | None:
        """Feeds one sample; returns "raised" or "cleared" on a transition, else None."""
        gap = self._last_t is not None and t - self._last_t > self.persist_s
        self._last_t = t
        s = self.state
        if s is KindState.OK:
            if active:
                self.state, self.since_t = KindState.PENDING, t
            return None
        if s is KindState.PENDING:
            if not active:
                self.state = KindState.OK
            elif gap:
                self.since_t = t
            elif t - self.since_t >= self.persist_s:
                self.state, self.raised_t, self.phase_start = KindState.TAMPERED, t, self.since_t
                return "raised"
            return None
        if s is KindState.TAMPERED:
            if not active:
                self.state, self.since_t = KindState.CLEARING, t
            return None
        # CLEARING
        if active:
            self.state = KindState.TAMPERED
        elif gap:
            self.since_t = t
        elif t - self.since_t >= self.clear_s:
            self.phase_start = self.since_t
            self.state, self.raised_t = KindState.OK, None
            return "cleared"
        return None

    @property
    def tampered(self) -> bool:
        return self.state in (KindState.TAMPERED, KindState.CLEARING)


@dataclass(frozen=True)
class SampleResult:
    """What one sample showed (for eval and `analyze`)."""

    t: float
    mode: str
    condition: TamperKind | None   # the first of blinded/covered/defocused/moved that holds
    frozen: bool
    measures: dict[str, float]


class TamperDetector:
    """The box's tamper stage. Feed it ring frames with :meth:`update` at about ``cfg.fps``.

    ``reference`` is the provisioned one (or None: every mode is then learnt at run time).
    ``on_reference(mode, ref)`` is called when a mode's reference is learnt (audit it).
    """

    def __init__(self, cfg: TamperConfig, reference: TamperReference | None = None, *,
                 on_reference: Callable[[str, ModeReference], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.reference = reference or TamperReference({})
        self.on_reference = on_reference
        self._clock = clock
        self.machines = {k: TamperStateMachine(k, cfg.persist_s, cfg.clear_s) for k in TamperKind}
        self.mode: str | None = None
        self._mode_votes = 0
        self._prev_thumb: np.ndarray | None = None
        self._last_sample_t: float | None = None
        self._learning: collections.deque[tuple[float, FrameMeasures, Corners, int]] = collections.deque()
        self._clean_since: float | None = None
        self._raised_wall: dict[TamperKind, float] = {}
        self.samples = 0
        self.last: SampleResult | None = None

    # -- the period the caller keeps -----------------------------------------------------

    @property
    def period_s(self) -> float:
        return 1.0 / self.cfg.fps

    def due(self, t: float) -> bool:
        """True when a sample at stream time ``t`` is due."""
        last = self._last_sample_t
        # A stream clock that went backwards (a restarted source) must not stop the checks.
        return last is None or t < last or t - last >= self.period_s * 0.999

    # -- one sample ---------------------------------------------------------------------

    def update(self, image: np.ndarray, t: float, wall: float | None = None,
               person_boxes: np.ndarray | None = None) -> list[TamperEvent]:
        """One sample: ``image`` uint8[H, W, 3] (a ring frame), ``person_boxes`` float[N, 4]."""
        wall = self._clock() if wall is None else wall
        self._last_sample_t = t
        self.samples += 1
        m, corners = measure_and_detect(image, person_boxes)
        mode = self._track_mode(m)
        ref = self.reference.modes.get(mode)
        view = None
        if ref is not None and len(ref.corners) >= MIN_STATIC_CORNERS:
            visible = visible_corners(ref.corners, person_boxes, image.shape[1], image.shape[0])
            view = match_view(visible, corners) if len(visible) >= MIN_STATIC_CORNERS else None
        frozen = self._frozen(m)
        condition, measures = self._condition(m, ref, view)
        measures["frame_diff"] = -1.0 if frozen is None else round(frozen, 3)
        # A covered or blinded view is trivially identical from frame to frame: that is its
        # own tamper, not also a frozen stream.
        is_frozen = frozen is not None and frozen <= self.cfg.frozen_max_diff \
            and condition not in (TamperKind.COVERED, TamperKind.BLINDED)
        self.last = SampleResult(t, mode, condition, is_frozen, measures)
        events = []
        for kind, machine in self.machines.items():
            active = is_frozen if kind is TamperKind.FROZEN else condition is kind
            transition = machine.step(active, t)
            if transition is not None:
                if transition == "raised":
                    self._raised_wall[kind] = wall
                else:
                    self._raised_wall.pop(kind, None)
                events.append(TamperEvent(kind, transition, t, wall, machine.phase_start, mode, dict(measures)))
        self._maintain_reference(mode, ref, m, corners, person_boxes, condition is None and not is_frozen, t)
        return events

    def _track_mode(self, m: FrameMeasures) -> str:
        seen = mode_of(m, self.cfg.night_max_chroma)
        if m.contrast < self.cfg.min_contrast and self.mode is not None:
            # A flat image (covered, blinded) is colourless whatever the light: no vote.
            self._mode_votes = 0
            return self.mode
        if self.mode is None:
            self.mode = seen
        elif seen != self.mode:
            self._mode_votes += 1
            if self._mode_votes >= MODE_SWITCH_SAMPLES:
                log.info("tamper: camera switched to its %s mode", seen)
                self.mode, self._mode_votes = seen, 0
                self._learning.clear()
                self._clean_since = None
        else:
            self._mode_votes = 0
        return self.mode

    def _frozen(self, m: FrameMeasures) -> float | None:
        """Mean grey-level change since the previous sample over the cells with texture now: a
        flat part of the view (a partial cover, a white wall) must not dilute a live scene's
        noise into "identical". None when nothing has texture (that is a cover, not a freeze)."""
        prev, self._prev_thumb = self._prev_thumb, m.thumb
        textured = m.cell_std >= FROZEN_CELL_STD
        if prev is None or not textured.any():
            return None
        diff = cv2.absdiff(m.thumb, prev).reshape(GRID_ROWS, CELL_H, GRID_COLS, CELL_W).mean(axis=(1, 3))
        return float(diff[textured].mean())

    def _condition(self, m: FrameMeasures, ref: ModeReference | None,
                   view: ViewMatch | None) -> tuple[TamperKind | None, dict[str, float]]:
        c = self.cfg
        measures: dict[str, float] = {
            "brightness": round(m.brightness, 1), "contrast": round(m.contrast, 1),
            "entropy_bits": round(m.entropy_bits, 2), "saturated": round(m.saturated, 3),
            "chroma": round(m.chroma, 1)}
        blinded = m.saturated >= c.saturated_fraction or (m.brightness > 255 - c.dark_brightness
                                                          and m.contrast < c.min_contrast)
        covered = (m.brightness < c.dark_brightness and m.contrast < c.min_contrast) \
            or m.entropy_bits < c.min_entropy_bits
        defocused = moved = False
        if ref is not None:
            static = np.isfinite(ref.cells) & np.isfinite(m.cell_sharpness)
            if static.sum() >= max(3, MIN_STATIC_CELLS // 2):
                ratio = m.cell_sharpness[static] / ref.cells[static]
                cell_std = m.cell_std[static]
                flat = (cell_std < COVER_CELL_STD_SHARE * ref.cell_std[static]) & (cell_std < COVER_CELL_STD)
                measures["sharpness_ratio"] = round(float(np.median(ratio)), 3)
                measures["covered_share"] = round(float(flat.mean()), 3)
                measures["static_cells"] = float(static.sum())
                covered = covered or flat.mean() >= c.covered_fraction
                defocused = measures["sharpness_ratio"] < c.defocus_ratio
            if view is not None:
                measures["inlier_ratio"] = round(view.inlier_ratio, 3)
                measures["inliers"] = float(view.inliers)
                reliable = view.inliers >= MIN_RELIABLE_INLIERS
                measures["shift"] = round(view.shift, 4) if reliable else -1.0
                measures["rotation_deg"] = round(view.rotation_deg, 2) if reliable else 0.0
                # The shift is precise whenever enough corners agree; the inlier ratio only
                # says the view is lost (it swings with exposure and passers-by).
                moved = not reliable or view.inlier_ratio < c.min_inlier_ratio or view.shift > c.max_shift \
                    or abs(view.rotation_deg) > c.max_rotation_deg
        for kind, holds in ((TamperKind.BLINDED, blinded), (TamperKind.COVERED, covered),
                            (TamperKind.DEFOCUSED, defocused), (TamperKind.MOVED, moved)):
            if holds:
                return kind, measures
        return None, measures

    # -- references: long-term adaptation and learning a missing mode ------------------

    def _maintain_reference(self, mode: str, ref: ModeReference | None, m: FrameMeasures, corners: Corners,
                            person_boxes: np.ndarray | None, clean: bool, t: float) -> None:
        untampered = clean and not any(sm.state is not KindState.OK for sm in self.machines.values())
        if not untampered:
            self._learning.clear()
            self._clean_since = None
            return
        if ref is not None:
            # Long-term reference: follows slow change (dusk, seasons, dirt building up over
            # weeks) with time constant reference_tau_s, never while anything looks wrong.
            alpha = min(1.0, self.period_s / self.cfg.reference_tau_s)
            ok = np.isfinite(ref.cells) & np.isfinite(m.cell_sharpness)
            cells, stds = ref.cells.copy(), ref.cell_std.copy()
            cells[ok] += alpha * (m.cell_sharpness[ok] - cells[ok])
            stds[ok] += alpha * (m.cell_std[ok] - stds[ok])
            self.reference = self.reference.with_mode(mode, ref.with_cells(cells, stds))
            return
        if self._clean_since is None:
            self._clean_since = t
        self._learning.append((t, m, corners, 0 if person_boxes is None else len(person_boxes)))
        if t - self._clean_since < self.cfg.relearn_s:
            # Keep LEARN_SAMPLES spread over the window: drop every other one when full.
            if len(self._learning) > 2 * LEARN_SAMPLES:
                self._learning = collections.deque(list(self._learning)[::2])
            return
        samples = list(self._learning)
        step = max(1, len(samples) // LEARN_SAMPLES)
        picked = samples[::step][-LEARN_SAMPLES:]
        try:
            learnt = learn_mode_reference([s[1] for s in picked], [s[2] for s in picked], [s[3] for s in picked],
                                          source="learned")
        except ReferenceError as exc:
            log.warning("tamper: cannot learn the %s reference yet: %s", mode, exc)
            self._learning.clear()
            self._clean_since = None
            return
        self.reference = self.reference.with_mode(mode, learnt)
        self._learning.clear()
        self._clean_since = None
        log.info("tamper: learnt the %s reference (%d static corners, %d cells)", mode, len(learnt.corners),
                 learnt.static_cells)
        if self.on_reference:
            self.on_reference(mode, learnt)

    # -- what the health statement carries -----------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``tamper`` object of the health statement (docs/wire-protocol.md)."""
        active = sorted(k.value for k, sm in self.machines.items() if sm.tampered)
        refs = {m: (self.reference.modes[m].source if m in self.reference.modes else "none") for m in MODES}
        return {"state": "tampered" if active else "ok", "kinds": active,
                "since": {k.value: round(w, 3) for k, w in sorted(self._raised_wall.items())},
                "mode": self.mode or "unknown", "reference": refs}
