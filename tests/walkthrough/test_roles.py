"""One walk-through per role, running the README's "Walk-through on one machine" blocks and
docs/provisioning.md's enrolment literally (see docs_commands.py) and checking what a person
would look at in the output.

The README's blocks build on each other (station → box → alarm → officer), so one module-wide
walk runs them in order; each role's test asks for the blocks it needs and checks its own.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .docs_commands import ROOT, Shell, fenced_blocks, free_port, indented_commands, section

README = (ROOT / "README.md").read_text()
WALK = fenced_blocks(section(README, "## Walk-through on one machine, role by role"))
FINGERPRINT = r"[0-9a-f]{4}:[0-9a-f]{4}:[0-9a-f]{4}:[0-9a-f]{4}"
DOC_DEVICE_FP, DOC_STATION_FP = "8a41:0c2f:95d3:e1b7", "3fa2:91c0:7be4:0d15"


class Walk:
    """The README's walk-through blocks, run in order, each once."""

    def __init__(self, tmp):
        self.shell = Shell(tmp, {"samples/": f"{ROOT}/samples/", "tcp://127.0.0.1:7100": f"tcp://127.0.0.1:{free_port()}"})
        self.done: list[list] = []

    def upto(self, n: int) -> list[list]:
        while len(self.done) <= n:
            i = len(self.done)
            ran = [self.shell.run(cmd, check=not cmd.startswith("appliance provision check")) for cmd in WALK[i]]
            for r in ran:                   # what the person reads out, the next person types
                if "provision enrol" in r.command:
                    self.shell.subs[DOC_DEVICE_FP] = re.search(rf"signing ({FINGERPRINT})", r.out).group(1)
                if "devices add" in r.command:
                    self.shell.subs[DOC_STATION_FP] = re.search(
                        rf"station fingerprint \(read it to the technician\): ({FINGERPRINT})", r.out).group(1)
            self.done.append(ran)
        return self.done

    def config(self):
        return self.shell.cwd / "walk" / "box.toml"


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    w = Walk(tmp_path_factory.mktemp("walk"))
    yield w
    w.shell.close()


def test_readme_walkthrough_has_the_roles_blocks():
    assert len(WALK) == 7, "the README walk-through changed shape: update tests/walkthrough/test_roles.py"
    assert WALK[1][0].startswith("appliance provision init") and WALK[6][0].startswith("appliance audit verify")


def test_field_technician(walk, tmp_path):
    """Provisioning from the README, a comment and a polygon surviving `import`, the two
    fingerprint checks, preview, check; and docs/provisioning.md's enrolment against a station
    that is down (check must say why)."""
    station, box = walk.upto(1)
    assert "station keys written" in station[0].out and "devices receive the public keys inside the signed" in station[0].out
    init, enrol = box
    assert "next: appliance provision enrol" in init.out
    assert "next: carry walk-box-01.enrol.json to the station" in enrol.out

    # the technician edits the config between init and import: comments and layout must survive
    cfg = walk.config()
    edit = ("\n# north pavement: the tram stop, where fights were reported\n"
            "[[zones]]\nname = \"tram-stop\"\npolygon = [[0.0, 0.3], [1.0, 0.3], [1.0, 1.0], [0.0, 1.0]]\n")
    cfg.write_text(cfg.read_text() + edit)

    add, = walk.upto(2)[2]
    assert "matches the one you gave" in add.out and "next, on the box: appliance provision import" in add.out

    # a wrong station fingerprint is refused and never shows the right one
    wrong = walk.shell.run("appliance provision import walk/bundle.json --config walk/box.toml "
                           "--station-fingerprint 0000:1111:2222:3333", check=False)
    right = walk.shell.subs[DOC_STATION_FP]
    assert wrong.returncode == 2 and "not signed by the station whose fingerprint you typed" in wrong.out
    assert right not in wrong.out and right.replace(":", "") not in wrong.out

    imp, preview, check = walk.upto(3)[3]
    assert "station bundle verified" in imp.out and "next: appliance provision preview" in imp.out
    text = cfg.read_text()
    assert edit.strip() in text, "provision import must keep the technician's comment and one-line polygon"
    assert "station_curve_public" in text
    assert "walk/preview.png (626x360" in preview.out and (walk.shell.cwd / "walk/preview.png").stat().st_size > 10_000
    assert "next: look at the image" in preview.out and "WARNING" not in preview.out
    # the table: nothing interleaved (every line a row, the header or the summary), station reached
    table = check.stdout.splitlines()
    assert table[0].startswith("check") and re.fullmatch(r"\d+ passed, \d+ failed", table[-2]), check.stdout
    assert all(re.match(r"\S.*\s(PASS|FAIL)\s", ln) for ln in table[1:-2]), check.stdout
    assert re.search(r"^station\s+PASS\s", check.stdout, re.M) and re.search(r"^camera\s+PASS\s", check.stdout, re.M)
    assert "checking station: probing the station" in check.stderr and table[-1].startswith("next:")

    # docs/provisioning.md's five steps, system paths moved into a temp dir, station not running
    steps = indented_commands(section((ROOT / "docs/provisioning.md").read_text(), "## Enrolment in five steps"))
    assert [s.split()[:3] for s in steps[:3]] == [["appliance", "provision", "init"], ["appliance", "provision", "enrol"],
                                                 ["appliance", "station", "devices"]]
    port = free_port()
    doc = Shell(tmp_path, {"/etc/appliance/appliance.toml": f"{tmp_path}/etc/appliance.toml",
                           "/var/lib/appliance": f"{tmp_path}/var", "/srv/station": f"{tmp_path}/srv-station",
                           "/etc/systemd/system": f"{tmp_path}/units", "/root/masks.png": f"{tmp_path}/masks.png",
                           "rtsp://viewer:PASS@192.0.2.10:554/stream1": f"{ROOT}/samples/demo_skeleton.mp4",
                           "tcp://203.0.113.5:7100": f"tcp://127.0.0.1:{port}"})
    doc.run(f"appliance station keygen --station-dir {tmp_path}/srv-station")
    ran = {}
    for cmd in steps:
        if cmd.startswith("systemctl"):
            continue                                     # systemd is not PID 1 here
        r = doc.run(cmd, check=not cmd.startswith("appliance provision check"))
        ran[cmd.split()[2]] = r
        if cmd.startswith("appliance provision enrol"):
            doc.subs[DOC_DEVICE_FP] = re.search(rf"signing ({FINGERPRINT})", r.out).group(1)
        if cmd.startswith("appliance station devices add"):
            doc.subs[DOC_STATION_FP] = re.search(rf"technician\): ({FINGERPRINT})", r.out).group(1)
    check = ran["check"]
    assert check.returncode == 1
    row = re.search(r"^station\s+FAIL\s+(.*)$", check.stdout, re.M).group(1)
    assert f"nothing listens on 127.0.0.1 port {port}" in row and "is the station receiver running" in row
    assert "next: fix the FAIL rows" in check.stdout


def test_station_operator(walk):
    """The box runs on the video file, the alarm reaches the station, `station list` shows it
    with its columns, `export` opens it for a named operator with a reason."""
    uplink, run = walk.upto(4)[4]
    assert "ALARM" in run.stderr and re.search(r"end of file .*: .* \d+ analysed at 10 fps; .* [1-9]\d* clip\(s\) sealed",
                                                run.stdout), run.out
    # the uplink delivers within seconds; a person would run `station list` again
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = walk.shell.run("appliance station list --station-dir walk/station --json").stdout.splitlines()
        if rows:
            break
        time.sleep(0.5)
    assert rows, "no clip reached the station within 60 s"
    listing, export = walk.upto(5)[5]
    header, first = listing.stdout.splitlines()[:2]
    assert header.split()[:4] == ["ALARM", "CLIP", "ID", "DEVICE"] and "EXPIRES" in header and "HELD" in header
    assert "VIEWED" in header and first.startswith("walk-box-01#1 ") and "never" in first
    assert "INCOMPLETE (" in first     # a 2-s file cannot hold the 5-s pre- and post-roll (docs/clip.md)
    assert "signature valid" in export.out and "all SHA-256 match the sealed list: intact" in export.out
    assert "next: watch " in export.out and "next: the uplink delivers them" in run.stdout
    assert "INCOMPLETE clip: the trigger asked for" in export.out and "the stream ended" in export.out
    assert any((walk.shell.cwd / "walk/export").glob("*.webm"))
    after = walk.shell.run("appliance station list --station-dir walk/station").stdout.splitlines()[1]
    assert re.search(r"\s1x\s", after)
    refused = walk.shell.run("appliance station export walk-box-01#1 walk/export2 --station-dir walk/station "
                             "--operator kim", check=False)
    assert refused.returncode == 2 and "access refused" in refused.out


def test_data_protection_officer(walk):
    """Both logs verify, a hold shows in the dry run with its deletion date, the report names
    the alarm from trigger to access, the refused attempt, the preview, the legal basis."""
    verify_box, verify_station, hold, dry, report = walk.upto(6)[6]
    assert verify_box.stdout.startswith("OK ") and "station checkpoints matched" in verify_box.stdout
    assert verify_station.stdout.startswith("OK ")
    assert hold.stdout.startswith("hold #1 on ")
    assert re.search(r"legal hold #1 by dpo\.meyer until 2027-01-3\d .*; deleted after 2027-01-3", dry.stdout), dry.out
    assert "0 would delete, 1 under legal hold" in dry.stderr
    html = (walk.shell.cwd / "walk/report.html").read_text()
    assert "All times in time zone" in html and "walk-box-01#1" in html and "TAMPERED" not in html
    assert "case 2026-0042: checking the alarm" in html and "Refused access attempts (1)" in html
    assert ("installation: checking privacy masks and zones" in html and "Polizeigesetz" in html) or "PolG" in html
    js = walk.shell.run("appliance audit report walk/box/audit/audit.jsonl walk/station/audit.jsonl --format json")
    rep = json.loads(js.stdout)
    run_summary = walk.done[4][1].stdout
    analysed = int(re.search(r"(\d+) analysed at", run_summary).group(1))
    assert rep["frames"]["analysed"] == analysed > 0
    alarms = {t["alarm"] for t in rep["triggers"]["list"]}
    assert "walk-box-01#1" in alarms and rep["accesses"][0]["alarm"] == "walk-box-01#1"
    assert rep["refused_accesses"][0]["alarm"] == "walk-box-01#1"
    assert rep["legal_basis"][0]["profile"] == "bw-polg-44-4" and rep["legal_basis"][0]["legal_basis"]
    assert all(c["expires_at"] for c in rep["retention"]["clips"]) and rep["retention"]["clips"]
