"""Durable file operations shared by the spool, the station store, the audit log and retention.

A write or delete that must survive a power cut needs the data fsynced *and* the directory
entry fsynced; these two helpers are the only places that know how.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Makes a directory's entries (created, renamed, unlinked names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, tmp_dir: Path, mode: int = 0o640) -> None:
    """tmp file in ``tmp_dir`` (same filesystem), fsync, rename onto ``path``, fsync the directory.

    Readers see either the old file or the whole new one, never a torn write. The default mode
    0640 lets the uplink unit (another user in the shared group) read spooled envelopes.
    """
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)
