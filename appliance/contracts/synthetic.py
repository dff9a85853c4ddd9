"""Synthetic clips for tests, benchmarks and `provision check`: real WebM, no camera needed.

The frames are generated patterns (no person, no pixels from anywhere), encoded with OpenCV's
VP8 writer into a temporary file that is removed at once; the per-frame hashes are of the
*decoded* frames, exactly as the clip stage computes them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time

import cv2
import numpy as np

from appliance.common.video import open_vp8_writer
from appliance.contracts.types import Clip, Decision, Event, Pattern, ProfileRef, RedactedVideo, Trigger


def encode_webm(frames: list[np.ndarray], fps: float) -> bytes:
    h, w = frames[0].shape[:2]
    fd, path = tempfile.mkstemp(suffix=".webm")
    os.close(fd)
    try:
        writer = open_vp8_writer(path, fps, (w, h))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write VP8 WebM here")
        for f in frames:
            writer.write(f)
        writer.release()
        with open(path, "rb") as webm:
            return webm.read()
    finally:
        os.unlink(path)


def decoded_frame_hashes(webm_path: str) -> list[str]:
    """SHA-256 of each decoded frame (uint8 BGR, C order), as in ``Clip.frame_sha256``."""
    cap = cv2.VideoCapture(webm_path)
    hashes: list[str] = []
    try:
        while len(hashes) < 100_000:  # bound: a clip is seconds long
            ok, frame = cap.read()
            if not ok:
                break
            hashes.append(hashlib.sha256(np.ascontiguousarray(frame, dtype=np.uint8).tobytes()).hexdigest())
    finally:
        cap.release()
    return hashes


def _hashes_of(video: bytes) -> tuple[str, ...]:
    fd, path = tempfile.mkstemp(suffix=".webm")
    try:
        os.write(fd, video)
        os.close(fd)
        return tuple(decoded_frame_hashes(path))
    finally:
        os.unlink(path)


def synthetic_clip(frames: int = 8, width: int = 64, height: int = 48, fps: float = 12.5,
                   video: bytes | None = None, pattern: Pattern = Pattern.STRIKE, seed: int = 0,
                   redacted: bool = False) -> Clip:
    """A :class:`Clip` with a real VP8 WebM (or the given ``video`` bytes, hashes then empty).

    ``redacted``: also a second rendition whose right half is flattened (a stand-in for a
    pixelated bystander), with involved boxes on the left half — for envelope version 2."""
    rng = np.random.default_rng(seed)
    frame_hashes: tuple[str, ...] = ()
    redacted_video: RedactedVideo | None = None
    if video is None:
        images = [np.full((height, width, 3), (i * 20) % 256, np.uint8) for i in range(frames)]
        for img in images:
            img[rng.integers(0, height), :, :] = 255
        video = encode_webm(images, fps)
        frame_hashes = _hashes_of(video)
        frames = len(frame_hashes)
        if redacted:
            flat = [img.copy() for img in images]
            for img in flat:
                img[:, width // 2:] = img[:, width // 2:].mean(axis=(0, 1)).astype(np.uint8)
            red = encode_webm(flat, fps)
            redacted_video = RedactedVideo(red, _hashes_of(red), ("2",),
                                           {"method": "mosaic", "block_px": width // 2, "margin": 0.0,
                                            "hold_s": 0.0, "covers": "synthetic"})
    t0, wall0 = 10.0, time.time()
    times = tuple(t0 + i / fps for i in range(frames))
    profile = ProfileRef("bw-polg-44-4", "1", "ab" * 32)
    event = Event(pattern, t0 + 0.2, t0 + 0.4, (1, 2), 0.9, {"wrist_speed_torso_per_s": 4.2})
    decision = Decision(event, True, profile, f"patterns.{pattern.value}", "confidence 0.90 >= min 0.6")
    trigger = Trigger(decision, t0, times[-1] if times else t0)
    tracks = {"1": [[t, [[1.0, 2.0, 0.9]] * 17] for t in times[:2]]}
    return Clip(trigger=trigger, video=video, content_type="video/webm", width=width, height=height,
                fps=fps, frame_times=times, frame_wall=tuple(wall0 + (t - t0) for t in times),
                frame_sha256=frame_hashes or tuple("00" * 32 for _ in times), tracks=tracks,
                model_sha256="cd" * 32, redacted=redacted_video,
                involved_boxes={"1": tuple((i, 2, 2, width // 3, height - 4) for i in range(frames))}
                if redacted_video else {})
