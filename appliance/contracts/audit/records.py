"""Typed helpers that turn pipeline values into the record fields of docs/audit-log.md §4.

They exist so every caller writes the same fields, and so a not-permitted detection can only
ever carry its pattern, time, profile id and rule — nothing that could identify a person.
``audit`` is anything with ``append(kind, **fields)`` (an :class:`AuditLog`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.contracts.audit.canonical import utc_iso
from appliance.contracts.types import Decision, Trigger


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_trigger(audit: Any, trigger: Trigger, *, clip_id: str, envelope_sha256: str,
                   window_wall: tuple[float, float], camera: str | None = None) -> dict[str, Any]:
    """A permitted trigger and the sealed clip it produced. ``window_wall`` is the clip
    window in Unix seconds (first and last frame's wall time)."""
    d = trigger.decision
    fields: dict[str, Any] = {
        "pattern": d.event.pattern.value,
        "window": [round(trigger.window_start_t, 3), round(trigger.window_end_t, 3)],
        "window_start": utc_iso(window_wall[0]), "window_end": utc_iso(window_wall[1]),
        "event": [round(d.event.start_t, 3), round(d.event.end_t, 3)],
        "confidence": round(float(d.event.confidence), 3),
        "profile": d.profile.id, "profile_version": d.profile.version, "profile_sha256": d.profile.sha256,
        "rule": d.rule, "clip_id": clip_id, "envelope_sha256": envelope_sha256,
    }
    if camera is not None:
        fields["camera"] = camera
    return audit.append("trigger.permitted", **fields)


def record_not_permitted(audit: Any, decision: Decision, *, wall: float) -> dict[str, Any]:
    """A detection the profile did not permit: pattern and time only (never tracks, boxes
    or pixels), plus which profile rule refused it."""
    if decision.permitted:
        raise ValueError("record_not_permitted got a permitted decision")
    e = decision.event
    return audit.append("detection.not_permitted", pattern=e.pattern.value, start=round(e.start_t, 3),
                        end=round(e.end_t, 3), time=utc_iso(wall), profile=decision.profile.id,
                        rule=decision.rule)


class HourlyFrameCounter:
    """Counts analysed and discarded frames and writes one ``frames.hourly`` record per UTC
    hour (when the first frame of a later hour arrives, and on :meth:`flush`)."""

    def __init__(self, audit: Any, clock: Callable[[], float] = time.time):
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        self._hour: int | None = None
        self._analysed = 0
        self._discarded = 0

    def add(self, analysed: int = 0, discarded: int = 0) -> None:
        hour = int(self._clock() // 3600)
        with self._lock:
            if self._hour is not None and hour != self._hour:
                self._write()
            self._hour = hour if self._hour is None or hour != self._hour else self._hour
            self._analysed += analysed
            self._discarded += discarded

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        if self._hour is None or (self._analysed == 0 and self._discarded == 0):
            self._hour = None
            return
        self._audit.append("frames.hourly", hour=utc_iso(self._hour * 3600.0),
                           analysed=self._analysed, discarded=self._discarded)
        self._hour, self._analysed, self._discarded = None, 0, 0
