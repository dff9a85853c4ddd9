"""What an operator sees about each stored clip without decrypting it: when it expires, whether a
legal hold keeps it, how often it was opened, and whether it covers what its trigger asked for.

Everything here comes from the envelope's plaintext header, the retention policy, the legal
holds file and the station's audit log: no key is loaded, nothing is decrypted.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ACCESS_KINDS = ("station.decrypt", "station.view", "station.export")


def coverage(header: dict[str, Any], pre_roll_s: float | None, post_roll_s: float | None) -> dict[str, Any]:
    """Seconds the trigger asked for (event ± the profile's pre/post roll) against the seconds the
    clip's frames span; ``complete`` None when the profile's rolls are unknown here."""
    ev = header.get("event_window_ms") or [0, 0]
    wall = header.get("clip_wall_unix_ms") or [0, 0]
    frames = int(header.get("frames") or 0)
    covered = max(0.0, (wall[1] - wall[0]) / 1000)
    period = covered / (frames - 1) if frames > 1 else 0.08
    covered += period          # the last frame lasts one period too
    if pre_roll_s is None or post_roll_s is None:
        return {"requested_s": None, "covered_s": round(covered, 2), "complete": None}
    requested = max(0.0, (ev[1] - ev[0]) / 1000) + pre_roll_s + post_roll_s
    # docs/clip.md: complete when at most one frame period is missing at either end
    return {"requested_s": round(requested, 2), "covered_s": round(covered, 2),
            "complete": covered + 2.5 * period >= requested}


def renditions(header: dict[str, Any]) -> dict[str, Any]:
    """The envelope version and its renditions (docs/envelope.md): v1 has one, ``full``; v2 has
    ``redacted`` (the station key's) and ``full`` (the evidence key's)."""
    version = int(header.get("version") or 1)
    names = [r.get("name") for r in header.get("renditions", [])] if version >= 2 else ["full"]
    return {"envelope_version": version, "renditions": names}


def _rolls(profile_id: str, cache: dict[str, tuple[float | None, float | None]]) -> tuple[float | None, float | None]:
    if profile_id not in cache:
        try:
            from appliance.contracts.profile import load_profile
            prof = load_profile(profile_id)
            cache[profile_id] = (float(prof.pre_roll_s), float(prof.post_roll_s))
        except Exception:
            cache[profile_id] = (None, None)
    return cache[profile_id]


def access_counts(station_dir: str | Path) -> Counter[str]:
    """clip id → decrypt/view/export records in the station's audit log (all its segments)."""
    from appliance.station.audit.report import _lines

    counts: Counter[str] = Counter()
    log = Path(station_dir) / "audit.jsonl"
    try:
        for raw in _lines(log):
            if b'"station.' not in raw:
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if rec.get("kind") in ACCESS_KINDS and isinstance(rec.get("fields"), dict):
                counts[str(rec["fields"].get("clip_id"))] += 1
    except OSError:
        pass
    return counts


def clip_facts(station_dir: str | Path, clips: Iterable[Any], *, config: Path | None = None,
               now: float | None = None, settings: Any = None) -> dict[str, dict[str, Any]]:
    from appliance.contracts.settings import load_station_settings
    from appliance.station.retention import HOLDS_FILE, LegalHolds, RetentionPolicy

    now = time.time() if now is None else now
    cfg = load_station_settings(config)
    policy = RetentionPolicy.from_config(cfg.audit, cfg.policy.profiles_dir or None)
    from appliance.station.storage import resolve_settings

    settings = settings or resolve_settings(station_dir)
    holds: dict[str, Any] = {}
    if settings.db or (Path(station_dir) / HOLDS_FILE).exists():   # never create a holds file by listing
        h = LegalHolds.open(station_dir, settings=settings)
        try:
            holds = h.active(now)
        finally:
            h.close()
    accesses = access_counts(station_dir)
    rolls: dict[str, tuple[float | None, float | None]] = {}
    out = {}
    for c in clips:
        profile = c.header.get("profile", {}).get("id", "")
        expires = c.received_unix_ms + policy.hours_for(profile) * 3600 * 1000
        hold = holds.get(c.clip_id)
        out[c.clip_id] = {
            "expires_unix_ms": int(expires),
            "held_until_unix_ms": int(hold.until * 1000) if hold else None,
            "deleted_after_unix_ms": int(max(expires, hold.until * 1000) if hold else expires),
            "accesses": accesses.get(c.clip_id, 0),
            **coverage(c.header, *_rolls(profile, rolls)),
            **renditions(c.header),
        }
    return out


def resolve_clip_id(station_dir: str | Path, text: str, settings: Any = None) -> str:
    """A stored clip's id from either its own id or its alarm id ``<device>#<sequence>``, the
    name the box, `station list` and the officer's report use for the same alarm."""
    from appliance.common.errors import InputError
    from appliance.station.store import ClipStore

    if "#" not in text:
        return text
    device, _, seq = text.rpartition("#")
    if not seq.isdigit():
        raise InputError(f"{text!r}: an alarm id is DEVICE#SEQUENCE, e.g. walk-box-01#1 (see 'appliance station list')")
    store = ClipStore(station_dir, settings=settings)
    try:
        for clip in store.list_clips(device):
            if clip.sequence == int(seq):
                return clip.clip_id
    finally:
        store.close()
    raise InputError(f"no stored clip for alarm {text!r} (see 'appliance station list')")
