"""The officer's records-of-processing report over appliance and station audit logs.

:func:`build_report` returns a plain dict (the JSON format); :func:`render_csv` and
:func:`render_html` present the same dict. The HTML is one self-contained file: inline CSS
and an inline SVG bar chart, no scripts, nothing fetched. Every string from a log is escaped.
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.common.errors import InputError
from appliance.contracts.audit.canonical import parse_time, utc_iso
from appliance.contracts.audit.log import iter_lines
from appliance.contracts.audit.segments import log_files
from appliance.contracts.audit.verify import verify_log

ACCESS_ACTIONS = {"station.decrypt": "decrypt", "station.view": "view", "station.export": "export"}
DEFAULT_GRACE_S = 1800.0
DEFAULT_RETENTION_HOURS = 72.0


@dataclass(frozen=True, slots=True)
class _Rec:
    t: float
    kind: str
    fields: dict[str, Any]
    device: str      # the log's device id
    origin: str


def _lines(path: Path) -> Iterable[bytes]:
    """Every line of the logical log: its sealed segments in order, then the active file."""
    for file in log_files(path) or [path]:
        for _, raw in iter_lines(file):
            yield raw


# In the window, these are listed one by one; everything else there is only counted.
_LISTED = frozenset({"trigger.permitted", "retention.delete", "hold.set", "hold.release", "station.export_result",
                     *ACCESS_ACTIONS})
#: Records of a person looking at pixels outside the alarm path (installation previews).
PIXEL_ACCESSES = frozenset({"provision.preview"})
#: Access attempts the station refused (no operator or reason, unknown clip, ...).
REFUSED_ACCESSES = frozenset({"station.access_refused", "console.refused", "console.login_failed"})
# Before the window, the retention check needs a clip's lifecycle (stored, held, deleted).
_LIFECYCLE = frozenset({"station.stored", "retention.delete", "hold.set", "hold.release"})
_KNOWN = frozenset({"trigger.permitted", "detection.not_permitted", "frames.hourly", "retention.delete",
                    "hold.set", "hold.release", "station.export_result", *ACCESS_ACTIONS, *PIXEL_ACCESSES,
                    *REFUSED_ACCESSES})


@dataclass
class _Tally:
    """Counts over the records in the window that the report does not list one by one."""
    not_permitted: int = 0
    np_pattern: Counter[str] = field(default_factory=Counter)
    np_rule: Counter[str] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)
    received: int = 0
    rejected: int = 0
    stored: int = 0

    def add(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "detection.not_permitted":
            self.not_permitted += 1
            self.np_pattern[str(fields.get("pattern", "?"))] += 1
            self.np_rule[str(fields.get("rule", "?"))] += 1
        elif kind == "frames.hourly":
            for name in ("analysed", "discarded"):
                v = fields.get(name)
                if isinstance(v, int) and not isinstance(v, bool):
                    self.frames[name] += v
        if kind not in _KNOWN:
            self.other[kind] += 1
        self.received += kind == "station.received"
        self.rejected += kind == "station.rejected" or (kind == "station.received" and fields.get("verified") is False)
        self.stored += kind == "station.stored"


def _needed_before(kind: str, fields: dict[str, Any]) -> bool:
    """Whether the retention check (or the trigger → profile lookup it uses) needs this record."""
    if kind == "trigger.permitted" and _envelope(fields) and _profile_id(fields):
        return True
    return kind in _LIFECYCLE and isinstance(fields.get("clip_id"), str)


def _load(path: Path, start: float, end: float, tally: _Tally) -> tuple[list[_Rec], str, str]:
    """Streams the log: counts what falls in ``[start, end)`` into ``tally`` and returns only
    the records the report lists or the retention check needs, so memory follows the report,
    not the size of the log."""
    records: list[_Rec] = []
    device = origin = ""
    try:
        for raw in _lines(path):
            try:
                rec = json.loads(raw)
                t = parse_time(rec["time"])
                kind, fields = rec["kind"], rec["fields"]
            except (ValueError, KeyError, TypeError, InputError):
                continue          # verify reports it; the report shows what is readable
            if not isinstance(fields, dict):
                continue
            if kind == "audit.genesis":
                device, origin = str(fields.get("device", "")), str(fields.get("origin", ""))
            if t >= end:
                continue
            in_window = t >= start
            if in_window:
                tally.add(kind, fields)
            if in_window and (kind in _LISTED or kind in PIXEL_ACCESSES or kind in REFUSED_ACCESSES):
                records.append(_Rec(t, kind, fields, device, origin))
            elif _needed_before(kind, fields):
                if kind == "trigger.permitted":     # only its envelope → profile is looked up
                    fields = {"envelope_sha256": _envelope(fields), "profile": _profile_id(fields)}
                records.append(_Rec(t, kind, fields, device, origin))
    except OSError as exc:
        raise InputError(f"cannot read audit log {path}: {exc.strerror or exc}") from None
    return records, device, origin


def _ftime(fields: dict[str, Any], name: str) -> float | None:
    v = fields.get(name)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return parse_time(v)
        except InputError:
            return None
    return None


def _device(fields: dict[str, Any]) -> str | None:
    v = fields.get("device_id", fields.get("device"))
    return None if v is None else str(v)


def _envelope(fields: dict[str, Any]) -> str | None:
    v = fields.get("envelope_sha256", fields.get("ciphertext_sha256"))
    return v if isinstance(v, str) else None


def _profile_id(fields: dict[str, Any]) -> str:
    p = fields.get("profile")
    if isinstance(p, dict):
        return str(p.get("id", ""))
    return str(p or fields.get("profile_id", "") or "")


def build_report(logs: Sequence[str | Path], start: float, end: float, *,
                 keys: Sequence[Ed25519PublicKey] = (), grace_s: float = DEFAULT_GRACE_S,
                 default_retention_hours: float = DEFAULT_RETENTION_HOURS,
                 retention_hours: dict[str, float] | None = None, now: float | None = None,
                 time_zone: str = "UTC", keys_by_device: dict[str, list[Ed25519PublicKey]] | None = None,
                 ) -> dict[str, Any]:
    """Records of processing for ``[start, end)`` (Unix seconds) over ``logs``."""
    if end <= start:
        raise InputError(f"--to {utc_iso(end)} must be after --from {utc_iso(start)}")
    now = time.time() if now is None else now
    retention_hours = retention_hours or {}
    all_recs: list[_Rec] = []
    log_rows = []
    tally = _Tally()
    for path in map(Path, logs):
        recs, device, origin = _load(path, start, end, tally)
        # A log is checked against the keys given, plus those the station knows for the device
        # its genesis names (`--station-dir`); a log of another origin (the console's) keeps
        # its own genesis key, stated as self-asserted.
        result = verify_log(path, [*keys, *(keys_by_device or {}).get(device, [])])
        log_rows.append({"path": str(path), "origin": origin, "device": device, "records": result.records,
                         "intact": result.ok, "first_problem": str(result.first) if result.first else None,
                         "key_source": result.key_source})
        all_recs.extend(recs)
    all_recs.sort(key=lambda r: r.t)      # all before ``end``
    in_window = [r for r in all_recs if start <= r.t]

    triggers = [r for r in in_window if r.kind == "trigger.permitted"]
    by_day: Counter[str] = Counter()
    day = datetime.fromtimestamp(start, UTC).date()
    last = datetime.fromtimestamp(end - 1e-6, UTC).date()
    while day <= last and len(by_day) < 3660:
        by_day[day.isoformat()] = 0
        day = day.fromordinal(day.toordinal() + 1)
    for r in triggers:
        by_day[datetime.fromtimestamp(r.t, UTC).date().isoformat()] += 1

    # One alarm id from trigger to deletion: <device>#<sequence>. The box's trigger record names
    # it; the station's records name the stored clip, which station.stored ties to the device
    # and sequence (and the envelope's SHA-256 ties to the trigger).
    alarm_of_clip: dict[str, str] = {}
    alarm_of_envelope: dict[str, str] = {}
    for r in all_recs:
        if r.kind == "station.stored" and isinstance(r.fields.get("clip_id"), str):
            dev, seq = _device(r.fields), r.fields.get("sequence")
            env = _envelope(r.fields)
            if dev and isinstance(seq, int):
                alarm_of_clip[r.fields["clip_id"]] = f"{dev}#{seq}"
                if env:
                    alarm_of_envelope[env] = f"{dev}#{seq}"

    def alarm(fields: dict[str, Any]) -> str | None:
        if isinstance(fields.get("alarm_id"), str):      # the console and the station's alarm records
            return fields["alarm_id"]
        cid = fields.get("clip_id")
        if isinstance(cid, str) and cid in alarm_of_clip:
            return alarm_of_clip[cid]
        env = _envelope(fields)
        if env and env in alarm_of_envelope:
            return alarm_of_envelope[env]
        return cid if isinstance(cid, str) and "#" in cid else None

    accesses = [{"time": utc_iso(r.t), "action": ACCESS_ACTIONS[r.kind], "alarm": alarm(r.fields),
                 "clip_id": r.fields.get("clip_id"), "operator": r.fields.get("operator"),
                 "reason": r.fields.get("reason"), "device": _device(r.fields), "outcome": _outcome(r, in_window)}
                for r in in_window if r.kind in ACCESS_ACTIONS]
    holds = [{"time": utc_iso(r.t), "action": r.kind.split(".")[1], "alarm": alarm(r.fields),
              "clip_id": r.fields.get("clip_id"), "by": r.fields.get("by"), "reason": r.fields.get("reason"),
              "until": r.fields.get("until")}
             for r in in_window if r.kind in ("hold.set", "hold.release")]
    deletions = [{"time": utc_iso(r.t), "alarm": alarm(r.fields), "clip_id": r.fields.get("clip_id"),
                  "device": _device(r.fields), "profile_id": r.fields.get("profile_id"),
                  "envelope_sha256": _envelope(r.fields), "expires_at": r.fields.get("expires_at")}
                 for r in in_window if r.kind == "retention.delete"]
    deleted_at = {d["clip_id"]: d["time"] for d in deletions}
    pixel_accesses = [{"time": utc_iso(r.t), "device": r.device, "kind": r.kind,
                       "by": r.fields.get("by") or r.fields.get("operator") or "",
                       "reason": r.fields.get("reason") or "(no reason recorded)",
                       "what": f"{r.fields.get('width', '?')}x{r.fields.get('height', '?')} image "
                               f"{r.fields.get('out', '')}, masks: {', '.join(r.fields.get('masks') or []) or 'none'}",
                       "sha256": r.fields.get("sha256")}
                      for r in in_window if r.kind in PIXEL_ACCESSES]
    refused = [{"time": utc_iso(r.t), "kind": r.kind,
                "action": (r.fields.get("action") or r.fields.get("layer") or r.fields.get("permission")
                           or ("login" if r.kind == "console.login_failed" else r.fields.get("path"))),
                "alarm": alarm(r.fields), "clip_id": r.fields.get("clip_id"),
                "operator": r.fields.get("operator") or r.fields.get("user") or "",
                "reason": r.fields.get("reason") if r.kind == "station.access_refused" else "",
                "why_refused": r.fields.get("refused") or r.fields.get("reason") or r.kind}
               for r in in_window if r.kind in REFUSED_ACCESSES]
    exported_deleted = [{**a, "deleted_at": deleted_at[a["clip_id"]]} for a in accesses
                        if a["action"] == "export" and a["clip_id"] in deleted_at]
    retention = _retention(all_recs, start, end, now, grace_s, default_retention_hours, retention_hours)
    for row in retention["clips"]:
        row["alarm"] = alarm_of_clip.get(row["clip_id"])

    report = {
        "format": "appliance-audit-report-v1",
        "period": {"from": utc_iso(start), "to": utc_iso(end)},
        "generated": utc_iso(now),
        "time_zone": time_zone,
        "logs": log_rows,
        "triggers": {
            "total": len(triggers),
            "by_pattern": dict(sorted(Counter(str(r.fields.get("pattern", "?")) for r in triggers).items())),
            "by_camera": dict(sorted(Counter(str(r.fields.get("camera") or r.device) for r in triggers).items())),
            "by_profile": dict(sorted(Counter(_profile_id(r.fields) or "?" for r in triggers).items())),
            "by_day": dict(sorted(by_day.items())),
            "list": [{"time": utc_iso(r.t), "alarm": alarm(r.fields), "camera": r.fields.get("camera") or r.device,
                      "pattern": r.fields.get("pattern"), "profile": _profile_id(r.fields),
                      "rule": r.fields.get("rule"), "clip_id": r.fields.get("clip_id"),
                      "envelope_sha256": _envelope(r.fields)} for r in triggers],
        },
        "legal_basis": _legal_bases(triggers),
        "not_permitted": {
            "total": tally.not_permitted,
            "by_pattern": dict(sorted(tally.np_pattern.items())),
            "by_rule": dict(sorted(tally.np_rule.items())),
        },
        "clips": {
            "received": tally.received,
            "rejected": tally.rejected,
            "stored": tally.stored,
            "decrypted": sum(a["action"] == "decrypt" for a in accesses),
            "viewed": sum(a["action"] == "view" for a in accesses),
            "exported": sum(a["action"] == "export" and a["outcome"] in ("intact", "altered") for a in accesses),
            "export_failed": sum(a["action"] == "export" and a["outcome"] not in ("intact", "altered")
                                 for a in accesses),
            "deleted": len(deletions),
        },
        "accesses": accesses,
        "refused_accesses": refused,
        "pixel_accesses": pixel_accesses,
        "exported_copies_of_deleted_clips": exported_deleted,
        "holds": holds,
        "deletions": deletions,
        "frames": {"analysed": tally.frames["analysed"], "discarded": tally.frames["discarded"]},
        "retention": retention,
        "other_records": dict(sorted(tally.other.items())),
    }
    return report


def _outcome(access: _Rec, recs: list[_Rec]) -> str:
    """What came of an export: the verdict of its ``station.export_result`` (``intact``,
    ``altered``), ``failed: <reason>`` (nothing was decrypted), or ``no result recorded``."""
    if access.kind != "station.export":
        return ""
    sha = access.fields.get("envelope_sha256")
    for r in recs:
        if (r.kind == "station.export_result" and r.t >= access.t and r.fields.get("envelope_sha256") == sha
                and r.fields.get("operator") == access.fields.get("operator")):
            verdict = str(r.fields.get("verdict", "?"))
            return f"failed: {r.fields.get('error', '?')}" if verdict == "failed" else verdict
    return "no result recorded"


def _retention(recs: Iterable[_Rec], start: float, end: float, now: float, grace_s: float,
               default_hours: float, per_profile: dict[str, float]) -> dict[str, Any]:
    """Every clip stored by ``end`` and not deleted before ``start``: was it deleted by its
    deadline (expiry, pushed out by legal holds covering it) plus grace?"""
    stored: dict[str, dict[str, Any]] = {}
    deleted: dict[str, tuple[float, dict[str, Any]]] = {}
    hold_sets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    releases: dict[str, list[float]] = defaultdict(list)
    profile_of_envelope: dict[str, str] = {}    # from the appliance's trigger records
    for r in recs:
        if r.t >= end:
            break
        envelope = _envelope(r.fields)
        if r.kind == "trigger.permitted" and envelope and _profile_id(r.fields):
            profile_of_envelope[envelope] = _profile_id(r.fields)
        cid = r.fields.get("clip_id")
        if not isinstance(cid, str):
            continue
        if r.kind == "station.stored" and cid not in stored:
            received = _ftime(r.fields, "received_at") or r.t
            expires = _ftime(r.fields, "expires_at")
            if expires is None:
                hours = r.fields.get("retention_hours")
                if not isinstance(hours, (int, float)) or isinstance(hours, bool):
                    profile = _profile_id(r.fields) or profile_of_envelope.get(_envelope(r.fields) or "", "")
                    hours = per_profile.get(profile, default_hours)
                expires = received + float(hours) * 3600
            stored[cid] = {"received_at": received, "expires_at": expires}
        elif r.kind == "retention.delete":
            deleted.setdefault(cid, (r.t, r.fields))
        elif r.kind == "hold.set":
            until = _ftime(r.fields, "until")
            if until is not None:
                hold_sets[cid].append((r.t, until))
        elif r.kind == "hold.release":
            releases[cid].append(r.t)

    # The deletion record states the expiry the station applied; it wins over our estimate.
    for cid, (_, f) in deleted.items():
        expires = _ftime(f, "expires_at")
        if expires is not None:
            stored[cid] = {"received_at": _ftime(f, "received_at"), "expires_at": expires}

    judged_at = min(end, now)
    checked = 0
    violations = []
    clips = []
    for cid, info in sorted(stored.items(), key=lambda kv: (kv[1]["received_at"] or 0, kv[0])):
        gone = deleted.get(cid)
        if gone is not None and gone[0] < start:
            continue
        deadline = _deadline(info["expires_at"], hold_sets.get(cid, []), releases.get(cid, []))
        checked += 1
        clips.append({"clip_id": cid, "received_at": utc_iso(info["received_at"]) if info["received_at"] else None,
                      "expires_at": utc_iso(info["expires_at"]), "deadline": utc_iso(deadline),
                      "held": deadline > info["expires_at"],
                      "deleted_at": utc_iso(gone[0]) if gone is not None else None})
        if gone is not None:
            if gone[0] > deadline + grace_s:
                violations.append({"clip_id": cid, "status": "deleted late", "expires_at": utc_iso(info["expires_at"]),
                                   "deadline": utc_iso(deadline), "deleted_at": utc_iso(gone[0]),
                                   "late_by_s": round(gone[0] - deadline, 1)})
        elif judged_at > deadline + grace_s:
            violations.append({"clip_id": cid, "status": "still stored past its limit",
                               "expires_at": utc_iso(info["expires_at"]), "deadline": utc_iso(deadline),
                               "deleted_at": None, "late_by_s": round(judged_at - deadline, 1)})
    return {"compliant": not violations, "clips_checked": checked, "grace_s": grace_s,
            "violations": violations, "clips": clips}


def _legal_bases(triggers: Sequence[_Rec]) -> list[dict[str, Any]]:
    """The legal basis of every profile that permitted a trigger, from the profile file itself
    (the bundled one with the same id; a differing SHA-256 is said, never hidden)."""
    seen: dict[tuple[str, str, str], int] = Counter(
        (_profile_id(r.fields), str(r.fields.get("profile_version", "")), str(r.fields.get("profile_sha256", "")))
        for r in triggers)
    out = []
    for (pid, version, sha), n in sorted(seen.items()):
        row: dict[str, Any] = {"profile": pid, "version": version, "sha256": sha, "triggers": n,
                               "title": None, "jurisdiction": None, "legal_basis": None, "note": ""}
        try:
            from appliance.contracts.profile import load_profile
            prof = load_profile(pid)
        except Exception as exc:   # an unknown or unreadable profile: the report still renders
            row["note"] = f"profile file not found here ({exc}); fetch version {version} by its SHA-256"
        else:
            row.update(title=prof.title, jurisdiction=prof.jurisdiction, legal_basis=prof.legal_basis)
            if sha and prof.ref.sha256 != sha:
                row["note"] = (f"the profile installed here is version {prof.ref.version}, not the one that "
                               f"permitted these triggers (SHA-256 differs): its text may have changed")
        out.append(row)
    return out


def _deadline(expires: float, holds: list[tuple[float, float]], releases: list[float]) -> float:
    """The expiry pushed out by every legal hold that was active at the (moving) deadline."""
    intervals = []
    for set_at, until in holds:
        ended = min([until] + [t for t in releases if t >= set_at])
        intervals.append((set_at, ended))
    deadline = expires
    changed = True
    while changed:
        changed = False
        for a, b in intervals:
            if a <= deadline < b:
                deadline, changed = b, True
    return deadline


# ---------------------------------------------------------------------------------------
# Renderers


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


class _SafeWriter:
    """Defuses spreadsheet formulas: a cell from a log (an operator's reason) that starts with
    ``= + - @`` is prefixed with ``'`` so a spreadsheet shows it instead of evaluating it."""

    def __init__(self, writer: Any):
        self._w = writer

    def writerow(self, row: list[Any]) -> None:
        self._w.writerow([("'" + c) if isinstance(c, str) and c[:1] in ("=", "+", "-", "@", "\t", "\r") else c
                          for c in row])


def render_csv(report: dict[str, Any]) -> str:
    """Long format: section, name, value, detail — one fact per row, spreadsheet-friendly."""
    out = io.StringIO()
    w = _SafeWriter(csv.writer(out, lineterminator="\n"))
    w.writerow(["section", "name", "value", "detail"])
    zone = report.get("time_zone", "UTC")
    w.writerow(["period", "from", local_time(report["period"]["from"], zone), report["period"]["from"]])
    w.writerow(["period", "to", local_time(report["period"]["to"], zone), report["period"]["to"]])
    w.writerow(["period", "time_zone", zone, "every time below is in this zone"])
    for lg in report["logs"]:
        w.writerow(["log", lg["path"], "intact" if lg["intact"] else "TAMPERED", lg["first_problem"] or ""])
    w.writerow(["triggers", "total", report["triggers"]["total"], ""])
    for group in ("by_pattern", "by_camera", "by_profile", "by_day"):
        for name, n in report["triggers"][group].items():
            w.writerow([f"triggers_{group}", name, n, ""])
    w.writerow(["not_permitted", "total", report["not_permitted"]["total"], ""])
    for name, n in report["not_permitted"]["by_pattern"].items():
        w.writerow(["not_permitted_by_pattern", name, n, ""])
    for name, n in report["clips"].items():
        w.writerow(["clips", name, n, ""])
    for a in report["accesses"]:
        w.writerow(["access", a.get("alarm") or a["clip_id"], a["action"],
                    f"{local_time(a['time'], zone)} operator={a['operator']} reason={a['reason']} outcome={a['outcome']}"])
    for x in report.get("refused_accesses", []):
        w.writerow(["access_refused", x.get("alarm") or x["clip_id"], x["action"],
                    f"{local_time(x['time'], zone)} operator={x['operator']} why={x['why_refused']}"])
    for x in report.get("exported_copies_of_deleted_clips", []):
        w.writerow(["exported_copy_of_deleted_clip", x.get("alarm") or x["clip_id"], local_time(x["time"], zone),
                    f"operator={x['operator']} reason={x['reason']} deleted={local_time(x['deleted_at'], zone)}"])
    for x in report.get("pixel_accesses", []):
        w.writerow(["pixel_access", x["device"], x["kind"], f"{local_time(x['time'], zone)} reason={x['reason']}"])
    for b in report.get("legal_basis", []):
        w.writerow(["legal_basis", f"{b['profile']} {b['version']}", b["legal_basis"] or "", b["note"]])
    for c in report["retention"].get("clips", []):
        w.writerow(["stored_clip", c.get("alarm") or c["clip_id"], local_time(c["expires_at"], zone),
                    f"received={local_time(c['received_at'], zone)} deleted={local_time(c['deleted_at'], zone)}"])
    for h in report["holds"]:
        w.writerow(["hold", h.get("alarm") or h["clip_id"], h["action"],
                    f"{local_time(h['time'], zone)} by={h['by']} until={local_time(h['until'], zone)} reason={h['reason']}"])
    for d in report["deletions"]:
        w.writerow(["deletion", d.get("alarm") or d["clip_id"], local_time(d["time"], zone),
                    f"envelope_sha256={d['envelope_sha256']}"])
    for name, n in report["frames"].items():
        w.writerow(["frames", name, n, ""])
    ret = report["retention"]
    w.writerow(["retention", "compliant", "yes" if ret["compliant"] else "no", f"{ret['clips_checked']} clips checked"])
    for v in ret["violations"]:
        w.writerow(["retention_violation", v["clip_id"], v["status"],
                    f"deadline={local_time(v['deadline'], zone)} deleted_at={local_time(v['deleted_at'], zone)} "
                    f"late_by={duration_words(v['late_by_s'])}"])
    return out.getvalue()


def _svg_bars(counts: dict[str, int], width: int = 720, height: int = 180) -> str:
    """A bar chart of triggers per day as inline SVG (no scripts)."""
    items = list(counts.items())
    if not items:
        return ""
    top = max(max(n for _, n in items), 1)
    pad_l, pad_b, pad_t = 30, 30, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    bw = plot_w / len(items)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="triggers per day">'),
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#444"/>',
             f'<text x="2" y="{pad_t + 10}" font-size="10">{top}</text>',
             f'<text x="2" y="{pad_t + plot_h}" font-size="10">0</text>']
    label_every = max(1, len(items) // 10)
    for i, (label, n) in enumerate(items):
        h = plot_h * n / top
        x = pad_l + i * bw
        parts.append(f'<rect x="{x + bw * 0.1:.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(bw * 0.8, 1):.1f}" '
                     f'height="{h:.1f}" fill="#2b6cb0"><title>{html.escape(label)}: {n}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{height - 12}" font-size="9" text-anchor="middle">'
                         f'{html.escape(label[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def local_time(iso: str | None, zone: str) -> str:
    """``2026-11-26T08:00:00.000000Z`` → ``2026-11-26 09:00:00 CET`` in ``zone`` (IANA name)."""
    if not iso:
        return ""
    try:
        t = parse_time(iso)
    except InputError:
        return str(iso)
    return datetime.fromtimestamp(t, _tzinfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def _tzinfo(zone: str) -> Any:
    if zone in ("UTC", "Z", ""):
        return UTC
    from zoneinfo import ZoneInfo
    return ZoneInfo(zone)


def check_time_zone(zone: str) -> str:
    """An IANA zone name the report can use, else InputError naming the fix."""
    try:
        _tzinfo(zone)
    except Exception:
        raise InputError(f"--tz {zone!r}: not a known time zone (fix: an IANA name such as Europe/Berlin, or UTC)") from None
    return zone


def duration_words(seconds: float | None) -> str:
    """``90061`` → ``1 day 1 hour 1 minute`` (the two largest units; seconds only under a minute)."""
    if seconds is None:
        return ""
    s = abs(float(seconds))
    if s < 60:
        return f"{s:.0f} second{'s' if round(s) != 1 else ''}"
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n = int(s // size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
            s -= n * size
    return " ".join(parts[:2])


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    zone = report.get("time_zone", "UTC")

    def lt(iso: str | None) -> str:
        return local_time(iso, zone)

    def table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
        body = "".join("<tr>" + "".join(f"<td>{e(str(c if c is not None else ''))}</td>" for c in row) + "</tr>"
                       for row in rows)
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        return f"<table><tr>{head}</tr>{body or '<tr><td colspan=' + str(len(headers)) + '>none</td></tr>'}</table>"

    def counts(d: dict[str, int], what: str) -> str:
        return table([what, "count"], d.items())

    t, ret = report["triggers"], report["retention"]
    verdict = ("<p class=ok>Retention compliant: no clip was kept past its limit.</p>" if ret["compliant"] else
               f"<p class=bad>Retention NOT compliant: {len(ret['violations'])} clip(s) kept past their limit.</p>")

    def clip_state(c: dict[str, Any]) -> str:
        if c["deleted_at"]:
            return f"deleted {lt(c['deleted_at'])}"
        left = parse_time(c["deadline"]) - parse_time(report["generated"])
        held = " (legal hold)" if c["held"] else ""
        return (f"stored; deleted in {duration_words(left)}{held}" if left > 0
                else f"stored, {duration_words(-left)} past its limit{held}")

    refused = report.get("refused_accesses", [])
    exported_deleted = report.get("exported_copies_of_deleted_clips", [])
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Records of processing {e(lt(report['period']['from']))} – {e(lt(report['period']['to']))}</title>",
        ("<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}.ok{color:#276749}"
        ".bad{color:#c53030;font-weight:bold}</style></head><body>"),
        "<h1>Records of processing</h1>",
        (f"<p>Period {e(lt(report['period']['from']))} to {e(lt(report['period']['to']))}; generated "
         f"{e(lt(report['generated']))}. All times in time zone <b>{e(zone)}</b>. An alarm is named "
         "<i>device#sequence</i> from its trigger on the box to every access and its deletion.</p>"),
        "<h2>Logs</h2>",
        table(["log", "origin", "device", "records", "integrity", "first problem"],
              [(lg["path"], lg["origin"], lg["device"], lg["records"], "intact" if lg["intact"] else "TAMPERED",
                lg["first_problem"]) for lg in report["logs"]]),
        f"<h2>Alarms (permitted triggers: {t['total']})</h2>",
        _svg_bars(t["by_day"]),
        counts(t["by_pattern"], "pattern"), counts(t["by_camera"], "camera"), counts(t["by_profile"], "profile"),
        table(["time", "alarm", "camera", "pattern", "profile", "rule"],
              [(lt(x["time"]), x.get("alarm") or x["clip_id"], x["camera"], x["pattern"], x["profile"], x["rule"])
               for x in t["list"]]),
        "<h2>Legal basis</h2>",
        table(["profile", "version", "triggers", "jurisdiction", "legal basis", "note"],
              [(b["profile"], b["version"], b["triggers"], b["jurisdiction"], b["legal_basis"], b["note"])
               for b in report.get("legal_basis", [])]),
        f"<h2>Detections not permitted ({report['not_permitted']['total']})</h2>",
        "<p>Recorded as pattern and time only; no pixels were kept.</p>",
        counts(report["not_permitted"]["by_pattern"], "pattern"),
        "<h2>Clips</h2>", counts(report["clips"], "clips"),
        "<h2>Stored clips and when each is deleted</h2>",
        table(["alarm", "clip", "received", "expires", "state"],
              [(c.get("alarm"), c["clip_id"], lt(c["received_at"]), lt(c["expires_at"]), clip_state(c))
               for c in ret.get("clips", [])]),
        "<h2>Accesses to alarm video (decrypt, view, export)</h2>",
        table(["time", "action", "alarm", "operator", "reason", "outcome"],
              [(lt(a["time"]), a["action"], a.get("alarm") or a["clip_id"], a["operator"], a["reason"],
                a.get("outcome", "")) for a in report["accesses"]]),
        f"<h2>Refused access attempts ({len(refused)})</h2>",
        table(["time", "action", "alarm", "operator", "reason given", "why refused"],
              [(lt(x["time"]), x["action"], x.get("alarm") or x["clip_id"], x["operator"], x["reason"], x["why_refused"])
               for x in refused]),
        f"<h2>Exported copies of deleted clips ({len(exported_deleted)})</h2>",
        ("<p class=bad>These copies left the station before the clip was deleted: follow them up with the "
         "operator named.</p>" if exported_deleted else "<p>No exported copy of a deleted clip.</p>"),
        table(["alarm", "exported", "operator", "reason", "clip deleted"],
              [(x.get("alarm") or x["clip_id"], lt(x["time"]), x["operator"], x["reason"], lt(x["deleted_at"]))
               for x in exported_deleted]),
        "<h2>Other pixel accesses (installation previews)</h2>",
        table(["time", "device", "record", "by", "reason", "what"],
              [(lt(x["time"]), x["device"], x["kind"], x["by"], x["reason"], x["what"])
               for x in report.get("pixel_accesses", [])]),
        "<h2>Legal holds</h2>",
        table(["time", "action", "alarm", "by", "until", "reason"],
              [(lt(h["time"]), h["action"], h.get("alarm") or h["clip_id"], h["by"], lt(h["until"]), h["reason"])
               for h in report["holds"]]),
        "<h2>Deletions</h2>",
        table(["time", "alarm", "expired", "envelope SHA-256"],
              [(lt(d["time"]), d.get("alarm") or d["clip_id"], lt(d["expires_at"]), d["envelope_sha256"])
               for d in report["deletions"]]),
        "<h2>Retention compliance</h2>", verdict,
        f"<p>{ret['clips_checked']} clip(s) checked; grace {duration_words(ret['grace_s'])} after the deadline.</p>",
        table(["clip", "status", "expired", "deadline (with holds)", "deleted", "late by"],
              [(v["clip_id"], v["status"], lt(v["expires_at"]), lt(v["deadline"]), lt(v["deleted_at"]),
                duration_words(v["late_by_s"])) for v in ret["violations"]]),
        "<h2>Frames</h2>",
        "<p>Frames the pose model analysed, and frames decoded but not analysed (the box analyses "
        "a fixed rate of each camera's frames); counted on the box every hour and when it stops.</p>",
        counts(report["frames"], "frames"),
        "<h2>Other records</h2>", counts(report["other_records"], "kind"),
        "</body></html>\n",
    ]
    return "".join(parts)


RENDERERS = {"json": render_json, "csv": render_csv, "html": render_html}
