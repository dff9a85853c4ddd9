"""The live feed: watches the station's store and pushes alarms to every open console page.

One asyncio task polls ``PRAGMA data_version`` of the read-only station connection (a few
microseconds; it changes only when the receiver commits) every ``poll_s`` and, on a change,
reads the alarms updated since. New alarms and changes (the clip arrived) are put into each
subscriber's bounded queue; a subscriber that cannot keep up is dropped (its browser
reconnects and reloads), so one slow page never holds up the others or grows memory.
The same task raises the console's own alarms, of the device kind: an enabled device gone stale,
and an enabled device whose signed health statement reports its camera tampered (covered,
blinded, defocused, moved, frozen; docs/tamper.md) — once per new set of tamper kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from appliance.station.console.station_view import StationView
from appliance.station.console.store import CONSOLE_ALARM_LABEL, ConsoleStore
from appliance.station.store import StoredAlarm

log = logging.getLogger("appliance.console.feed")

QUEUE_MAX = 256
MAX_SUBSCRIBERS = 1000
STALE_CHECK_S = 2.0
#: Alarms whose last change is older than this at start-up are not pushed again (pages load them).
LOOKBACK_MS = 5000


def alarm_summary(alarm: StoredAlarm) -> dict[str, Any]:
    """What the list and the push carry: no skeletons (the page fetches them when opened)."""
    body = alarm.body
    profile = body.get("profile", {})
    return {"alarm_id": alarm.alarm_id, "kind": "behaviour", "device_id": alarm.device_id,
            "pattern": alarm.pattern, "created_unix_ms": alarm.created_unix_ms,
            "received_unix_ms": alarm.received_unix_ms, "confidence": body.get("confidence"),
            "profile": profile.get("id", ""), "has_skeletons": alarm.has_message,
            "clip": bool(alarm.clip_id)}


def console_alarm_pattern(alarm: dict[str, Any]) -> str:
    """What the list shows for one of the console's own alarms: "device stale",
    "camera tamper: covered, moved"."""
    label = CONSOLE_ALARM_LABEL.get(alarm["kind"], alarm["kind"])
    kinds = alarm.get("body", {}).get("kinds")
    return f"{label}: {', '.join(kinds)}" if kinds else label


class AlarmFeed:
    def __init__(self, view: StationView, store: ConsoleStore, *, poll_s: float = 0.05,
                 on_stale: Callable[[str, dict[str, Any]], None] | None = None,
                 on_tamper: Callable[[str, dict[str, Any]], None] | None = None):
        self.view = view
        self.store = store
        self.poll_s = poll_s
        self.on_stale = on_stale
        self.on_tamper = on_tamper
        self._tampered: dict[str, tuple[str, ...]] = {}   # device -> the kinds its open alarm is about
        self._subscribers: set[asyncio.Queue] = set()
        self._known: dict[str, tuple[int, bool, bool]] = {}
        self._version: tuple[int, int] = (-1, -1)
        self._stale: set[str] = set()
        self._task: asyncio.Task | None = None
        self.dropped = 0

    # -- subscribers ----------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue | None:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        q: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(q)
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)   # tells the stream to end; the browser reconnects

    # -- polling --------------------------------------------------------------------------

    def start(self) -> None:
        for a in self.view.alarms():
            self._known[a.alarm_id] = (a.updated_unix_ms, a.has_message, bool(a.clip_id))
        # A device already stale at start-up raises its alarm, unless one is still open for it.
        workflows = self.store.workflows()
        open_alarms = [c for c in self.store.console_alarms()
                       if workflows.get(c["alarm_id"]) is None or workflows[c["alarm_id"]].state != "closed"]
        self._stale = {c["device_id"] for c in open_alarms if c["kind"] == "device_stale"}
        self._tampered = {c["device_id"]: tuple(c["body"].get("kinds", ())) for c in open_alarms
                          if c["kind"] == "device_tamper"}
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alarm-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    async def _run(self) -> None:
        next_stale = 0.0
        while True:
            try:
                self.check_alarms()
                if time.monotonic() >= next_stale:
                    next_stale = time.monotonic() + STALE_CHECK_S
                    self.check_stale()
                    self.check_tamper()
            except Exception:
                log.exception("alarm feed check failed")
            await asyncio.sleep(self.poll_s)

    def check_alarms(self) -> int:
        version = self.view.data_version()
        if version == self._version:
            return 0
        self._version = version
        newest = max((k[0] for k in self._known.values()), default=0)
        pushed = 0
        for a in self.view.alarms(since_unix_ms=max(0, newest - LOOKBACK_MS)):
            state = (a.updated_unix_ms, a.has_message, bool(a.clip_id))
            before = self._known.get(a.alarm_id)
            if before == state:
                continue
            self._known[a.alarm_id] = state
            self.publish({"type": "alarm" if before is None else "alarm-update", **alarm_summary(a)})
            pushed += 1
        return pushed

    def check_stale(self) -> None:
        devices = self.view.devices()
        now_stale = {d.device_id for d in devices if d.stale}
        for d in devices:
            if d.device_id in now_stale and d.device_id not in self._stale:
                body = {"device_id": d.device_id, "last_seen_unix_ms": d.last_seen_unix_ms, "silent_s": d.silent_s,
                        "stale_after_s": self.view.stale_after_s}
                alarm_id = self.store.add_console_alarm("device_stale", d.device_id, body)
                if self.on_stale is not None:
                    self.on_stale(alarm_id, body)
                self.publish({"type": "alarm", "alarm_id": alarm_id, "kind": "device_stale",
                              "device_id": d.device_id, "pattern": "device stale",
                              "created_unix_ms": int(time.time() * 1000), **body})
        self._stale = now_stale

    def check_tamper(self) -> None:
        """A console alarm when an enabled device's signed camera tamper kinds change to a set
        not alarmed yet (a covered camera that is also turned raises again; a cleared one
        lets the next tamper raise)."""
        now: dict[str, tuple[str, ...]] = {}
        for d in self.view.devices():
            tamper = d.tamper
            if not d.enabled or tamper is None or not tamper.tampered:
                continue
            now[d.device_id] = tamper.kinds
            if set(tamper.kinds) <= set(self._tampered.get(d.device_id, ())):
                continue
            body = {"device_id": d.device_id, "kinds": list(tamper.kinds),
                    "since": {k: round(v, 3) for k, v in sorted(tamper.since.items())}, "mode": tamper.mode}
            alarm_id = self.store.add_console_alarm("device_tamper", d.device_id, body)
            if self.on_tamper is not None:
                self.on_tamper(alarm_id, body)
            self.publish({"type": "alarm", "alarm_id": alarm_id, "kind": "device_tamper", "device_id": d.device_id,
                          "pattern": console_alarm_pattern({"kind": "device_tamper", "body": body}),
                          "created_unix_ms": int(time.time() * 1000), **body})
        # Kinds already alarmed stay remembered while they last, so a flapping report does
        # not raise again; a device whose camera is fine again is forgotten.
        self._tampered = {dev: tuple(sorted(set(kinds) | set(self._tampered.get(dev, ()))))
                          for dev, kinds in now.items()}
