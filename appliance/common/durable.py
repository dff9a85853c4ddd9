"""The one durable writer, shared by keys, config, drop-ins, health, spool, station store and audit log.

A write or delete that must survive a power cut needs the data fsynced *and* the directory
entry fsynced; :func:`atomic_write` and :func:`fsync_dir` are the only places that know how.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

_serial = itertools.count()


def fsync_dir(path: Path) -> None:
    """Makes a directory's entries (created, renamed, unlinked names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, tmp_dir: Path | None = None, mode: int = 0o640, *,
                 exact_mode: bool = False, replace: bool = True) -> None:
    """Writes ``data`` to a temporary file in ``tmp_dir`` (default: beside ``path``, same
    filesystem), fsyncs it, renames it onto ``path`` and fsyncs the directory.

    Readers see either the old file or the whole new one, never a torn write. ``mode`` is the
    creation mode (the umask applies; the default 0640 lets the uplink unit, another user in the
    shared group, read spooled envelopes); ``exact_mode`` sets it regardless of the umask.
    ``replace=False`` refuses an existing ``path`` (FileExistsError), atomically. The temporary
    file is removed when anything fails.
    """
    path = Path(path)
    tmp_dir = path.parent if tmp_dir is None else tmp_dir
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{next(_serial)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            if exact_mode:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)       # fails if path exists, and never replaces it
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
