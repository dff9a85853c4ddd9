"""The station's registry of enrolled devices: who may connect (CURVE) and sign (Ed25519).

The provisioning stage's ``appliance station devices add`` is built on :meth:`DeviceRegistry.add_device`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.common.errors import InputError
from appliance.contracts.envelope import DEVICE_ID_RE
from appliance.contracts.keys import fingerprint_bytes, raw_public, signing_public_from_bytes
from appliance.station.storage import StorageSettings, open_database, resolve_settings
from appliance.station.storage.database import Database

#: The ``devices.enabled`` column: 1 enabled, 0 disabled (may be enabled again), -1 revoked
#: (its keys are no longer trusted: only a re-enrolment with new keys brings it back).
STATUS_VALUES = {"enabled": 1, "disabled": 0, "revoked": -1}
_STATUS_NAMES = {v: k for k, v in STATUS_VALUES.items()}


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    signing_public_raw: bytes   # 32 bytes Ed25519
    curve_public: bytes          # Z85, 40 characters
    description: str
    added_unix_ms: int
    enabled: bool
    status: str = "enabled"   # "enabled" | "disabled" | "revoked"

    @property
    def signing_public(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.signing_public_raw)

    @property
    def signing_fingerprint(self) -> str:
        return fingerprint_bytes(self.signing_public_raw)

    @property
    def curve_fingerprint(self) -> str:
        return fingerprint_bytes(zmq.utils.z85.decode(self.curve_public))


def _curve_z85(curve_public: bytes | str) -> bytes:
    key = curve_public.encode("ascii") if isinstance(curve_public, str) else bytes(curve_public)
    key = key.strip()
    if len(key) == 32:  # raw bytes given
        key = zmq.utils.z85.encode(key)
    try:
        if len(key) != 40 or len(zmq.utils.z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError):
        raise InputError("CURVE public key must be 40 Z85 characters (a zmq.auth '.key' file's public-key)") from None
    return key


class DeviceRegistry:
    """Enrolled devices in the station database (:mod:`appliance.station.storage`).

    Cheap to construct on SQLite (one per thread); pass ``database`` to share an open one
    (a PostgreSQL pool serves every thread of a receiver).
    """

    def __init__(self, station_dir: str | Path, *, database: Database | None = None,
                 settings: StorageSettings | None = None):
        self.station_dir = Path(station_dir)
        self._own = database is None
        self._db = database or open_database(self.station_dir, settings or resolve_settings(self.station_dir))

    def close(self) -> None:
        if self._own:
            self._db.close()

    def add_device(self, device_id: str, signing_public: Ed25519PublicKey | bytes,
                   curve_public: bytes | str, *, description: str = "",
                   replace: bool = False) -> DeviceRecord:
        """Enrols a device (or, with ``replace``, re-keys it). Returns the stored record.

        ``signing_public``: Ed25519PublicKey, its 32 raw bytes or PEM; ``curve_public``: Z85.
        """
        if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
            raise InputError(f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
        if not isinstance(signing_public, Ed25519PublicKey):
            signing_public = signing_public_from_bytes(bytes(signing_public))
        raw = raw_public(signing_public)
        curve = _curve_z85(curve_public)
        existing = self.get(device_id, include_disabled=True)
        if existing is not None and not replace:
            raise InputError(f"device {device_id!r} is already enrolled (use replace to re-key it)")
        other = self.by_curve_key(curve, include_disabled=True)
        if other is not None and other.device_id != device_id:
            raise InputError(f"that CURVE key already belongs to device {other.device_id!r}")
        if existing is not None and existing.status == "revoked" and (
                existing.signing_public_raw == raw or existing.curve_public == curve):
            raise InputError(f"device {device_id!r} was revoked: its old keys are never trusted again (fix: "
                             "'appliance provision init --force' on the box for new keys, then enrol it again)")
        self._db.execute(
            "INSERT INTO devices(device_id, signing_public, curve_public, description, added_unix_ms, enabled) "
            "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(device_id) DO UPDATE SET signing_public=excluded.signing_public,"
            " curve_public=excluded.curve_public, description=excluded.description, enabled=1",
            (device_id, raw, curve.decode("ascii"), description, int(time.time() * 1000)))
        record = self.get(device_id)
        assert record is not None
        return record

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        """Disabling keeps the record (old clips stay verifiable) but refuses new connections."""
        self.set_status(device_id, "enabled" if enabled else "disabled")

    def set_status(self, device_id: str, status: str) -> DeviceRecord:
        """``enabled``, ``disabled`` or ``revoked``; a revoked device cannot be enabled again
        (its keys are no longer trusted): it must be re-enrolled with new keys."""
        if status not in STATUS_VALUES:
            raise ValueError(status)
        existing = self.get(device_id, include_disabled=True)
        if existing is None:
            raise InputError(f"no enrolled device {device_id!r} (see 'appliance station devices list')")
        if existing.status == "revoked" and status != "revoked":
            raise InputError(f"device {device_id!r} is revoked: its keys are never trusted again (fix: "
                             "'appliance provision init --force' on the box, then enrol it again)")
        self._db.execute("UPDATE devices SET enabled=? WHERE device_id=?", (STATUS_VALUES[status], device_id))
        record = self.get(device_id, include_disabled=True)
        assert record is not None
        return record

    @staticmethod
    def _record(row) -> DeviceRecord:
        return DeviceRecord(row["device_id"], bytes(row["signing_public"]), row["curve_public"].encode("ascii"),
                            row["description"], row["added_unix_ms"], row["enabled"] == 1,
                            _STATUS_NAMES.get(row["enabled"], "disabled"))

    def get(self, device_id: str, *, include_disabled: bool = False) -> DeviceRecord | None:
        row = self._db.execute("SELECT * FROM devices WHERE device_id=?", (device_id,)).fetchone()
        if row is None or (row["enabled"] != 1 and not include_disabled):
            return None
        return self._record(row)

    def by_curve_key(self, curve_public: bytes | str, *, include_disabled: bool = False) -> DeviceRecord | None:
        key = curve_public.decode("ascii") if isinstance(curve_public, bytes) else curve_public
        row = self._db.execute("SELECT * FROM devices WHERE curve_public=?", (key,)).fetchone()
        if row is None or (row["enabled"] != 1 and not include_disabled):
            return None
        return self._record(row)

    def list_devices(self) -> list[DeviceRecord]:
        return [self._record(r) for r in self._db.execute("SELECT * FROM devices ORDER BY device_id")]

    def signing_public(self, device_id: str) -> Ed25519PublicKey | None:
        """For :func:`appliance.box.seal.verify_envelope`: enabled devices only."""
        record = self.get(device_id)
        return None if record is None else record.signing_public

    def signing_public_any(self, device_id: str) -> Ed25519PublicKey | None:
        """Also disabled devices: their stored clips must stay verifiable at export."""
        record = self.get(device_id, include_disabled=True)
        return None if record is None else record.signing_public


class AllowListProvider:
    """ZAP credentials callback for ``zmq.auth``: enabled devices' CURVE keys only.

    Runs in the authenticator's thread: on SQLite it opens its own short-lived connection per
    call; a thread-safe ``database`` (the receiver's PostgreSQL pool) is shared instead.
    """

    def __init__(self, station_dir: str | Path, database: Database | None = None):
        self.station_dir = Path(station_dir)
        self.database = database if database is not None and database.thread_safe else None

    def callback(self, domain: str, key: bytes) -> bool:
        registry = DeviceRegistry(self.station_dir, database=self.database)
        try:
            return registry.by_curve_key(key) is not None
        finally:
            registry.close()
