"""The one way to open a VP8 WebM writer, without OpenCV's spurious warning on stderr.

OpenCV's FFmpeg backend checks the fourcc against the WebM muxer's codec-tag table, which is
empty, and prints ``OpenCV: FFMPEG: tag 0x30385056/'VP80' is not supported with codec id 139
and format 'webm / WebM'`` straight to file descriptor 2 (a ``fprintf``, not its logger, so
``cv2.setLogLevel`` cannot silence it), then falls back to tag 0 and writes a correct VP8 WebM.
No fourcc avoids it (``0`` picks a codec WebM refuses). So the writer is opened with fd 2
pointed at an in-memory file for that one call; whatever else was written there meanwhile
(another thread's log line) is passed on to the real stderr, only the two known lines dropped.
"""

from __future__ import annotations

import os
import sys
import threading

import cv2

FOURCC = "VP80"
_KNOWN_NOISE = (b"tag 0x30385056/'VP80' is not supported", b"fallback to use tag 0x00000000")
_lock = threading.Lock()


def open_vp8_writer(path: str, fps: float, size: tuple[int, int], *, backend: int | None = None) -> cv2.VideoWriter:
    """``cv2.VideoWriter(path, [backend,] fourcc VP80, fps, size)``, opened quietly."""
    fourcc = cv2.VideoWriter.fourcc(*FOURCC)
    args = (path, backend, fourcc, fps, size) if backend is not None else (path, fourcc, fps, size)
    with _lock:
        sys.stderr.flush()
        saved = os.dup(2)
        capture = os.memfd_create("appliance-stderr", os.MFD_CLOEXEC)
        try:
            os.dup2(capture, 2)
            try:
                writer = cv2.VideoWriter(*args)
            finally:
                os.dup2(saved, 2)
            size_written = os.lseek(capture, 0, os.SEEK_END)
            text = os.pread(capture, size_written, 0) if size_written else b""
        finally:
            os.close(capture)
            os.close(saved)
    rest = b"".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in _KNOWN_NOISE))
    if rest:
        os.write(2, rest)
    return writer
