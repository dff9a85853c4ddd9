"""The camera password, kept out of the config (docs/provisioning.md, "Camera credentials").

``appliance.toml`` (and its ``.bak``) is world-readable and the uplink process reads it, so it
must hold no secret. The RTSP URL there names the user only (``rtsp://viewer@192.0.2.10/...``);
the password lives in ``camera.password_file`` (default ``<state>/pixel/camera-password``),
0600 and owned by the pixel process's user, and is put into the URL only when the stream is
opened. ``provision init --camera URL`` splits a URL given with a password.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import quote, unquote

from appliance.common.errors import InputError

#: scheme://user:password@host... (the password may hold anything but '@' and '/').
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<user>[^/:@]*):(?P<password>[^/@]*)@(?P<rest>.*)$")


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None)."""
    m = _USERINFO.match(url)
    if m is None:
        return url, None
    return f"{m['scheme']}://{m['user']}@{m['rest']}", unquote(m["password"])


def with_password(url: str, password: str) -> str:
    """The URL with ``password`` put into its user info (which must name the user)."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        raise InputError(f"camera.source {url!r}: name the camera user in the URL (rtsp://USER@HOST/...) "
                         "when camera.password_file is set")
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


def read_password(path: str | Path) -> str:
    """The password from a file only its owner may read (0600 or stricter)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InputError(f"camera.password_file {path}: cannot read it: {exc.strerror or exc} (fix: "
                         "'appliance provision init --camera rtsp://USER:PASSWORD@HOST/...' writes it)") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise InputError(f"camera.password_file {path}: mode {mode:04o} lets others read the camera password "
                             f"(fix: chmod 600 {path})")
        text = f.read().decode("utf-8").rstrip("\r\n")
    if not text:
        raise InputError(f"camera.password_file {path}: empty")
    return text


def write_password(path: str | Path, password: str, *, owner: tuple[int, int] | None = None) -> Path:
    """Writes the password 0600 (atomically), handing it to ``owner`` (uid, gid) if given."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(password.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    return path


def redact_passwords(text: str) -> str:
    """Any ``scheme://user:password@`` in ``text`` with the password dropped (for a .bak copy)."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://[^/:@\s\"']*):[^/@\s\"']*@", r"\1@", text)
