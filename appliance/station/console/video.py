"""Disclosure layers 2 and 3 in the console: decrypted video held in memory, never on disk.

- :class:`ClipOpener` reads a stored envelope (ciphertext) and opens one rendition in memory:
  ``redacted`` (bystanders pixelated on the box) with the station's HPKE key, ``full`` only with
  the evidence key a supervisor unwrapped for that one approval (custody.py).
- :class:`VideoVault` holds what was opened: the reveals of layer 2 (bound to the login session
  that gave the reason), a bounded cache of redacted clips, and the layer-3 *grants* (the full
  rendition for the operator whose request was approved, bound to that request, with a TTL).
  Nothing here writes a file; evicting or expiring drops the only reference to the bytes.
- :func:`ranged_response` answers HTTP Range requests from those bytes (Chromium plays and seeks
  a ``<video>`` with them).
"""

from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response

from appliance.common.errors import InputError
from appliance.contracts import envelope as envelope_format
from appliance.contracts.envelope import RENDITION_FULL, RENDITION_REDACTED
from appliance.contracts.keys import HpkePrivateKey, load_hpke_private_key

#: What the browser needs to outline the involved persons (no pixels).
OUTLINE_FIELDS = ("involved_boxes", "frame_times_s", "width", "height", "fps", "pixelated_tracks", "redaction")


class NotPixelated(Exception):
    """The clip has no bystander-pixelated rendition (envelope version 1): layer 2 cannot show it."""


@dataclass
class HeldVideo:
    """One opened rendition, in memory only."""

    alarm_id: str
    rendition: str
    video: bytes
    outlines: dict[str, Any]
    content_type: str = "video/webm"
    user: str = ""                     # layer 3: the operator the grant is for
    request_id: int | None = None      # layer 3: the approved request
    approved_by: str = ""
    created_unix_ms: int = 0
    expires_monotonic: float = 0.0
    views: int = 0

    @property
    def size(self) -> int:
        return len(self.video)

    def expires_unix_ms(self) -> int:
        return int((time.time() + max(0.0, self.expires_monotonic - time.monotonic())) * 1000)


class ClipOpener:
    """Reads a stored clip's envelope and opens one rendition in memory.

    The station's HPKE private key is read from ``station_key_path`` (systemd passes it as a
    credential, docs/console.md) when first needed and kept in memory; it opens only the
    ``redacted`` rendition of a version-2 envelope. The evidence key is never loaded here: it
    comes unwrapped with a supervisor's password and is dropped after one call.
    """

    def __init__(self, view: Any, station_key_path: str | Path):
        self.view = view
        self.station_key_path = Path(station_key_path)
        self._station_key: HpkePrivateKey | None = None
        self._lock = threading.Lock()

    def station_key(self) -> HpkePrivateKey:
        with self._lock:
            if self._station_key is None:
                try:
                    self._station_key = load_hpke_private_key(self.station_key_path)
                except InputError as exc:
                    raise InputError(f"the console cannot read the station's HPKE key: {exc} (fix: give the "
                                     f"console the key as a systemd credential, docs/console.md)") from None
            return self._station_key

    def envelope(self, alarm_id: str) -> bytes:
        data = self.view.read_envelope(alarm_id)
        if data is None:
            raise InputError(f"the clip of {alarm_id} has not arrived yet")
        return data

    def open(self, alarm_id: str, data: bytes, rendition: str, key: HpkePrivateKey | None = None) -> HeldVideo:
        """Verifies the device signature and decrypts ``rendition`` (the evidence ``key`` for ``full``)."""
        if rendition == RENDITION_REDACTED and envelope_format.parse_envelope(data).header.version < 2:
            raise NotPixelated(alarm_id)     # v1's one rendition has no bystander pixelation: not opened
        opened = envelope_format.open_envelope(
            data, key if key is not None else self.station_key(), self.view,
            rendition=RENDITION_FULL if rendition == RENDITION_FULL else None)
        if opened.rendition != rendition:
            raise NotPixelated(alarm_id)
        meta = opened.metadata
        outlines = {k: meta.get(k) for k in OUTLINE_FIELDS}
        return HeldVideo(alarm_id, rendition, opened.video, outlines,
                         content_type=str(meta.get("content_type") or "video/webm"),
                         created_unix_ms=int(time.time() * 1000))


@dataclass
class VideoVault:
    """What the console has opened, in memory, bounded; thread-safe.

    ``reveal_ttl_s``: how long a layer-2 reveal (a reason given in one login session) lets that
    session play the redacted clip. ``grant_ttl_s``: how long an approved full video stays
    playable for its requester. ``cache_bytes``/``grant_bytes`` bound the memory: the oldest
    redacted clip leaves the cache (it is decrypted again when played again), the oldest grant
    is dropped (reported as expired: the supervisor opens it again).
    """

    reveal_ttl_s: float = 1800.0
    grant_ttl_s: float = 1800.0
    cache_bytes: int = 64 * 1024 * 1024
    grant_bytes: int = 128 * 1024 * 1024
    max_reveals: int = 10_000
    _reveals: dict[tuple[str, str], float] = field(default_factory=dict)
    _cache: collections.OrderedDict[str, HeldVideo] = field(default_factory=collections.OrderedDict)
    _grants: collections.OrderedDict[tuple[str, str], HeldVideo] = field(default_factory=collections.OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- layer 2 ---------------------------------------------------------------------------

    def reveal(self, session_id: str, alarm_id: str) -> None:
        with self._lock:
            if len(self._reveals) >= self.max_reveals:
                self._drop_expired_reveals()
            if len(self._reveals) >= self.max_reveals:
                self._reveals.pop(next(iter(self._reveals)))
            self._reveals[(session_id, alarm_id)] = time.monotonic() + self.reveal_ttl_s

    def revealed(self, session_id: str, alarm_id: str) -> bool:
        with self._lock:
            until = self._reveals.get((session_id, alarm_id))
            return until is not None and until > time.monotonic()

    def cached(self, alarm_id: str) -> HeldVideo | None:
        with self._lock:
            held = self._cache.get(alarm_id)
            if held is not None:
                self._cache.move_to_end(alarm_id)
            return held

    def cache(self, held: HeldVideo) -> None:
        with self._lock:
            self._cache[held.alarm_id] = held
            self._cache.move_to_end(held.alarm_id)
            while sum(h.size for h in self._cache.values()) > self.cache_bytes and len(self._cache) > 1:
                self._cache.popitem(last=False)

    def _drop_expired_reveals(self) -> None:
        now = time.monotonic()
        for k in [k for k, until in self._reveals.items() if until <= now]:
            del self._reveals[k]

    def end_session(self, session_id: str) -> None:
        with self._lock:
            for k in [k for k in self._reveals if k[0] == session_id]:
                del self._reveals[k]

    # -- layer 3 ---------------------------------------------------------------------------

    def grant(self, held: HeldVideo, *, user: str, request_id: int, approved_by: str) -> list[HeldVideo]:
        """Holds ``held`` (the full rendition) for ``user``; returns the grants dropped to make room."""
        held.user, held.request_id, held.approved_by = user, request_id, approved_by
        held.expires_monotonic = time.monotonic() + self.grant_ttl_s
        dropped = []
        with self._lock:
            old = self._grants.pop((user, held.alarm_id), None)
            if old is not None:
                dropped.append(old)
            self._grants[(user, held.alarm_id)] = held
            while sum(h.size for h in self._grants.values()) > self.grant_bytes and len(self._grants) > 1:
                dropped.append(self._grants.popitem(last=False)[1])
        return dropped

    def granted(self, user: str, alarm_id: str) -> HeldVideo | None:
        with self._lock:
            held = self._grants.get((user, alarm_id))
            return held if held is not None and held.expires_monotonic > time.monotonic() else None

    def expire(self) -> list[HeldVideo]:
        """Drops every grant whose time is up (and stale reveals); returns the grants dropped."""
        now = time.monotonic()
        with self._lock:
            gone = [k for k, h in self._grants.items() if h.expires_monotonic <= now]
            dropped = [self._grants.pop(k) for k in gone]
            self._drop_expired_reveals()
        return dropped

    def expire_all(self) -> list[HeldVideo]:
        """Drops everything (the console stops): returns the grants that were open."""
        with self._lock:
            dropped = list(self._grants.values())
            self._grants.clear()
            self._cache.clear()
            self._reveals.clear()
        return dropped

    def revoke(self, user: str, alarm_id: str) -> HeldVideo | None:
        with self._lock:
            return self._grants.pop((user, alarm_id), None)

    def held_bytes(self) -> dict[str, int]:
        with self._lock:
            return {"cache": sum(h.size for h in self._cache.values()),
                    "grants": sum(h.size for h in self._grants.values()), "grants_open": len(self._grants),
                    "reveals": len(self._reveals)}


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> (first, last) inclusive; None = the whole body (no header, or one
    this server may ignore: several ranges). Raises ValueError when unsatisfiable (416)."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        if header.strip().startswith("bytes=") and "," in header:
            return None
        raise ValueError(header)
    first, last = m.groups()
    if not first and not last:
        raise ValueError(header)
    if not first:                        # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise ValueError(header)
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(header)
    return start, end


def ranged_response(held: HeldVideo, range_header: str | None) -> Response:
    """The clip's bytes (or the asked-for part of them) from memory; never cached by the browser."""
    size = held.size
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store", "Content-Disposition": "inline"}
    try:
        span = byte_range(range_header, size)
    except ValueError:
        return Response(b"", 416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if span is None:
        return Response(held.video, 200, media_type=held.content_type, headers=headers)
    start, end = span
    return Response(held.video[start:end + 1], 206, media_type=held.content_type,
                    headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"})
