"""systemd drop-ins that confine each unit's network to its one peer.

The pixel unit may reach only the camera, the uplink unit only the station. The base units
say ``IPAddressDeny=any``; provisioning writes ``IPAddressAllow=`` for the peer's addresses
(or, for a camera attached to the box, no network at all plus a ``DeviceAllow=`` exception).

Host names are resolved *now*, on site, and the addresses written down: at run time the
units cannot reach a DNS server (that would be one more peer), and an address that changes
later is something the technician should notice, not something that silently widens access.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance.common.durable import atomic_write
from appliance.common.errors import InputError
from appliance.common.urls import redact_url
from appliance.contracts.protocol import endpoint_host

PIXEL_UNIT = "appliance-pixel.service"
UPLINK_UNIT = "appliance-uplink.service"
DROPIN_NAME = {PIXEL_UNIT: "10-camera.conf", UPLINK_UNIT: "10-station.conf"}


@dataclass(frozen=True)
class DropIn:
    unit: str
    name: str
    text: str

    def path(self, unit_dir: Path) -> Path:
        return Path(unit_dir) / f"{self.unit}.d" / self.name


def _addresses(host: str, resolve) -> list[str]:
    host = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = resolve(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"cannot resolve {host!r}: {exc} (fix: use the device's IP address, "
                         "or run provisioning where the name resolves)") from None
    addrs = sorted({info[4][0] for info in infos})
    if not addrs:
        raise InputError(f"{host!r} resolves to no address (fix: use the device's IP address)")
    return addrs


def camera_kind(source: str) -> str:
    """'device' (/dev/videoN or an index), 'network' (a URL) or 'file' (a local video)."""
    if re.fullmatch(r"\d+", source) or source.startswith("/dev/"):
        return "device"
    if "://" in source:
        return "network"
    return "file"


def camera_dropin(source: str, resolve=socket.getaddrinfo) -> DropIn:
    """The pixel unit's drop-in for a camera source (URL, device or file)."""
    kind = camera_kind(source)
    if kind == "device":
        device = f"/dev/video{source}" if source.isdigit() else source
        text = (
            "# written by `appliance provision network`: camera attached to the box\n"
            "[Service]\n"
            "# no network at all: the pixel process cannot reach anything\n"
            "PrivateNetwork=yes\n"
            "# PrivateDevices=yes would hide the camera; allow exactly this one device instead\n"
            "PrivateDevices=no\n"
            "DevicePolicy=closed\n"
            f"DeviceAllow={device} rw\n"
            "SupplementaryGroups=video\n"
        )
    elif kind == "file":
        text = (
            "# written by `appliance provision network`: camera source is a local file (demo/soak)\n"
            "[Service]\n"
            "PrivateNetwork=yes\n"
        )
    else:
        host = urlsplit(source).hostname
        if not host:
            raise InputError(f"camera.source {redact_url(source, keep_username=True)!r}: no host in the URL "
                             "(fix: e.g. rtsp://192.0.2.10:554/stream1)")
        text = _allow_only("camera", host, _addresses(host, resolve))
    return DropIn(PIXEL_UNIT, DROPIN_NAME[PIXEL_UNIT], text)


def _allow_only(what: str, host: str, addrs) -> str:
    """Drop-in text that denies every address but ``addrs``."""
    return (f"# written by `appliance provision network`: the {what} at {host}\n"
            "[Service]\n"
            "IPAddressDeny=any\n"
            + "".join(f"IPAddressAllow={a}\n" for a in addrs))


def station_dropin(endpoint: str | Sequence[str], resolve=socket.getaddrinfo) -> DropIn:
    """The uplink unit's drop-in for the station's ZeroMQ endpoint(s), e.g. tcp://203.0.113.5:7100
    (every receiver of [station] endpoints is allowed)."""
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    hosts, addrs = [], []
    for e in endpoints:
        host = endpoint_host(e)
        hosts.append(host)
        addrs += [a for a in _addresses(host, resolve) if a not in addrs]
    text = _allow_only("station", ", ".join(hosts), addrs)
    return DropIn(UPLINK_UNIT, DROPIN_NAME[UPLINK_UNIT], text)


def write_dropins(dropins: list[DropIn], unit_dir: Path) -> list[Path]:
    """Writes drop-ins under ``unit_dir`` (normally /etc/systemd/system); returns their paths."""
    written = []
    for d in dropins:
        path = d.path(unit_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, d.text.encode("utf-8"), mode=0o644, exact_mode=True)
        written.append(path)
    return written
