"""RingBuffer: the only place raw frames live, preallocated and bounded, in RAM.

Memory is allocated once, as ``uint8[capacity, H, W, 3]``; pushing a frame copies it into the
oldest slot, so the buffer never grows and nothing is ever written to disk. Readers get
*copies* (``Frame.image`` owns its pixels), so a slot can be overwritten while a clip is
being encoded from an earlier read.

Capacity is ``ceil(seconds * max_fps)`` frames. Frames arriving faster than ``max_fps`` are
dropped at the door (the clip frame rate), which is what keeps a 25/30 fps camera inside the
memory budget: 15 s × 12.5 fps × 960×540×3 B ≈ 292 MB.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import numpy as np

from appliance.contracts.types import Frame


class RingBuffer:
    def __init__(self, seconds: float, max_fps: float):
        if seconds <= 0 or max_fps <= 0:
            raise ValueError("seconds and max_fps must be positive")
        self.seconds = seconds
        self.max_fps = max_fps
        self.capacity = max(2, math.ceil(seconds * max_fps))
        self._min_dt = 1.0 / max_fps
        self._lock = threading.Lock()
        self._pixels: np.ndarray | None = None   # uint8[capacity, H, W, 3], allocated on first push
        self._index = np.full(self.capacity, -1, np.int64)
        self._t = np.zeros(self.capacity, np.float64)
        self._wall = np.zeros(self.capacity, np.float64)
        self._count = 0          # frames stored since the last reset (monotonic)
        self._last_t = -math.inf
        self._pinned_from: int | None = None   # oldest sequence number a clip is reading
        self.dropped_pinned = 0  # frames refused because they would overwrite a pinned frame

    # -- writing ------------------------------------------------------------------------

    def push(self, image: np.ndarray, index: int, t: float, wall: float) -> bool:
        """Copies ``image`` (uint8[H, W, 3]) into the oldest slot.

        Returns False when the frame was dropped because it came sooner than 1/max_fps after
        the previous stored frame (a small tolerance keeps 25 fps → 12.5 fps at every other
        frame instead of drifting). A change of frame size resets the buffer: old frames of
        another geometry cannot be part of one clip.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"ring frames must be uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
        with self._lock:
            if t - self._last_t < self._min_dt * 0.9:
                return False
            if self._pinned_from is not None and self._count - self._pinned_from >= self.capacity:
                # A clip is still reading the oldest frames: drop the live frame rather than
                # overwrite evidence mid-encode (with a 15 s ring and a 10 s clip window this
                # needs an encode slower than 5 s).
                self.dropped_pinned += 1
                return False
            if self._pixels is None or self._pixels.shape[1:] != image.shape:
                if self._pinned_from is not None:
                    self.dropped_pinned += 1
                    return False
                self._allocate(image.shape)
            slot = self._count % self.capacity
            np.copyto(self._held_pixels()[slot], image)
            self._index[slot] = index
            self._t[slot] = t
            self._wall[slot] = wall
            self._count += 1
            self._last_t = t
            return True

    def _allocate(self, shape: tuple[int, ...]) -> None:
        # Drop the old array first so peak memory is one buffer, not two.
        self._pixels = None
        self._pixels = np.zeros((self.capacity, *shape), np.uint8)
        self._index[:] = -1
        self._count = 0

    def clear(self) -> None:
        """Zeroes every pixel and forgets all frames (used on shutdown: drop all pixels)."""
        with self._lock:
            if self._pixels is not None:
                self._pixels.fill(0)
            self._index[:] = -1
            self._count = 0
            self._last_t = -math.inf

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    @property
    def nbytes(self) -> int:
        return 0 if self._pixels is None else self._pixels.nbytes

    def _slots_in_order(self) -> range:
        n = min(self._count, self.capacity)
        return range(self._count - n, self._count)

    def _held_pixels(self) -> np.ndarray:
        """The pixel store; only called where a frame is held, so it is allocated."""
        assert self._pixels is not None
        return self._pixels

    def _frame(self, seq: int) -> Frame:
        slot = seq % self.capacity
        return Frame(int(self._index[slot]), float(self._t[slot]), float(self._wall[slot]),
                     self._held_pixels()[slot].copy())

    def latest(self) -> Frame | None:
        with self._lock:
            if self._count == 0:
                return None
            return self._frame(self._count - 1)

    def time_span(self) -> tuple[float, float] | None:
        """(oldest t, newest t) of the frames held, or None when empty."""
        with self._lock:
            if self._count == 0:
                return None
            seqs = self._slots_in_order()
            return float(self._t[seqs[0] % self.capacity]), float(self._t[seqs[-1] % self.capacity])

    def window(self, t_start: float, t_end: float) -> list[Frame]:
        """Copies of the frames with ``t_start <= t <= t_end``, oldest first."""
        with self._lock:
            return [self._frame(s) for s in self._slots_in_order()
                    if t_start <= self._t[s % self.capacity] <= t_end]

    @contextlib.contextmanager
    def pinned_window(self, t_start: float, t_end: float) -> Iterator[list[Frame]]:
        """Zero-copy frames with ``t_start <= t <= t_end``, valid only inside the ``with``.

        The images are read-only views into the ring, so a 10 s clip does not double the
        memory (≈ 190 MB at 960×540); while pinned, :meth:`push` drops live frames instead
        of overwriting one of these. One pin at a time (clips are built one after another).
        """
        with self._lock:
            if self._pinned_from is not None:
                raise RuntimeError("the ring is already pinned")
            seqs = [s for s in self._slots_in_order() if t_start <= self._t[s % self.capacity] <= t_end]
            frames = []
            for s in seqs:
                slot = s % self.capacity
                view = self._held_pixels()[slot].view()
                view.flags.writeable = False
                frames.append(Frame(int(self._index[slot]), float(self._t[slot]), float(self._wall[slot]), view))
            self._pinned_from = seqs[0] if seqs else None
        try:
            yield frames
        finally:
            with self._lock:
                self._pinned_from = None

    def frames(self) -> list[Frame]:
        """Copies of every frame held, oldest first."""
        with self._lock:
            return [self._frame(s) for s in self._slots_in_order()]
