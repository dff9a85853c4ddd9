"""End to end on loopback: init → enrol → station `devices add` → import → check passes against
a station started by the test; tampered or foreign bundles are refused and change nothing."""

from __future__ import annotations

import base64
import json
import threading
import tomllib
from pathlib import Path

import pytest
import tomli_w

from appliance.box.provision.enrolment import import_bundle
from appliance.cli import main
from appliance.common.errors import InputError
from appliance.contracts.canonical import canonical_json
from appliance.contracts.enrolment import BUNDLE_CONTEXT, normalise_fingerprint
from appliance.contracts.keys import public_key_fingerprint, raw_public
from appliance.contracts.layout import DeviceLayout
from appliance.station.keys import generate_station_keys
from appliance.station.server import StationServer

REPO = Path(__file__).resolve().parent.parent
VIDEO = REPO / "samples" / "demo_skeleton.mp4"
PROFILE = "bw-polg-44-4"


@pytest.fixture
def station(tmp_path):
    station_dir = tmp_path / "station"
    generate_station_keys(station_dir, kem="X25519")
    server = StationServer(station_dir, "tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(20), "station did not start"
    yield station_dir, server
    server.stop()
    thread.join(20)
    assert not thread.is_alive()


def run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def provision_device(tmp_path: Path, capsys, station_dir: Path, endpoint: str) -> tuple[Path, Path, str]:
    """init → (technician sets masks, a slow-machine fps target) → enrol → station devices add."""
    cfg = tmp_path / "etc" / "appliance.toml"
    code, out = run(capsys, "provision", "init", "--config", str(cfg), "--device-id", "test-dev-01",
                    "--state-dir", str(tmp_path / "state"), "--camera", str(VIDEO),
                    "--description", "test rig")
    assert code == 0, out
    doc = tomllib.loads(cfg.read_text())
    # analysis.fps = 1: the check measures the real model, but a busy CI machine must pass too
    doc["analysis"] = {"fps": 1.0}
    doc["spool"]["max_bytes"] = 16 * 1024 * 1024
    doc["uplink"]["ack_timeout_s"] = 3.0
    doc["privacy_masks"] = [{"name": "top-band", "polygon": [[0, 0], [1, 0], [1, 0.2], [0, 0.2]]}]
    doc["zones"] = [{"name": "lower-half", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}]
    cfg.write_text(tomli_w.dumps(doc))

    request = tmp_path / "test-dev-01.enrol.json"
    code, out = run(capsys, "provision", "enrol", "--config", str(cfg), "--out", str(request))
    assert code == 0, out
    body = json.loads(request.read_text())["body"]
    assert "PRIVATE" not in request.read_text() and body["model"]["name"] == "yolo11n-pose-int8"

    bundle = tmp_path / "bundle.json"
    code, out = run(capsys, "station", "devices", "add", str(request), "--dir", str(station_dir),
                    "--endpoint", endpoint, "--profile", PROFILE, "--out", str(bundle))
    assert code == 0, out
    fingerprint = out.split("read it to the technician): ")[1].split()[0]
    return cfg, bundle, fingerprint


def state_snapshot(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "state"
    files = {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    cfg = tmp_path / "etc" / "appliance.toml"
    files[str(cfg)] = cfg.read_bytes()
    return files


def test_enrol_import_and_check_against_a_live_station(tmp_path, capsys, station):
    station_dir, server = station
    cfg, bundle, fingerprint = provision_device(tmp_path, capsys, station_dir, server.endpoint)
    before = state_snapshot(tmp_path)

    # 1. a tampered bundle (endpoint redirected) is refused and changes nothing
    doc = json.loads(bundle.read_text())
    doc["body"]["endpoint"] = "tcp://198.51.100.66:7100"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    code, out = run(capsys, "provision", "import", str(tampered), "--config", str(cfg),
                    "--station-fingerprint", fingerprint)
    assert code == 2 and "signature does not verify" in out, out
    assert state_snapshot(tmp_path) == before

    # 2. the right bundle with a wrong fingerprint typed is refused
    wrong = "0000:0000:0000:0000"
    code, out = run(capsys, "provision", "import", str(bundle), "--config", str(cfg),
                    "--station-fingerprint", wrong)
    assert code == 2 and "not signed by the station whose fingerprint you typed" in out, out
    # a wrong fingerprint never prints the right one (a hurried technician would copy it)
    assert normalise_fingerprint(fingerprint) not in normalise_fingerprint(out), out
    assert state_snapshot(tmp_path) == before

    # 3. import with the fingerprint the station printed (colons/case do not matter)
    units = tmp_path / "units"
    code, out = run(capsys, "provision", "import", str(bundle), "--config", str(cfg),
                    "--station-fingerprint", fingerprint.upper().replace(":", " "), "--unit-dir", str(units))
    assert code == 0, out
    station_conf = (units / "appliance-uplink.service.d" / "10-station.conf").read_text()
    assert "IPAddressAllow=127.0.0.1" in station_conf
    assert "PrivateNetwork=yes" in (units / "appliance-pixel.service.d" / "10-camera.conf").read_text()

    # 4. the on-site check passes against the live station
    code, out = run(capsys, "provision", "check", "--config", str(cfg))
    assert code == 0, out
    for name in ("camera", "analysis fps", "model hash", "profile and zones", "tamper reference", "keys", "station",
                 "clock", "spool space"):
        assert any(line.startswith(name) and " PASS " in line for line in out.splitlines()), (name, out)
    # The tamper reference is recorded in the device layout: features and statistics, no image.
    reference = tmp_path / "state" / "pixel" / "tamper-reference.json"
    ref_doc = json.loads(reference.read_text())
    assert list(ref_doc["modes"]) == ["day"] and ref_doc["modes"]["day"]["source"] == "provision"
    assert reference.stat().st_mode & 0o777 == 0o600 and reference.stat().st_size < 80_000
    tamper_row = next(line for line in out.splitlines() if line.startswith("tamper reference"))
    assert "day reference recorded" in tamper_row and "no image" in tamper_row and "night" in tamper_row
    assert "signed probe acknowledged" in out and "0 failed" in out
    # The sample is a 1920x1080 "camera": the technician is told to pick a smaller stream.
    camera_row = next(line for line in out.splitlines() if line.startswith("camera"))
    assert "camera sends 1920x1080" in camera_row and "second stream at <= 960 px" in camera_row
    # the probe was answered without storing anything
    assert not list((station_dir / "envelopes").rglob("*.env")) if (station_dir / "envelopes").exists() else True

    # 5. station gone: the station row fails with a reason, the rest still run, exit 1
    server.stop()
    code, out = run(capsys, "provision", "check", "--config", str(cfg))
    assert code == 1
    station_row = next(line for line in out.splitlines() if line.startswith("station"))
    assert " FAIL " in station_row and "Traceback" not in out
    assert next(line for line in out.splitlines() if line.startswith("model hash")).count("PASS") == 1


def test_a_bundle_re_signed_by_another_station_is_refused(tmp_path, capsys, station):
    """An attacker who swaps in their own keys and re-signs cannot match the typed fingerprint."""
    station_dir, server = station
    cfg, bundle, fingerprint = provision_device(tmp_path, capsys, station_dir, server.endpoint)
    other = tmp_path / "evil-station"
    generate_station_keys(other, kem="X25519")
    from appliance.contracts.keys import load_signing_key

    evil_key = load_signing_key(other / "keys" / "signing.key")
    doc = json.loads(bundle.read_text())
    doc["body"]["station_signing_public"] = base64.b64encode(raw_public(evil_key.public_key())).decode()
    doc["body"]["endpoint"] = "tcp://198.51.100.66:7100"
    doc["signature"] = base64.b64encode(evil_key.sign(BUNDLE_CONTEXT + canonical_json(doc["body"]))).decode()
    before = state_snapshot(tmp_path)
    with pytest.raises(InputError, match="not signed by the station whose fingerprint you typed"):
        import_bundle(cfg, json.dumps(doc).encode(), fingerprint)
    assert state_snapshot(tmp_path) == before
    # the fingerprint is the trust anchor: the bundle's own claim is only shown, never trusted
    from appliance.box.provision.enrolment import bundle_fingerprint
    assert bundle_fingerprint(json.dumps(doc).encode()) == public_key_fingerprint(evil_key) != fingerprint


def test_an_unenrolled_device_fails_the_station_check(tmp_path, capsys, station):
    """Keys rotated after enrolment: import refuses the old bundle; the station refuses the handshake."""
    station_dir, server = station
    cfg, bundle, fingerprint = provision_device(tmp_path, capsys, station_dir, server.endpoint)
    code, out = run(capsys, "provision", "import", str(bundle), "--config", str(cfg),
                    "--station-fingerprint", fingerprint)
    assert code == 0, out
    code, out = run(capsys, "provision", "init", "--config", str(cfg))
    assert code == 2 and "already exist" in out
    code, out = run(capsys, "provision", "init", "--config", str(cfg), "--force")
    assert code == 0 and "rotated" in out, out
    rotations = (DeviceLayout(tmp_path / "state").rotations).read_text().splitlines()
    assert len(rotations) == 1 and json.loads(rotations[0])["old"] != json.loads(rotations[0])["new"]
    with pytest.raises(InputError, match="other device keys"):
        import_bundle(cfg, bundle.read_bytes(), fingerprint)
    code, out = run(capsys, "provision", "check", "--config", str(cfg))
    assert code == 1
    station_row = next(line for line in out.splitlines() if line.startswith("station"))
    assert " FAIL " in station_row, out
