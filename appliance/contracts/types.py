"""Typed boundaries between the pipeline stages.

Every value that crosses from one stage to the next is one of these frozen dataclasses.
A stage imports the types it consumes and produces from here and nothing from another
stage's internals, so the data flow (see ``appliance/box/runtime.py``) reads as:

    Frame ─pose─► Detections ─tracking─► TrackedFrame ─behaviour─► Event
          ─policy─► Decision/Trigger ─clip─► Clip ─seal─► (envelope bytes, see docs/envelope.md)

Array shapes are part of the contract and are documented on each field. Coordinates are
frame pixels of the *analysed* image (the image in the ring buffer), x to the right and
y downwards. Times are seconds: ``t`` is the stream's monotonic clock (for a file, the
presentation time; for a live camera, ``time.monotonic()`` at capture), ``wall`` is Unix
time, kept only for humans and for the envelope header.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: COCO-17 keypoint order used by every pose model, tracker and detector here.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

#: Limb pairs for drawing skeletons (COCO convention).
SKELETON_EDGES: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
    (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded camera frame, held only in RAM.

    image: ``uint8[H, W, 3]`` BGR. When taken from the ring buffer it is a *copy*
    owned by the caller (the ring slot is overwritten later).
    """

    index: int          # capture order, 0-based, gap-free per source session
    t: float            # stream-monotonic seconds
    wall: float         # Unix seconds at capture
    image: np.ndarray


@dataclass(frozen=True, eq=False)
class Detections:
    """Persons found by the pose model in one frame.

    boxes:     ``float32[N, 4]``   x1, y1, x2, y2 in frame pixels
    scores:    ``float32[N]``      person confidence 0..1
    keypoints: ``float32[N, 17, 3]`` x, y (frame pixels), confidence 0..1, COCO-17 order
    """

    frame_index: int
    t: float
    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty(frame_index: int, t: float) -> Detections:
        return Detections(
            frame_index, t,
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
            np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
        )


@dataclass(frozen=True, eq=False)
class TrackedPerson:
    """One person in one analysed frame, with a stable track id.

    box: ``float32[4]``, keypoints: ``float32[17, 3]`` as in :class:`Detections`.
    """

    track_id: int
    box: np.ndarray
    score: float
    keypoints: np.ndarray
    age: int            # analysed frames since the track was born
    lost_frames: int    # 0 when matched in this frame (only matched persons are emitted)


@dataclass(frozen=True)
class TrackedFrame:
    """The tracker's output for one analysed frame: only the persons seen in it."""

    frame_index: int
    t: float
    persons: tuple[TrackedPerson, ...]
    frame_size: tuple[int, int]  # (width, height) of the analysed image


class Pattern(str, enum.Enum):
    """Behaviour patterns. The *violent* ones indicate a crime (§44(4) PolG BW). ``weapon`` (a
    dangerous object held in a hand, seen in several consecutive frames) is a single person's
    pattern and not violent: it may indicate a crime where a law says so (a weapons-ban zone),
    and a profile states its position on it (docs/legal-profiles.md)."""

    STRIKE = "strike"
    KICK = "kick"
    PUSH = "push"
    STRANGLE = "strangle"
    FIGHT = "fight"
    FALL = "fall"
    LYING = "lying"
    WEAPON = "weapon"

    @property
    def violent(self) -> bool:
        return self in VIOLENT_PATTERNS


VIOLENT_PATTERNS = frozenset({Pattern.STRIKE, Pattern.KICK, Pattern.PUSH, Pattern.STRANGLE, Pattern.FIGHT})
#: Patterns that may indicate a crime: the violent ones, and a weapon in hand where a law makes
#: carrying one an offence. A profile of purpose "crime" may permit only these (never fall/lying).
CRIME_PATTERNS = VIOLENT_PATTERNS | {Pattern.WEAPON}


@dataclass(frozen=True)
class HeldObject:
    """A dangerous object the object stage found near one person's wrist in one analysed frame.

    box: ``float32[4]`` x1, y1, x2, y2 in frame pixels (of the object, not the person).
    """

    track_id: int
    label: str                  # COCO class name, e.g. "knife", "baseball bat"
    score: float                # detector score 0..1
    hand: str                   # "left" or "right": the nearer wrist
    wrist_distance: float       # wrist to the object's box, torso lengths (0 = wrist inside the box)
    box: np.ndarray


@dataclass(frozen=True)
class HandScan:
    """What the object stage looked at in one analysed frame: only derived numbers leave the
    pixel process (labels, scores, boxes), never the crops.

    scanned: the tracks whose crops went through the detector in this frame; a track not
    scanned has no evidence either way (the detector runs on a budget, docs/behaviour.md).
    """

    frame_index: int
    t: float
    scanned: tuple[int, ...]
    objects: tuple[HeldObject, ...]


@dataclass(frozen=True)
class Event:
    """A behaviour pattern observed over a time span.

    explanation: the quantities that fired, with units in the key names
    (e.g. ``{"wrist_speed_torso_per_s": 4.2, "wrist_to_head_torso": 0.3}``);
    JSON-serialisable scalars or short lists only.
    """

    pattern: Pattern
    start_t: float
    end_t: float
    track_ids: tuple[int, ...]
    confidence: float
    explanation: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern.value,
            "start_s": round(self.start_t, 3),
            "end_s": round(self.end_t, 3),
            "tracks": list(self.track_ids),
            "confidence": round(float(self.confidence), 3),
            "explanation": dict(self.explanation),
        }


@dataclass(frozen=True)
class ProfileRef:
    """Which legal profile judged an event: travels with every trigger and envelope."""

    id: str
    version: str
    sha256: str   # hex digest of the profile file's bytes


@dataclass(frozen=True)
class Decision:
    """The policy gate's verdict on one event. Not-permitted decisions carry no window."""

    event: Event
    permitted: bool
    profile: ProfileRef
    rule: str     # the profile rule that decided, e.g. "patterns.strike" or "not-listed"
    reason: str   # human-readable why (e.g. "confidence 0.41 < min 0.6")


@dataclass(frozen=True)
class Trigger:
    """A permitted event and the clip window it asks for (stream seconds, inclusive)."""

    decision: Decision
    window_start_t: float
    window_end_t: float

    @property
    def event(self) -> Event:
        return self.decision.event


@dataclass(frozen=True)
class RedactedVideo:
    """The clip's ``redacted`` rendition (docs/envelope.md, v2): the same frames as
    ``Clip.video`` with every bystander (a person not in the event's tracks) pixelated.

    video: WebM/VP8 bytes, never written to disk in clear.
    frame_sha256: hex SHA-256 of each decoded frame of *this* video.
    pixelated_tracks: track ids (str) pixelated in at least one frame.
    redaction: how (``{"method": "mosaic", "block_px", "margin", "hold_s", "covers"}``).
    """

    video: bytes
    frame_sha256: tuple[str, ...]
    pixelated_tracks: tuple[str, ...]
    redaction: Mapping[str, Any]


@dataclass(frozen=True)
class Clip:
    """A triggered clip, built in RAM with privacy masks burned in.

    video: the encoded container bytes (WebM/VP8), never written to disk in clear; bystanders
    are NOT pixelated in it (the v2 envelope's ``full`` rendition, or v1's only one).
    frame_times: stream seconds of each encoded frame, ``len == frame_count``.
    frame_sha256: hex SHA-256 of each *decoded* frame's pixels (uint8 BGR, C order), so
    the station can re-decode and pinpoint an altered frame.
    tracks: skeleton tracks inside the window, JSON-serialisable.
    involved_boxes: ``{track_id: ((frame_index, x, y, w, h), ...)}`` of the event's tracks, in
    video pixels (integers): the console outlines them; nothing is burned in for them.
    redacted: the bystander-pixelated rendition, when the box seals version 2.
    """

    trigger: Trigger
    video: bytes
    content_type: str
    width: int
    height: int
    fps: float
    frame_times: tuple[float, ...]
    frame_wall: tuple[float, ...]
    frame_sha256: tuple[str, ...]
    tracks: Mapping[str, Any]
    model_sha256: str
    involved_boxes: Mapping[str, tuple[tuple[int, int, int, int, int], ...]] = field(default_factory=dict)
    redacted: RedactedVideo | None = None
