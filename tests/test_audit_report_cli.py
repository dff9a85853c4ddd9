"""The officer's report (counts, accesses, retention compliance; JSON, CSV, HTML with an
inline SVG chart) and the `appliance audit verify|report|checkpoints` commands."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.cli import main
from appliance.contracts.audit.canonical import parse_time, public_key_pem, utc_iso
from appliance.contracts.audit.log import AuditLog
from appliance.station.audit.report import build_report, render_csv, render_html

DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STATION_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
DAY0 = parse_time("2026-03-01T00:00:00Z")
H = 3600.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def build_logs(tmp_path: Path) -> tuple[Path, Path]:
    """Three days of a camera and its station, written through the real AuditLog."""
    clock = Clock(DAY0)
    app = AuditLog(tmp_path / "appliance.jsonl", signer=DEVICE_KEY, device="cam-paradeplatz",
                   checkpoint_every=4, clock=clock)
    st = AuditLog(tmp_path / "station.jsonl", signer=STATION_KEY, origin="station", device="station",
                  checkpoint_every=4, clock=clock)

    def at(hours: float) -> None:
        clock.t = DAY0 + hours * H

    def trigger(hours: float, pattern: str, clip: str, profile: str = "bw-polg-44-4") -> None:
        at(hours)
        app.append("trigger.permitted", pattern=pattern, profile=profile, profile_version="1",
                   profile_sha256="ab" * 32, rule=f"patterns.{pattern}", clip_id=f"cam#{clip}",
                   envelope_sha256=clip * 4, confidence=0.9)
        at(hours + 0.01)
        st.append("station.stored", clip_id=clip, device_id="cam-paradeplatz", sequence=1,
                  envelope_sha256=clip * 4, status="stored")

    at(0.5)
    app.append("appliance.start", version="0.1.0", profile="bw-polg-44-4")
    trigger(1, "strike", "c1" * 8)                       # day 1
    trigger(2, "kick", "c2" * 8)
    trigger(3, "strike", "c3" * 8, profile="short-test")
    at(4)
    app.append("detection.not_permitted", pattern="fall", start=10.0, end=11.0, profile="bw-polg-44-4",
               rule="patterns.fall.permitted")
    at(5)
    app.append("detection.not_permitted", pattern="lying", start=20.0, end=23.0, profile="bw-polg-44-4",
               rule="not-listed")
    at(6)
    app.append("frames.hourly", analysed=36000, discarded=9000)
    trigger(30, "fight", "c4" * 8)                       # day 2
    at(31)
    st.append("station.export", clip_id="c1" * 8, device_id="cam-paradeplatz", envelope_sha256="c1" * 32,
              operator="officer.k", reason="case 2026-114 <b>assault</b>")
    st.append("station.export_result", clip_id="c1" * 8, envelope_sha256="c1" * 32, operator="officer.k",
              verdict="intact", mismatched_frames=[])
    at(31.5)   # a failed export (issue 12): listed as failed, not like the one that worked
    st.append("station.export", clip_id="c3" * 8, device_id="cam-paradeplatz", envelope_sha256="c3" * 32,
              operator="officer.m", reason="case 2026-115")
    st.append("station.export_result", clip_id="c3" * 8, envelope_sha256="c3" * 32, operator="officer.m",
              verdict="failed", error="decrypt_failed")
    at(32)
    st.append("hold.set", clip_id="c2" * 8, reason="court order 7", by="dpo", until=utc_iso(DAY0 + 200 * H))
    at(73.2)                                              # c1 on time (72 h + 0.2 h < grace)
    st.append("retention.delete", clip_id="c1" * 8, device_id="cam-paradeplatz", profile_id="bw-polg-44-4",
              envelope_sha256="c1" * 32, received_at=utc_iso(DAY0 + 1.01 * H),
              expires_at=utc_iso(DAY0 + 73.01 * H), retention_hours=72, files=1)
    at(30)
    # c3: short profile (24 h) deleted at 60 h: late by ~33 h
    clock.t = DAY0 + 60 * H
    st.append("retention.delete", clip_id="c3" * 8, device_id="cam-paradeplatz", profile_id="short-test",
              envelope_sha256="c3" * 32, received_at=utc_iso(DAY0 + 3.01 * H),
              expires_at=utc_iso(DAY0 + 27.01 * H), retention_hours=24, files=1)
    at(74)
    app.append("appliance.stop", frames=1)
    app.close()
    st.close()
    return tmp_path / "appliance.jsonl", tmp_path / "station.jsonl"


def test_report_counts_accesses_and_retention(tmp_path):
    app, st = build_logs(tmp_path)
    end = DAY0 + 5 * 24 * H            # c4 (stored at 30 h, 72 h limit) is still stored at 5 days
    report = build_report([app, st], DAY0, end, keys=[DEVICE_KEY.public_key(), STATION_KEY.public_key()],
                          retention_hours={"short-test": 24}, now=end)
    t = report["triggers"]
    assert t["total"] == 4
    assert t["by_pattern"] == {"fight": 1, "kick": 1, "strike": 2}
    assert t["by_camera"] == {"cam-paradeplatz": 4}
    assert t["by_profile"] == {"bw-polg-44-4": 3, "short-test": 1}
    assert t["by_day"]["2026-03-01"] == 3 and t["by_day"]["2026-03-02"] == 1 and len(t["by_day"]) == 5
    assert report["not_permitted"] == {"total": 2, "by_pattern": {"fall": 1, "lying": 1},
                                       "by_rule": {"not-listed": 1, "patterns.fall.permitted": 1}}
    assert report["clips"]["stored"] == 4 and report["clips"]["exported"] == 1 and report["clips"]["deleted"] == 2
    assert report["clips"]["export_failed"] == 1
    assert report["accesses"] == [{"time": "2026-03-02T07:00:00.000000Z", "action": "export",
                                   "alarm": "cam-paradeplatz#1", "clip_id": "c1" * 8,
                                   "operator": "officer.k", "reason": "case 2026-114 <b>assault</b>",
                                   "device": "cam-paradeplatz", "outcome": "intact"},
                                  {"time": "2026-03-02T07:30:00.000000Z", "action": "export",
                                   "alarm": "cam-paradeplatz#1", "clip_id": "c3" * 8,
                                   "operator": "officer.m", "reason": "case 2026-115",
                                   "device": "cam-paradeplatz", "outcome": "failed: decrypt_failed"}]
    assert report["frames"] == {"analysed": 36000, "discarded": 9000}
    assert all(lg["intact"] for lg in report["logs"])
    ret = report["retention"]
    assert not ret["compliant"] and ret["clips_checked"] == 4
    by_clip = {v["clip_id"]: v for v in ret["violations"]}
    # c1 deleted on time; c2 held until 200 h (still within its hold at 5 days: compliant);
    # c3 deleted 33 h late; c4 (stored at 30 h) still stored past 102 h
    assert set(by_clip) == {"c3" * 8, "c4" * 8}
    assert by_clip["c3" * 8]["status"] == "deleted late" and by_clip["c3" * 8]["late_by_s"] == pytest.approx(
        (60 - 27.01) * H, abs=1)
    assert by_clip["c4" * 8]["status"] == "still stored past its limit"
    assert by_clip["c4" * 8]["deadline"] == utc_iso(DAY0 + 30.01 * H + 72 * H)


def test_report_window_and_hold_end(tmp_path):
    app, st = build_logs(tmp_path)
    # a window on day 2 only: one trigger; c1 and c3 were deleted later/earlier but are judged
    end = DAY0 + 48 * H
    report = build_report([app, st], DAY0 + 24 * H, end, retention_hours={"short-test": 24}, now=end)
    assert report["triggers"]["total"] == 1 and report["triggers"]["by_pattern"] == {"fight": 1}
    assert [h["clip_id"] for h in report["holds"]] == ["c2" * 8]
    # at 48 h only c3 is overdue: its station record names no profile, the appliance's trigger
    # record with the same envelope hash says short-test (24 h): expired at 27 h, still stored
    assert [v["clip_id"] for v in report["retention"]["violations"]] == ["c3" * 8]
    # after the hold ends (200 h) c2 is overdue
    late = DAY0 + 300 * H
    report = build_report([app, st], DAY0, late, now=late)
    statuses = {v["clip_id"]: v["status"] for v in report["retention"]["violations"]}
    assert statuses["c2" * 8] == "still stored past its limit"
    assert {v["clip_id"]: v["deadline"] for v in report["retention"]["violations"]}["c2" * 8] == \
        utc_iso(DAY0 + 200 * H)


def test_html_and_csv(tmp_path):
    app, st = build_logs(tmp_path)
    end = DAY0 + 5 * 24 * H
    report = build_report([app, st], DAY0, end, now=end)
    page = render_html(report)
    assert "<svg" in page and "<rect" in page and "triggers per day" in page
    assert "<script" not in page.lower() and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "case 2026-114 &lt;b&gt;assault&lt;/b&gt;" in page and "<b>assault" not in page
    assert "Retention NOT compliant: 2 clip(s)" in page
    rows = list(csv.reader(io.StringIO(render_csv(report))))
    assert rows[0] == ["section", "name", "value", "detail"]
    assert ["triggers", "total", "4", ""] in rows
    assert ["triggers_by_pattern", "strike", "2", ""] in rows
    # one alarm id (device#sequence) and human-readable times in the stated zone
    assert ["period", "time_zone", "UTC", "every time below is in this zone"] in rows
    assert ["access", "cam-paradeplatz#1", "export", ("2026-03-02 07:00:00 UTC operator=officer.k "
            "reason=case 2026-114 <b>assault</b> outcome=intact")] in rows
    assert sorted(r[1] for r in rows if r[0] == "retention_violation") == ["c3" * 8, "c4" * 8]
    report["accesses"][0]["alarm"] = "=HYPERLINK(\"http://x\")"     # a hostile value from a log
    rows = list(csv.reader(io.StringIO(render_csv(report))))
    assert next(r[1] for r in rows if r[0] == "access") == "'=HYPERLINK(\"http://x\")"


def test_report_marks_a_tampered_log(tmp_path):
    app, st = build_logs(tmp_path)
    rows = app.read_bytes().splitlines(keepends=True)
    del rows[3]
    app.write_bytes(b"".join(rows))
    report = build_report([app, st], DAY0, DAY0 + 5 * 24 * H, keys=[DEVICE_KEY.public_key()])
    lg = report["logs"][0]
    assert not lg["intact"] and "record 3 is missing" in lg["first_problem"]


# -- CLI -------------------------------------------------------------------------------


def write_pem(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(public_key_pem(key))
    return path


def test_cli_verify_exit_codes_and_messages(tmp_path, capsys):
    app, _ = build_logs(tmp_path)
    pub = write_pem(tmp_path / "device.pub", DEVICE_KEY)
    other = write_pem(tmp_path / "other.pub", STATION_KEY)
    cps = tmp_path / "station-checkpoints.json"
    assert main(["audit", "checkpoints", str(app)]) == 0
    cps.write_text(capsys.readouterr().out)
    assert len(json.loads(cps.read_text())) >= 3
    assert main(["audit", "verify", str(app), "--key", str(pub), "--checkpoints", str(cps)]) == 0
    assert capsys.readouterr().out.startswith("OK ")

    rows = app.read_bytes().splitlines(keepends=True)
    app.write_bytes(b"".join(rows[:-4]))                  # truncate the tail
    assert main(["audit", "verify", str(app), "--key", str(pub)]) == 0     # undetectable alone
    capsys.readouterr()
    assert main(["audit", "verify", str(app), "--key", str(pub), "--checkpoints", str(cps)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("TAMPERED ") and "truncated tail" in out and f"line {len(rows) - 3}" in out

    app.write_bytes(b"".join(rows))
    assert main(["audit", "verify", str(app), "--key", str(other), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert "signed by unknown key" in result["first_problem"]

    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "bad.pub").write_text("not a key")
    assert main(["audit", "verify", str(app), "--key", str(tmp_path / "bad.pub")]) == 2


def test_cli_report_formats(tmp_path, capsys):
    app, st = build_logs(tmp_path)
    for fmt in ("html", "csv", "json"):
        out = tmp_path / f"report.{fmt}"
        assert main(["audit", "report", str(app), str(st), "--from", "2026-03-01", "--to", "2026-03-06",
                     "--format", fmt, "-o", str(out)]) == 0
        assert out.stat().st_size > 500
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["triggers"]["total"] == 4 and data["period"]["from"] == "2026-03-01T00:00:00.000000Z"
    assert main(["audit", "report", str(app), "--from", "2026-03-05", "--to", "2026-03-01"]) == 2
    assert main(["audit", "report", str(app), "--from", "yesterday", "--to", "2026-03-01"]) == 2
