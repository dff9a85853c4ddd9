"""What the console reads from the station's store: a read-only SQLite connection on the
embedded tier, the shared PostgreSQL database on the scale-out tier (docs/storage.md)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.common.errors import InputError
from appliance.contracts.health import CameraTamper, signed_pixel_tamper
from appliance.station import db
from appliance.station.storage import StorageSettings, open_database, resolve_settings
from appliance.station.storage.blobs import open_blobs
from appliance.station.store import StoredAlarm, alarm_from_row


@dataclass(frozen=True)
class DeviceState:
    device_id: str
    description: str
    enabled: bool
    last_seen_unix_ms: int | None
    silent_s: float | None
    stale: bool
    health: dict[str, Any]

    @property
    def tamper(self) -> CameraTamper | None:
        """The camera tamper state from the box's signed statement (never the uplink's own health)."""
        return signed_pixel_tamper(self.health)

    def panel(self) -> dict[str, Any]:
        """The device panel's fields: optional health fields show as '-' when a box does not send them."""
        h = self.health
        pixel = h.get("pixel") or h.get("pixel_unsigned") or {}
        return {"device_id": self.device_id, "description": self.description, "enabled": self.enabled,
                "last_seen_unix_ms": self.last_seen_unix_ms, "silent_s": self.silent_s, "stale": self.stale,
                "camera": pixel.get("camera", "-"), "analysis_fps": pixel.get("analysis_fps", "-"),
                "spool_depth": h.get("spool_depth", "-"), "alarms_waiting": h.get("spool_alarms", "-"),
                "alarms_sent": pixel.get("alarms_sent", "-"),
                "quarantined": h.get("quarantined", h.get("spool_quarantined", h.get("spool_rejected", "-"))),
                "tamper": self.tamper.describe() if self.tamper else "-",
                "tampered": bool(self.tamper and self.tamper.tampered and self.enabled),
                "pixel_signed": h.get("pixel_signed", False)}


class StationView:
    """The console's view of the station's store; shared by its threads (a lock serialises use)."""

    def __init__(self, station_dir: str | Path, *, stale_after_s: float = 120.0,
                 settings: StorageSettings | None = None):
        self.station_dir = Path(station_dir)
        self.stale_after_s = stale_after_s
        settings = settings or resolve_settings(station_dir)
        # Embedded: read-only (the console never writes the station's database). Scale-out: the
        # database account given in the URL (give the console a read-only role there).
        self._conn: Any = db.connect_readonly(station_dir) if not settings.db else open_database(station_dir, settings)
        self._lock = threading.Lock()
        self._store_url = settings.store
        self._blobs: Any = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._blobs is not None:
                self._blobs.close()

    def read_envelope(self, alarm_id: str) -> bytes | None:
        """The stored envelope (ciphertext) of an alarm's clip, its SHA-256 checked; None if no clip yet.

        Embedded tier: read from ``envelopes/`` (group-readable, docs/console.md); scale-out: the
        object store, with the console's own (read-only) credentials."""
        with self._lock:
            row = self._conn.execute("SELECT c.path, c.envelope_sha256 FROM alarms a JOIN clips c "
                                     "ON c.clip_id = a.clip_id WHERE a.alarm_id=?", (alarm_id,)).fetchone()
        if row is None:
            return None
        location, sha = row[0], row[1]
        if self._store_url:
            with self._lock:
                if self._blobs is None:
                    self._blobs = open_blobs(self.station_dir, self._store_url)
            data = self._blobs.get(location)
        else:
            path = self.station_dir / location
            try:
                data = path.read_bytes()
            except PermissionError:
                raise InputError(f"{path}: the console may not read the station's envelopes (fix: the envelope "
                                 "directories 0750, group appliance-station; docs/console.md)") from None
            except FileNotFoundError:
                raise InputError(f"{path}: the envelope is missing although indexed: storage damaged") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise InputError(f"the envelope of {alarm_id} differs from the index (SHA-256): storage tampered or damaged")
        return data

    def clip_version(self, alarm_id: str) -> int | None:
        """The envelope format version of the alarm's stored clip (from its signed header); None: no clip yet."""
        import json

        with self._lock:
            row = self._conn.execute("SELECT c.header_json FROM alarms a JOIN clips c ON c.clip_id = a.clip_id "
                                     "WHERE a.alarm_id=?", (alarm_id,)).fetchone()
        return None if row is None else int(json.loads(row[0]).get("version", 1))

    def signing_public(self, device_id: str) -> Ed25519PublicKey | None:
        """The device's registered Ed25519 key: disabled devices' clips stay viewable, a revoked
        device's (its key is no longer trusted) are not."""
        with self._lock:
            row = self._conn.execute("SELECT signing_public FROM devices WHERE device_id=? AND enabled >= 0",
                                     (device_id,)).fetchone()
        return None if row is None else Ed25519PublicKey.from_public_bytes(bytes(row[0]))

    def data_version(self) -> tuple[int, int]:
        """Changes whenever an alarm is stored or changed: the feed's cheap change check (an index)."""
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(updated_unix_ms), 0), COUNT(*) FROM alarms").fetchone()
        return int(row[0]), int(row[1])

    def alarms(self, *, since_unix_ms: int | None = None) -> list[StoredAlarm]:
        sql, args = "SELECT * FROM alarms", []
        if since_unix_ms is not None:
            sql, args = sql + " WHERE updated_unix_ms >= ?", [since_unix_ms]
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY received_unix_ms, alarm_id", args).fetchall()
        return [alarm_from_row(r) for r in rows]

    def alarm(self, alarm_id: str) -> StoredAlarm | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM alarms WHERE alarm_id=?", (alarm_id,)).fetchone()
        return None if row is None else alarm_from_row(row)

    def devices(self) -> list[DeviceState]:
        import json

        now = time.time() * 1000
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.device_id, d.description, d.enabled, s.last_seen_unix_ms, s.health_json FROM devices d "
                "LEFT JOIN devices_seen s ON s.device_id = d.device_id ORDER BY d.device_id").fetchall()
        out = []
        for r in rows:
            last = r["last_seen_unix_ms"] or None
            silent = None if last is None else max(0.0, (now - last) / 1000)
            stale = bool(r["enabled"]) and (silent is None or silent > self.stale_after_s)
            out.append(DeviceState(r["device_id"], r["description"], bool(r["enabled"]), last,
                                   None if silent is None else round(silent, 1), stale,
                                   json.loads(r["health_json"] or "{}")))
        return out

    def retention_summary(self) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*), MIN(received_unix_ms), COALESCE(SUM(bytes), 0) FROM clips"
                                     ).fetchone()
        return {"clips": row[0], "oldest_received_unix_ms": row[1], "bytes": row[2]}
