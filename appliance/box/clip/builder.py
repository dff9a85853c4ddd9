"""Trigger + ring frames → Clip: a WebM/VP8 video encoded and verified entirely in RAM.

OpenCV's VideoWriter only writes to a path and picks the container from the file name. The
path we give it is a ``.webm``-named symlink, in a RAM-backed directory, to
``/proc/self/fd/<n>`` of an anonymous ``os.memfd_create`` file: the encoder's output lives in
anonymous memory, the directory entry holds only the link text (no pixels), and the link is
useless to any other process (``self`` resolves to the *reader's* own fd table). After
encoding, the same link is opened with VideoCapture to hash every *decoded* frame (the station
re-decodes and compares, pinpointing an altered frame); then the bytes are read back from the
memfd, the link is removed and the memfd closed. Spec: docs/clip.md.

Masks: frames from the ring are already masked (the runtime masks before the ring); when a
MaskSet is passed it is applied again here — defence in depth, about 0.1 ms per frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from appliance.box.clip.bystanders import RedactionPlan, SeenPersons, describe, pixelate, plan_redaction
from appliance.box.config import RedactionConfig
from appliance.box.policy.masks import MaskSet
from appliance.common.errors import ApplianceError
from appliance.common.video import open_vp8_writer
from appliance.contracts.types import Clip, Frame, RedactedVideo, Trigger

log = logging.getLogger(__name__)

CONTENT_TYPE = "video/webm"
TRACKS_WINDOW_KEY = "window"
#: Candidate RAM-backed directories for the encoder's symlink, in order of preference.
RAM_DIR_CANDIDATES = ("/dev/shm", "/run/user/{uid}", "/run")
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MIN_FPS, MAX_FPS = 0.5, 60.0


class ClipError(ApplianceError):
    """A clip could not be built (no frames for the window, encoder unavailable, …)."""


# ---------------------------------------------------------------------------------------
# RAM directory


def _mount_fstype(path: str) -> str | None:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount_point = fields[4].replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, right.split()[0]
    except OSError:
        return None
    return best_type


def is_ram_dir(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK) and _mount_fstype(path) in RAM_FILESYSTEMS


def find_ram_dir() -> str:
    """The first writable tmpfs/ramfs directory among :data:`RAM_DIR_CANDIDATES`."""
    for candidate in RAM_DIR_CANDIDATES:
        path = candidate.format(uid=os.getuid())
        if is_ram_dir(path):
            return path
    raise ClipError("no writable RAM-backed directory for the clip encoder "
                    f"(tried {', '.join(RAM_DIR_CANDIDATES)}; fix: mount a tmpfs at /dev/shm)")


# ---------------------------------------------------------------------------------------
# In-memory encoding


class _MemoryWebM:
    """A memfd with a ``.webm``-named symlink to it; removes both on exit."""

    def __init__(self, ram_dir: str):
        self.fd = os.memfd_create("appliance-clip", os.MFD_CLOEXEC)
        self.link = os.path.join(ram_dir, f"appliance-clip-{os.getpid()}-{secrets.token_hex(8)}.webm")
        try:
            os.symlink(f"/proc/self/fd/{self.fd}", self.link)
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> _MemoryWebM:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)

    def read_all(self) -> bytes:
        size = os.fstat(self.fd).st_size
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(self.fd, min(size - offset, 1 << 24), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)


def decoded_frame_sha256(image: np.ndarray) -> str:
    """The per-frame hash of docs/envelope.md: SHA-256 of uint8 BGR C-order pixel bytes."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def decode_frame_hashes(video: bytes) -> list[str]:
    """Re-decodes WebM bytes (in RAM) and hashes every frame, as the station does."""
    ram_dir = find_ram_dir()
    with _MemoryWebM(ram_dir) as mem:
        view = memoryview(video)
        while view:
            view = view[os.write(mem.fd, view):]
        return _hash_decoded(mem.link)


def decode_frames(video: bytes) -> list[np.ndarray]:
    """Decodes WebM bytes (in RAM) into BGR frames — for tests and the station's viewer."""
    with _MemoryWebM(find_ram_dir()) as mem:
        view = memoryview(video)
        while view:
            view = view[os.write(mem.fd, view):]
        cap = cv2.VideoCapture(mem.link, cv2.CAP_FFMPEG)
        try:
            frames: list[np.ndarray] = []
            while True:
                ok, image = cap.read()
                if not ok:
                    return frames
                frames.append(image)
        finally:
            cap.release()


def _hash_decoded(path: str) -> list[str]:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise ClipError("the encoded clip cannot be re-opened for hashing")
        hashes: list[str] = []
        while True:
            ok, image = cap.read()
            if not ok:
                return hashes
            hashes.append(decoded_frame_sha256(image))
    finally:
        cap.release()


# ---------------------------------------------------------------------------------------
# Clip


def _json_ready(value: Any) -> Any:
    """Numpy arrays/scalars → lists/numbers, tuples → lists, mapping keys → str."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"clip tracks must be JSON-serialisable, got {type(value).__name__}")


def _container_fps(times: Sequence[float], nominal: float | None) -> float:
    """The frame rate written into the container: the frames' measured rate when there are
    two or more (so playback runs at real speed even when the camera delivered fewer frames
    than the ring's maximum), else the nominal one."""
    if len(times) >= 2 and times[-1] > times[0]:
        fps = (len(times) - 1) / (times[-1] - times[0])
    elif nominal and nominal > 0:
        fps = nominal
    else:
        fps = 10.0
    return round(min(max(fps, MIN_FPS), MAX_FPS), 3)


def build_clip(trigger: Trigger, frames: Sequence[Frame], tracks: Mapping[str, Any],
               model_sha256: str, masks: MaskSet | None = None, fps: float | None = None, *,
               ram_dir: str | None = None, redaction: RedactionConfig | None = None,
               seen: Sequence[SeenPersons] = ()) -> Clip:
    """Encodes the frames inside ``trigger``'s window into an in-memory WebM/VP8 clip.

    frames: ring frames in capture order (may reach beyond the window; those are dropped,
    and a window that reaches past the ring's edges gives a shorter clip — the covered span
    is recorded in ``clip.tracks["window"]``). tracks: JSON-ready skeleton data, copied into
    the clip with the window record added. fps: the nominal rate, used only for a
    single-frame clip (otherwise the frames' measured rate). redaction: also encode the
    ``redacted`` rendition (``clip.redacted``), with every person in ``seen`` who is not in the
    trigger's event pixelated (appliance/box/clip/bystanders.py); both renditions are encoded
    at once, frame by frame, each into its own memfd. Raises :class:`ClipError` when no
    frame lies inside the window.
    """
    if not frames:
        raise ClipError(f"no frames for the {trigger.event.pattern.value} clip window "
                        f"[{trigger.window_start_t:.3f}, {trigger.window_end_t:.3f}] s: the ring buffer is empty")
    eps = 1e-6
    inside = sorted((f for f in frames if trigger.window_start_t - eps <= f.t <= trigger.window_end_t + eps),
                    key=lambda f: f.t)
    if not inside:
        raise ClipError(
            f"no frames inside the clip window [{trigger.window_start_t:.3f}, {trigger.window_end_t:.3f}] s: "
            f"the ring holds [{min(f.t for f in frames):.3f}, {max(f.t for f in frames):.3f}] s")
    # One frame per timestamp (a duplicate would make the frame hashes ambiguous).
    unique: list[Frame] = []
    for f in inside:
        if unique and f.t - unique[-1].t <= eps:
            continue
        unique.append(f)
    inside = unique

    height, width = inside[0].image.shape[:2]
    if width % 2 or height % 2:
        # VP8 stores 4:2:0 chroma; odd sizes are padded by the encoder and decode differently.
        width, height = width - width % 2, height - height % 2
    times = [f.t for f in inside]
    container_fps = _container_fps(times, fps)
    plan = None
    if redaction is not None:
        plan = plan_redaction(times, seen, trigger.event.track_ids, redaction, (width, height))

    ram_dir = ram_dir or find_ram_dir()
    if not is_ram_dir(ram_dir):
        raise ClipError(f"{ram_dir} is not a writable RAM-backed (tmpfs) directory (fix: use /dev/shm)")
    resized, renditions = _encode(inside, (width, height), container_fps, masks, ram_dir, plan, redaction)
    video, frame_sha256 = renditions[0]
    redacted = None
    if plan is not None and redaction is not None:
        red_video, red_sha256 = renditions[1]
        if len(red_sha256) != len(inside):
            raise ClipError(f"the encoder wrote {len(red_sha256)} redacted frames for {len(inside)} inputs")
        redacted = RedactedVideo(red_video, tuple(red_sha256), plan.pixelated_tracks,
                                 {**describe(redaction), "untracked_boxes": plan.untracked_boxes})

    if len(frame_sha256) != len(inside):
        raise ClipError(f"the encoder wrote {len(frame_sha256)} frames for {len(inside)} inputs")

    # Completeness: the ring holds frames at up to ``fps``; allow one frame period of slack.
    period = 1.0 / (fps if fps and fps > 0 else container_fps)
    covered = (times[0], times[-1])
    window_record = {
        "requested_s": [round(trigger.window_start_t, 3), round(trigger.window_end_t, 3)],
        "covered_s": [round(covered[0], 3), round(covered[1], 3)],
        "missing_before_s": round(max(0.0, covered[0] - trigger.window_start_t), 3),
        "missing_after_s": round(max(0.0, trigger.window_end_t - covered[1]), 3),
        "complete": covered[0] <= trigger.window_start_t + period + eps
                    and covered[1] >= trigger.window_end_t - period - eps,
        "frames": len(inside),
        "resized_frames": resized,
    }
    if not window_record["complete"]:
        log.warning("clip for %s covers %.2f..%.2f s of the requested %.2f..%.2f s",
                    trigger.event.pattern.value, covered[0], covered[1],
                    trigger.window_start_t, trigger.window_end_t)
    clip_tracks = _json_ready(dict(tracks))
    clip_tracks[TRACKS_WINDOW_KEY] = window_record
    return Clip(
        trigger=trigger,
        video=video,
        content_type=CONTENT_TYPE,
        width=width,
        height=height,
        fps=container_fps,
        frame_times=tuple(times),
        frame_wall=tuple(f.wall for f in inside),
        frame_sha256=tuple(frame_sha256),
        tracks=clip_tracks,
        model_sha256=model_sha256,
        involved_boxes=plan.involved if plan is not None else {},
        redacted=redacted,
    )


def _encode(inside: Sequence[Frame], size: tuple[int, int], fps: float, masks: MaskSet | None, ram_dir: str,
            plan: RedactionPlan | None, redaction: RedactionConfig | None) -> tuple[int, list[tuple[bytes, list[str]]]]:
    """Encodes the full rendition (and, with a plan, the redacted one) frame by frame; returns
    ``(resized frames, [(video, decoded frame hashes), ...])`` in that order. Each video lives in
    its own memfd (nothing on disk); no frame is held beyond the one being written."""
    width, height = size
    with contextlib.ExitStack() as stack:
        mems = [stack.enter_context(_MemoryWebM(ram_dir)) for _ in range(1 if plan is None else 2)]
        writers = [open_vp8_writer(m.link, fps, (width, height), backend=cv2.CAP_FFMPEG) for m in mems]
        resized = 0
        try:
            if not all(w.isOpened() for w in writers):
                raise ClipError("OpenCV cannot open a VP8/WebM writer (fix: install an opencv build with FFmpeg)")
            for i, f in enumerate(inside):
                image = f.image
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                    raise ClipError(f"frame {f.index}: expected uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
                if image.shape[:2] != (height, width):
                    if image.shape[:2] == inside[0].image.shape[:2]:
                        image = image[:height, :width]          # crop the odd row/column
                    else:
                        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                        resized += 1
                if masks:
                    image = masks.apply(image)
                image = np.ascontiguousarray(image)
                writers[0].write(image)
                if plan is not None and redaction is not None:
                    # Masks again after the mosaic: a block straddling a mask's edge averages the
                    # visible pixels next to it and would paint that colour into the masked area.
                    redacted = pixelate(image, *plan.frame(i), redaction)
                    writers[1].write(masks.apply_inplace(redacted) if masks else redacted)
        finally:
            for w in writers:
                w.release()
        # Hash what the decoder returns (as the station will), then take the bytes out of RAM.
        return resized, [(m.read_all(), _hash_decoded(m.link)) for m in mems]
