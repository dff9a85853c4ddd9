"""`make demo` as a newcomer runs it: `appliance demo --once` (what `make demo` runs, stopping
by itself) must show an alarm arriving and verified, the hug raising nothing, and end cleanly."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .docs_commands import APPLIANCE, ROOT


def test_make_demo_once_shows_the_product(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(APP\) demo\b", makefile, re.M), "make demo must run `appliance demo`"
    proc = subprocess.run([str(APPLIANCE), "demo", "--once", "--dir", str(tmp_path / "demo")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # the fight clip raises its alarm under the default detector and bw-polg-44-4 (issue 10 must keep it so)
    assert re.search(r"box: (fight|strike|kick|push|strangle) at .* permitted by bw-polg-44-4", out), out
    assert re.search(r"station: sealed clip of alarm demo-box-01#\d+ arrived", out), out
    assert "all SHA-256 match the sealed list: intact" in out and "signature valid" in out
    # the hug raises nothing and nothing leaves the box
    hug = out.split("two people hug", 1)[1]
    assert "permitted by" not in hug.split("[7]")[0] and "nothing raised: no clip was made" in hug
    assert re.search(r"box log: +OK ", out) and re.search(r"station log: +OK ", out)
    report = re.search(r"audit report .*: (\S+audit-report\.html)", out).group(1)
    page = (tmp_path / "demo" / "audit-report.html").read_text()
    assert report.endswith("audit-report.html") and "demo-box-01#" in page and "TAMPERED" not in page
    assert re.search(r"Demo done in \d+ s", out)
    # the console (issue 13) is started with a one-time login, and the alarm messages reach it
    assert re.search(r"Operator console: http://127\.0\.0\.1:\d+ +\(one-time demo login: user \S+, password \S+\)", out)
    assert re.search(r"station: alarm demo-box-01#\d+ arrived at once", out)
    # and a supervisor login whose password opens the full video (the evidence key wrapped under it)
    supervisor = re.search(r"a supervisor, who approves .*: user (\S+), password (\S+)", out)
    assert supervisor, out
    from appliance.station.console.custody import unwrap_key
    from appliance.station.console.store import ConsoleStore

    accounts = ConsoleStore(tmp_path / "demo" / "console")
    try:
        wrap = accounts.wrap(supervisor.group(1))
    finally:
        accounts.close()
    assert unwrap_key(wrap, supervisor.group(2)).kem == wrap.kem
    # --once stopped everything it started: the station's log says so
    assert "station stopped" in (tmp_path / "demo" / "logs" / "station.log").read_text()
    _layered_disclosure(tmp_path / "demo", out)


def _layered_disclosure(demo: Path, out: str) -> None:
    """Issue 13, layers 2 and 3: the real box sealed envelope version 2 (its bundle names the
    station's evidence key), the real station stored it, and export opened the redacted
    rendition with the station key and the full one only with the evidence key from custody."""
    from appliance.contracts.envelope import EnvelopeError, open_envelope, parse_envelope
    from appliance.contracts.keys import load_hpke_private_key, load_signing_public_key
    from appliance.station.keys import StationKeyPaths

    assert "rendition: redacted (envelope version 2): bystanders pixelated" in out, out
    assert "rendition: full (envelope version 2): bystanders visible" in out, out
    assert out.count("all SHA-256 match the sealed list: intact") == 2      # frame hashes, per rendition
    custody = demo / "evidence-custody" / "evidence.key"
    station = demo / "station"
    assert custody.exists() and not any(p.name.startswith("evidence.key") for p in station.rglob("*"))
    stored = sorted((station / "envelopes").rglob("*.env"))
    assert len(stored) == 1
    data = stored[0].read_bytes()
    assert parse_envelope(data).header.version == 2
    device_key = load_signing_public_key(demo / "box" / "state" / "pixel" / "device-signing.pub")
    station_key = load_hpke_private_key(StationKeyPaths.of(station).hpke_private)
    try:
        open_envelope(data, station_key, device_key, rendition="full")
        raise AssertionError("the station key opened the full rendition")
    except EnvelopeError as exc:
        assert exc.reason == "wrong_key"
    exports = {p.name: p for p in (demo / "export").iterdir()}
    redacted = next(p for n, p in exports.items() if n.endswith(".webm") and ".full." not in n)
    full = next(p for n, p in exports.items() if n.endswith(".full.webm"))
    assert redacted.read_bytes() != full.read_bytes()
    report = json.loads(next(p for n, p in exports.items() if n.endswith(".full.report.json")).read_text())
    assert (report["rendition"], report["verdict"], report["operator"]) == ("full", "intact", "demo-supervisor")
    meta = json.loads(next(p for n, p in exports.items() if n.endswith(".metadata.json") and ".full." not in n)
                      .read_text())
    assert meta["rendition"] == "redacted" and meta["pixelated_tracks"] and meta["involved_boxes"]
    assert not set(meta["pixelated_tracks"]) & set(meta["involved_boxes"])
    audit = (station / "audit.jsonl").read_text()
    assert '"rendition":"full"' in audit and '"key":"evidence"' in audit and '"rendition":"redacted"' in audit
