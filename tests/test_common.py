"""appliance.common: the one durable writer and the one URL redactor."""

from __future__ import annotations

import os
import stat

import pytest

from appliance.common import durable
from appliance.common.durable import atomic_write
from appliance.common.urls import redact_url


def test_atomic_write_replaces_durably(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new" * 100_000)
    assert target.read_bytes() == b"new" * 100_000
    assert len(synced) == 2                       # the file, then its directory
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_removes_its_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_removes_its_temporary_file_when_the_rename_fails(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keeps the directory non-empty")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "d", b"cannot replace a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_atomic_write_without_replace_refuses_an_existing_file(tmp_path):
    target = tmp_path / "key"
    atomic_write(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_atomic_write_exact_mode_ignores_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "pub", b"x", mode=0o644, exact_mode=True)
        atomic_write(tmp_path / "umasked", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pub").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "umasked").stat().st_mode) == 0o600


@pytest.mark.parametrize(("url", "hidden", "shown_with_user"), [
    ("rtsp://user:secret@cam/stream", "rtsp://***@cam/stream", "rtsp://user:***@cam/stream"),
    # '@' in the password: the userinfo ends at the LAST '@' of the authority
    ("rtsp://admin:p@ss@w0rd@192.0.2.10:554/s1", "rtsp://***@192.0.2.10:554/s1", "rtsp://admin:***@192.0.2.10:554/s1"),
    # ':' in the password
    ("rtsp://admin:pa:ss:wd@cam:554/live", "rtsp://***@cam:554/live", "rtsp://admin:***@cam:554/live"),
    # percent-encoded '@', ':' and '/' in the password (and in the user name, which is kept as written)
    ("rtsp://ad%40min:p%40ss%3Aw%2Fd@cam/live", "rtsp://***@cam/live", "rtsp://ad%40min:***@cam/live"),
    # unencoded '/', '?' or '#' in the password cut the authority short: redact up to the last '@'
    ("rtsp://admin:pa/ss@cam/live", "rtsp://***@cam/live", "rtsp://***@cam/live"),
    ("rtsp://admin:pa#ss@cam/live", "rtsp://***@cam/live", "rtsp://***@cam/live"),
    # a user name alone may be a token
    ("rtsp://0123456789abcdef@cam/live", "rtsp://***@cam/live", "rtsp://***@cam/live"),
    ("rtsp://admin:secret@[2001:db8::5]:554/live", "rtsp://***@[2001:db8::5]:554/live",
     "rtsp://admin:***@[2001:db8::5]:554/live"),
    # nothing to hide
    ("rtsp://cam:554/live@main", "rtsp://cam:554/live@main", "rtsp://cam:554/live@main"),
    ("/dev/video0", "/dev/video0", "/dev/video0"),
    ("samples/demo_skeleton.mp4", "samples/demo_skeleton.mp4", "samples/demo_skeleton.mp4"),
])
def test_redact_url_never_leaks_a_password(url, hidden, shown_with_user):
    assert redact_url(url) == hidden
    assert redact_url(url, keep_username=True) == shown_with_user
    for secret in ("secret", "p@ss", "w0rd", "pa:ss", "p%40ss", "pa/ss", "pa#ss", "0123456789abcdef"):
        if secret in url:
            assert secret not in redact_url(url) and secret not in redact_url(url, keep_username=True)
