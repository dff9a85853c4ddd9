"""Creating a device identity and enrolling it: the small steps ``provision`` builds on.

Also used by tests and benchmarks to stand up a station and devices on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.contracts.curve import generate_curve_keypair, load_curve_keypair
from appliance.contracts.keys import generate_signing_key, load_signing_key
from appliance.station.registry import DeviceRecord, DeviceRegistry


@dataclass(frozen=True)
class DeviceKeyFiles:
    device_id: str
    signing_private: Path
    signing_public: Path
    curve_public: Path
    curve_secret: Path

    def curve_keypair(self) -> tuple[bytes, bytes]:
        return load_curve_keypair(self.curve_secret)

    def signing_key(self):
        return load_signing_key(self.signing_private)


def create_device_keys(directory: str | Path, device_id: str) -> DeviceKeyFiles:
    """Writes ``signing.key`` (0600), ``signing.pub``, ``curve.key`` and ``curve.key_secret`` (0600)."""
    directory = Path(directory)
    generate_signing_key(directory / "signing.key", public_path=directory / "signing.pub")
    pub, sec = generate_curve_keypair(directory, "curve")
    return DeviceKeyFiles(device_id, directory / "signing.key", directory / "signing.pub", pub, sec)


def enrol_device(station_dir: str | Path, keys: DeviceKeyFiles, *, description: str = "") -> DeviceRecord:
    from appliance.contracts.curve import load_curve_public
    from appliance.contracts.keys import load_signing_public_key

    registry = DeviceRegistry(station_dir)
    try:
        return registry.add_device(keys.device_id, load_signing_public_key(keys.signing_public),
                                   load_curve_public(keys.curve_public), description=description)
    finally:
        registry.close()
