"""Frame sources: a video file, an RTSP/HTTP stream or a local camera device.

A source yields ``(index, t, wall, image)`` tuples. ``t`` is monotonic: for a file it is the
presentation time (so offline analysis is reproducible and independent of CPU speed); for a
live source it is ``time.monotonic()`` at decode. A live source that drops is reopened with
exponential back-off; the generator keeps going until ``stop`` is set, so a lost camera never
ends the daemon. Frames are downscaled to ``max_width`` here, before anything else sees them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from appliance.common.errors import InputError
from appliance.common.urls import redact_url

log = logging.getLogger(__name__)


@dataclass
class SourceHealth:
    """What the daemon reports about its camera (STATUS=, heartbeats, `provision check`)."""

    connected: bool = False
    reconnects: int = 0
    frames: int = 0
    last_frame_wall: float = 0.0
    last_error: str = ""


def classify_source(source: str) -> str:
    """'stream' for URLs, 'device' for /dev/video* or a bare index, else 'file'."""
    if "://" in source:
        return "stream"
    if source.isdigit() or source.startswith("/dev/video"):
        return "device"
    return "file"


def _cv_target(source: str) -> str | int:
    return int(source) if source.isdigit() else source


def downscale(image: np.ndarray, max_width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if w <= max_width:
        return image
    new_h = round(h * max_width / w)
    return cv2.resize(image, (max_width, new_h), interpolation=cv2.INTER_AREA)


def probe_video(path: str | Path) -> tuple[int, int, float, int]:
    """(width, height, fps, frame count) of a readable video file, else InputError."""
    cap = _open_file(str(path))
    try:
        ok, image = cap.read()
        if not ok or image is None:
            raise InputError(f"{path}: no decodable video frames")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return image.shape[1], image.shape[0], fps, count
    finally:
        cap.release()


def _open_file(path: str) -> cv2.VideoCapture:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise InputError(f"{path}: not a readable file")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"{path}: not a video OpenCV can decode")
    return cap


class FileSource:
    """Frames of a video file, timed by presentation timestamps."""

    def __init__(self, path: str, *, max_width: int = 960, loop: bool = False, realtime: bool = False):
        self.path = path
        self.max_width = max_width
        self.loop = loop
        self.realtime = realtime
        self.health = SourceHealth()
        cap = _open_file(path)   # fail early with a one-line error
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not (1.0 <= self.fps <= 240.0):
            self.fps = 25.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()

    def frames(self, stop: threading.Event | None = None) -> Iterator[tuple[int, float, float, np.ndarray]]:
        index = 0
        t_offset = 0.0
        wall0 = time.time()
        mono0 = time.monotonic()
        while True:
            cap = _open_file(self.path)
            self.health.connected = True
            local = 0
            last_t = t_offset
            try:
                while stop is None or not stop.is_set():
                    ok, image = cap.read()
                    if not ok or image is None:
                        break
                    # Index-based time: container PTS are unreliable in some re-encoded clips,
                    # and the analysis only needs a steady clock.
                    t = t_offset + local / self.fps
                    local += 1
                    last_t = t
                    if self.realtime:
                        delay = mono0 + t - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    self.health.frames += 1
                    self.health.last_frame_wall = wall0 + t
                    yield index, t, wall0 + t, downscale(image, self.max_width)
                    index += 1
            finally:
                cap.release()
            if local == 0 and index == 0:
                raise InputError(f"{self.path}: no decodable video frames")
            if not self.loop or (stop is not None and stop.is_set()) or local == 0:
                self.health.connected = False
                return
            t_offset = last_t + 1.0 / self.fps


class LiveSource:
    """An RTSP/HTTP stream or a local device, reopened with exponential back-off when it drops."""

    def __init__(self, source: str, *, max_width: int = 960, reconnect_initial_s: float = 0.5,
                 reconnect_max_s: float = 30.0, read_timeout_s: float = 5.0):
        self.source = source
        self.max_width = max_width
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.read_timeout_s = read_timeout_s
        self.health = SourceHealth()

    def _open(self) -> cv2.VideoCapture | None:
        target = _cv_target(self.source)
        params = []
        if isinstance(target, str):
            ms = int(self.read_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def frames(self, stop: threading.Event | None = None) -> Iterator[tuple[int, float, float, np.ndarray]]:
        stop = stop or threading.Event()
        delay = self.reconnect_initial_s
        index = 0
        while not stop.is_set():
            cap = self._open()
            if cap is None:
                self.health.connected = False
                self.health.last_error = f"cannot open {redact_url(self.source)}"
                log.warning("camera %s unavailable; retrying in %.1f s", redact_url(self.source), delay)
                stop.wait(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                self.health.reconnects += 1
                continue
            self.health.connected = True
            log.info("camera %s connected", redact_url(self.source))
            try:
                while not stop.is_set():
                    ok, image = cap.read()
                    if not ok or image is None:
                        self.health.last_error = "stream ended or read failed"
                        log.warning("camera %s dropped", redact_url(self.source))
                        break
                    delay = self.reconnect_initial_s   # a good frame resets the back-off
                    now_wall = time.time()
                    self.health.frames += 1
                    self.health.last_frame_wall = now_wall
                    yield index, time.monotonic(), now_wall, downscale(image, self.max_width)
                    index += 1
            finally:
                cap.release()
                self.health.connected = False
            if not stop.is_set():
                stop.wait(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                self.health.reconnects += 1


def camera_target(camera_cfg) -> str:
    """``camera.source`` with the password from ``camera.password_file`` put in (never logged:
    use :func:`appliance.common.urls.redact_url`)."""
    from appliance.box.capture.credentials import read_password, with_password

    if not getattr(camera_cfg, "password_file", ""):
        return camera_cfg.source
    return with_password(camera_cfg.source, read_password(camera_cfg.password_file))


def open_source(camera_cfg, max_width: int) -> FileSource | LiveSource:
    """Builds the source a validated :class:`appliance.box.config.CameraConfig` describes."""
    kind = classify_source(camera_cfg.source)
    if kind == "file":
        return FileSource(camera_cfg.source, max_width=max_width, loop=camera_cfg.loop,
                          realtime=camera_cfg.realtime)
    return LiveSource(camera_target(camera_cfg), max_width=max_width,
                      reconnect_initial_s=camera_cfg.reconnect_initial_s,
                      reconnect_max_s=camera_cfg.reconnect_max_s)
