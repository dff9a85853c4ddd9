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
_LISTED = frozenset({"trigger.permitted", "retention.delete", "hold.set", "hold.release", *ACCESS_ACTIONS})
# Before the window, the retention check needs a clip's lifecycle (stored, held, deleted).
_LIFECYCLE = frozenset({"station.stored", "retention.delete", "hold.set", "hold.release"})
_KNOWN = frozenset({"trigger.permitted", "detection.not_permitted", "frames.hourly", "retention.delete",
                    "hold.set", "hold.release", *ACCESS_ACTIONS})


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
            if in_window and kind in _LISTED:
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
                 retention_hours: dict[str, float] | None = None, now: float | None = None) -> dict[str, Any]:
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
        result = verify_log(path, keys)
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

    accesses = [{"time": utc_iso(r.t), "action": ACCESS_ACTIONS[r.kind], "clip_id": r.fields.get("clip_id"),
                 "operator": r.fields.get("operator"), "reason": r.fields.get("reason"),
                 "device": _device(r.fields)} for r in in_window if r.kind in ACCESS_ACTIONS]
    holds = [{"time": utc_iso(r.t), "action": r.kind.split(".")[1], "clip_id": r.fields.get("clip_id"),
              "by": r.fields.get("by"), "reason": r.fields.get("reason"), "until": r.fields.get("until")}
             for r in in_window if r.kind in ("hold.set", "hold.release")]
    deletions = [{"time": utc_iso(r.t), "clip_id": r.fields.get("clip_id"), "device": _device(r.fields),
                  "profile_id": r.fields.get("profile_id"), "envelope_sha256": _envelope(r.fields),
                  "expires_at": r.fields.get("expires_at")} for r in in_window if r.kind == "retention.delete"]

    report = {
        "format": "appliance-audit-report-v1",
        "period": {"from": utc_iso(start), "to": utc_iso(end)},
        "generated": utc_iso(now),
        "logs": log_rows,
        "triggers": {
            "total": len(triggers),
            "by_pattern": dict(sorted(Counter(str(r.fields.get("pattern", "?")) for r in triggers).items())),
            "by_camera": dict(sorted(Counter(str(r.fields.get("camera") or r.device) for r in triggers).items())),
            "by_profile": dict(sorted(Counter(_profile_id(r.fields) or "?" for r in triggers).items())),
            "by_day": dict(sorted(by_day.items())),
            "list": [{"time": utc_iso(r.t), "camera": r.fields.get("camera") or r.device,
                      "pattern": r.fields.get("pattern"), "profile": _profile_id(r.fields),
                      "rule": r.fields.get("rule"), "clip_id": r.fields.get("clip_id"),
                      "envelope_sha256": _envelope(r.fields)} for r in triggers],
        },
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
            "exported": sum(a["action"] == "export" for a in accesses),
            "deleted": len(deletions),
        },
        "accesses": accesses,
        "holds": holds,
        "deletions": deletions,
        "frames": {"analysed": tally.frames["analysed"], "discarded": tally.frames["discarded"]},
        "retention": _retention(all_recs, start, end, now, grace_s, default_retention_hours, retention_hours),
        "other_records": dict(sorted(tally.other.items())),
    }
    return report


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
    for cid, info in sorted(stored.items()):
        gone = deleted.get(cid)
        if gone is not None and gone[0] < start:
            continue
        deadline = _deadline(info["expires_at"], hold_sets.get(cid, []), releases.get(cid, []))
        checked += 1
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
            "violations": violations}


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
    w.writerow(["period", "from", report["period"]["from"], ""])
    w.writerow(["period", "to", report["period"]["to"], ""])
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
        w.writerow(["access", a["clip_id"], a["action"], f"{a['time']} operator={a['operator']} reason={a['reason']}"])
    for h in report["holds"]:
        w.writerow(["hold", h["clip_id"], h["action"], f"{h['time']} by={h['by']} until={h['until']} reason={h['reason']}"])
    for d in report["deletions"]:
        w.writerow(["deletion", d["clip_id"], d["time"], f"envelope_sha256={d['envelope_sha256']}"])
    for name, n in report["frames"].items():
        w.writerow(["frames", name, n, ""])
    ret = report["retention"]
    w.writerow(["retention", "compliant", "yes" if ret["compliant"] else "no", f"{ret['clips_checked']} clips checked"])
    for v in ret["violations"]:
        w.writerow(["retention_violation", v["clip_id"], v["status"],
                    f"deadline={v['deadline']} deleted_at={v['deleted_at']} late_by_s={v['late_by_s']}"])
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


def render_html(report: dict[str, Any]) -> str:
    e = html.escape

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
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Records of processing {e(report['period']['from'])} – {e(report['period']['to'])}</title>",
        ("<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}.ok{color:#276749}"
        ".bad{color:#c53030;font-weight:bold}</style></head><body>"),
        "<h1>Records of processing</h1>",
        (f"<p>Period {e(report['period']['from'])} to {e(report['period']['to'])} (UTC); generated "
        f"{e(report['generated'])}.</p>"),
        "<h2>Logs</h2>",
        table(["log", "origin", "device", "records", "integrity", "first problem"],
              [(lg["path"], lg["origin"], lg["device"], lg["records"], "intact" if lg["intact"] else "TAMPERED",
                lg["first_problem"]) for lg in report["logs"]]),
        f"<h2>Triggers ({t['total']})</h2>",
        _svg_bars(t["by_day"]),
        counts(t["by_pattern"], "pattern"), counts(t["by_camera"], "camera"), counts(t["by_profile"], "profile"),
        table(["time", "camera", "pattern", "profile", "rule", "clip"],
              [(x["time"], x["camera"], x["pattern"], x["profile"], x["rule"], x["clip_id"]) for x in t["list"]]),
        f"<h2>Detections not permitted ({report['not_permitted']['total']})</h2>",
        "<p>Recorded as pattern and time only; no pixels were kept.</p>",
        counts(report["not_permitted"]["by_pattern"], "pattern"),
        "<h2>Clips</h2>", counts(report["clips"], "clips"),
        "<h2>Accesses (decrypt, view, export)</h2>",
        table(["time", "action", "clip", "operator", "reason"],
              [(a["time"], a["action"], a["clip_id"], a["operator"], a["reason"]) for a in report["accesses"]]),
        "<h2>Legal holds</h2>",
        table(["time", "action", "clip", "by", "until", "reason"],
              [(h["time"], h["action"], h["clip_id"], h["by"], h["until"], h["reason"]) for h in report["holds"]]),
        "<h2>Deletions</h2>",
        table(["time", "clip", "expired", "envelope SHA-256"],
              [(d["time"], d["clip_id"], d["expires_at"], d["envelope_sha256"]) for d in report["deletions"]]),
        "<h2>Retention compliance</h2>", verdict,
        f"<p>{ret['clips_checked']} clip(s) checked; grace {ret['grace_s']:g} s after the deadline.</p>",
        table(["clip", "status", "expired", "deadline (with holds)", "deleted", "late by (s)"],
              [(v["clip_id"], v["status"], v["expires_at"], v["deadline"], v["deleted_at"], v["late_by_s"])
               for v in ret["violations"]]),
        "<h2>Frames</h2>", counts(report["frames"], "frames"),
        "<h2>Other records</h2>", counts(report["other_records"], "kind"),
        "</body></html>\n",
    ]
    return "".join(parts)


RENDERERS = {"json": render_json, "csv": render_csv, "html": render_html}
