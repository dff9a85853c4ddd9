"""Where things live in the box's state directory: what provisioning, both daemons and the units agree on.

The state directory is split by process so that the systemd units can give each process only
its own secrets (docs/provisioning.md, "Install layout")::

    <state>/pixel/     0700 appliance-pixel   device-signing.key (0600), device-signing.pub,
                                              station-hpke.pub, tamper-reference.json (features
                                              and statistics of the view, never an image;
                                              written by `provision check`)
    <state>/uplink/    0700 appliance-uplink  device-curve.key_secret (0600), device-curve.key,
                                              station-curve.key, station-signing.pub
    <state>/spool/     2770 root:appliance    sealed envelopes (pixel writes, uplink deletes)
    <state>/audit/     2770 root:appliance    audit.jsonl (both append)
    <state>/device.json, enrolment-request.json, station-bundle.json, key-rotations.jsonl,
    provision.jsonl (what provisioning did, including every preview written)
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

PIXEL_USER, UPLINK_USER, SHARED_GROUP = "appliance-pixel", "appliance-uplink", "appliance"


@dataclass(frozen=True)
class DeviceLayout:
    state_dir: Path

    @property
    def pixel_dir(self) -> Path:
        return self.state_dir / "pixel"

    @property
    def uplink_dir(self) -> Path:
        return self.state_dir / "uplink"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit_dir / "audit.jsonl"

    @property
    def camera_password(self) -> Path:
        """The camera password (0600, pixel user): never in the config (camera.password_file)."""
        return self.pixel_dir / "camera-password"

    @property
    def signing_key(self) -> Path:
        return self.pixel_dir / "device-signing.key"

    @property
    def signing_public(self) -> Path:
        return self.pixel_dir / "device-signing.pub"

    curve_name = "device-curve"

    @property
    def curve_public(self) -> Path:
        return self.uplink_dir / f"{self.curve_name}.key"

    @property
    def curve_secret(self) -> Path:
        return self.uplink_dir / f"{self.curve_name}.key_secret"

    @property
    def tamper_reference(self) -> Path:
        """Default of ``[tamper] reference`` (AppConfig.tamper_reference)."""
        return self.pixel_dir / "tamper-reference.json"

    @property
    def station_hpke_public(self) -> Path:
        return self.pixel_dir / "station-hpke.pub"

    @property
    def station_evidence_public(self) -> Path:
        """The station's evidence HPKE public key, when the bundle carries one (envelope v2)."""
        return self.pixel_dir / "station-evidence.pub"

    @property
    def station_curve_public(self) -> Path:
        return self.uplink_dir / "station-curve.key"

    @property
    def station_signing_public(self) -> Path:
        return self.uplink_dir / "station-signing.pub"

    @property
    def device_file(self) -> Path:
        return self.state_dir / "device.json"

    @property
    def request_copy(self) -> Path:
        return self.state_dir / "enrolment-request.json"

    @property
    def bundle_copy(self) -> Path:
        return self.state_dir / "station-bundle.json"

    @property
    def rotations(self) -> Path:
        return self.state_dir / "key-rotations.jsonl"

    @property
    def provision_log(self) -> Path:
        return self.state_dir / "provision.jsonl"

    def make_dirs(self) -> None:
        """Creates the directories with their modes; hands them to the service users if they exist.

        The units' StateDirectory= would fix ownership at start too; doing it here means
        `provision check` and a first start see the same thing.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for d, mode in ((self.pixel_dir, 0o700), (self.uplink_dir, 0o700),
                        (self.spool_dir, 0o2770), (self.audit_dir, 0o2770)):
            d.mkdir(exist_ok=True)
            os.chmod(d, mode)
        for sub in ("tmp", "rejected", "quarantine", "sequence"):
            d = self.spool_dir / sub
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o2770)
        # Both processes append to the audit log: create it group-writable before anyone
        # (e.g. root running `provision preview`) creates it owner-only.
        if not self.audit_log.exists():
            os.close(os.open(self.audit_log, os.O_WRONLY | os.O_CREAT, 0o660))
            os.chmod(self.audit_log, 0o660)
        if os.geteuid() != 0:
            return
        gid = _gid(SHARED_GROUP)
        if gid is not None:
            for d in (self.spool_dir, self.audit_dir, self.audit_log,
                      *(self.spool_dir / s for s in ("tmp", "rejected", "quarantine", "sequence"))):
                os.chown(d, 0, gid)

    def hand_over(self) -> None:
        """As root: gives each process's directory (and keys) to its service user, if it exists."""
        if os.geteuid() != 0:
            return
        gid = _gid(SHARED_GROUP)
        for d, user in ((self.pixel_dir, PIXEL_USER), (self.uplink_dir, UPLINK_USER)):
            uid = _uid(user)
            if uid is None or not d.is_dir():
                continue
            for p in (d, *d.iterdir()):
                os.chown(p, uid, gid if gid is not None else -1)


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
