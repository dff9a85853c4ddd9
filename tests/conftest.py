"""Shared fixtures: paths to the bundled real sample clips, a session-wide pose model, and a
fake systemd notify socket."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CLIP = ROOT / "samples" / "demo_skeleton.mp4"          # Apache-2.0, 2 persons, a push
WALK_CLIP = ROOT / "samples" / "one-by-one-person-detection.mp4"  # CC BY 4.0, ordinary behaviour


@pytest.fixture(scope="session")
def pose_estimator():
    from appliance.box.pose import PoseEstimator
    return PoseEstimator()


@pytest.fixture
def notify_socket():
    """A Unix datagram socket standing in for systemd's notify socket (short path: 108-byte limit)."""
    d = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(d)


def recv_notifications(sock: socket.socket, timeout: float = 0.2) -> list[str]:
    """Every notification that arrives until ``timeout`` passes without one (bounded)."""
    msgs = []
    sock.settimeout(timeout)
    for _ in range(1000):
        try:
            msgs.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            break
    return msgs
