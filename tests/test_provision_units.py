"""Provisioning pieces: example config, init, request verification, preview, check rows."""

from __future__ import annotations

import dataclasses
import json
import stat
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomli_w

from appliance.box.config import AppConfig, ConfigError, load_config
from appliance.box.provision.check import format_table, run_checks
from appliance.box.provision.enrolment import build_request, init_device
from appliance.box.provision.preview import render_preview, write_preview
from appliance.cli import main
from appliance.common.errors import InputError
from appliance.contracts.enrolment import parse_request
from appliance.contracts.layout import DeviceLayout
from appliance.station.devices import station_add_device

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "provisioning" / "appliance.example.toml"
VIDEO = REPO / "samples" / "demo_skeleton.mp4"


def test_example_config_is_valid_and_exercises_every_section():
    cfg = load_config(EXAMPLE)
    doc = tomllib.loads(EXAMPLE.read_text())
    for f in dataclasses.fields(AppConfig):
        assert f.name in doc, f"example lacks [{f.name}]"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):  # every key of every section is spelled out
            assert set(doc[f.name]) == {g.name for g in dataclasses.fields(value)}, f.name
    assert len(cfg.zones) >= 2 and len(cfg.privacy_masks) >= 2
    assert cfg.spool_dir == Path("/var/lib/appliance/spool")


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    doc = tomllib.loads(EXAMPLE.read_text())
    doc["camera"]["sorce"] = "x"
    doc["analysis"]["fps"] = 0
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "camera.sorce: unknown key" in text and "analysis.fps = 0" in text and "must be >= 0.5 (fix:" in text


def init(tmp_path: Path, **kw) -> Path:
    cfg = tmp_path / "appliance.toml"
    init_device(cfg, device_id="unit-dev-01", state_dir=str(tmp_path / "state"), camera=str(VIDEO), **kw)
    return cfg


def test_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path):
    cfg_path = init(tmp_path)
    layout = DeviceLayout(tmp_path / "state")
    for key in (layout.signing_key, layout.curve_secret):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.pixel_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(layout.uplink_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(layout.spool_dir.stat().st_mode) == 0o2770
    assert stat.S_IMODE(layout.audit_log.stat().st_mode) == 0o660
    cfg = load_config(cfg_path)
    assert cfg.device.id == "unit-dev-01" and cfg.seal.signing_key == str(layout.signing_key)
    key_bytes = layout.signing_key.read_bytes()
    with pytest.raises(InputError, match="already exist"):
        init(tmp_path)
    assert layout.signing_key.read_bytes() == key_bytes
    assert not layout.rotations.exists()


def test_init_rejects_bad_ids_and_bad_config_before_creating_keys(tmp_path):
    with pytest.raises(InputError, match="not usable"):
        init_device(tmp_path / "a.toml", device_id="has space", state_dir=str(tmp_path / "s1"))
    bad = tmp_path / "b.toml"
    bad.write_text('[device]\nid = "dev-1"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"device\.colour: unknown key"):
        init_device(bad, state_dir=str(tmp_path / "s2"))
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_enrolment_request_is_self_signed_and_tampering_is_refused(tmp_path):
    cfg = load_config(init(tmp_path))
    data = build_request(cfg)
    req = parse_request(data)
    assert req.device_id == "unit-dev-01" and req.body["camera"]["kind"] == "file"
    doc = json.loads(data)
    doc["body"]["curve_public"] = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    with pytest.raises(InputError, match="signature does not verify"):
        parse_request(json.dumps(doc).encode())
    # the station registers nothing for a refused request
    from appliance.station.keys import generate_station_keys
    from appliance.station.registry import DeviceRegistry

    station = tmp_path / "station"
    generate_station_keys(station, kem="X25519")
    with pytest.raises(InputError, match="signature does not verify"):
        station_add_device(station, json.dumps(doc).encode(), endpoint="tcp://127.0.0.1:7100",
                           allowed_profiles=["bw-polg-44-4"])
    with pytest.raises(InputError, match="unknown legal profile"):
        station_add_device(station, data, endpoint="tcp://127.0.0.1:7100", allowed_profiles=["nope"])
    with pytest.raises(InputError, match="tcp://HOST:PORT"):
        station_add_device(station, data, endpoint="127.0.0.1:7100", allowed_profiles=["bw-polg-44-4"])
    registry = DeviceRegistry(station)
    assert registry.list_devices() == []
    registry.close()


def test_camera_password_is_redacted_in_the_request(tmp_path):
    cfg_path = tmp_path / "appliance.toml"
    init_device(cfg_path, device_id="unit-dev-02", state_dir=str(tmp_path / "state"),
                camera="rtsp://viewer:s3cret@192.0.2.10:554/stream1")
    body = parse_request(build_request(load_config(cfg_path))).body
    # the password is not even in the config any more (issue 12): camera.password_file has it
    assert body["camera"]["kind"] == "network" and "s3cret" not in json.dumps(body)
    assert body["camera"]["source"] in ("rtsp://viewer@192.0.2.10:554/stream1", "rtsp://***@192.0.2.10:554/stream1")


def masked_config(tmp_path: Path) -> Path:
    cfg_path = init(tmp_path)
    doc = tomllib.loads(cfg_path.read_text())
    doc["privacy_masks"] = [{"name": "left", "polygon": [[0, 0], [0.25, 0], [0.25, 1], [0, 1]]}]
    doc["zones"] = [{"name": "centre", "polygon": [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]]}]
    cfg_path.write_text(tomli_w.dumps(doc))
    return cfg_path


def test_preview_burns_masks_in_and_is_recorded(tmp_path):
    cfg_path = masked_config(tmp_path)
    out = tmp_path / "preview.png"
    entry = write_preview(cfg_path, out)
    image = cv2.imread(str(out))
    h, w = image.shape[:2]
    assert (entry["width"], entry["height"]) == (w, h) == (960, 540)
    strip = slice(0, int(w * 0.25) - 2)
    assert (image[:, strip] == 0).mean() > 0.8               # masked strip is black but for grid and labels
    assert image[:, int(w * 0.3):].max() > 50                 # the rest shows the scene
    # no scene pixel shows through the mask: grid and labels are drawn the same on any scene
    cfg = load_config(cfg_path)
    scene = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    a, b = render_preview(cfg, scene), render_preview(cfg, 255 - scene)
    assert np.array_equal(a[:, strip], b[:, strip]) and not np.array_equal(a[:, int(w * 0.3):], b[:, int(w * 0.3):])
    assert entry["warnings"] == [] and entry["reason"].startswith("installation")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    log = [json.loads(line) for line in DeviceLayout(tmp_path / "state").provision_log.read_text().splitlines()]
    assert log[-1]["action"] == "preview" and log[-1]["masks"] == ["left"] and log[-1]["out"] == str(out)
    audit = DeviceLayout(tmp_path / "state").audit_log.read_text()
    assert "provision.preview" in audit
    with pytest.raises(InputError, match=r"\.png or \.jpg"):
        write_preview(cfg_path, tmp_path / "preview.bmp")


def test_render_preview_outlines_zones_without_touching_masks(tmp_path):
    cfg = load_config(masked_config(tmp_path))
    frame = np.full((100, 200, 3), 200, np.uint8)
    out = render_preview(cfg, frame)
    other = render_preview(cfg, np.full_like(frame, 90))
    # the masked strip shows only the grid and the mask's label, the same whatever the scene
    assert np.array_equal(out[:, :48], other[:, :48]) and (out[:, :48] == 0).mean() > 0.5
    assert out[50, 40 * 2 + 1].tolist() != [200, 200, 200]
    assert frame.min() == 200  # input untouched


def test_check_reports_a_broken_config_as_fail_rows(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nsource = 3\n")
    results = run_checks(bad)
    assert not any(r.ok for r in results) and results[0].name == "config"
    assert "camera.source = 3" in results[0].detail
    assert "Traceback" not in format_table(results)


def test_check_rows_are_independent(tmp_path, capsys):
    """No camera, no station bundle: those rows fail with reasons, the others still pass."""
    cfg_path = init(tmp_path)
    doc = tomllib.loads(cfg_path.read_text())
    doc["camera"]["source"] = str(tmp_path / "missing.mp4")
    doc["analysis"] = {"fps": 0.5}
    doc["spool"]["max_bytes"] = 16 * 1024 * 1024
    cfg_path.write_text(tomli_w.dumps(doc))
    rows = {r.name: r for r in run_checks(cfg_path)}
    assert not rows["camera"].ok and "no such file" in rows["camera"].detail
    assert not rows["tamper reference"].ok and "no such file" in rows["tamper reference"].detail
    assert rows["analysis fps"].ok and "grey frame" in rows["analysis fps"].detail
    assert rows["model hash"].ok and rows["clock"].ok and rows["spool space"].ok
    assert not rows["profile and zones"].ok and "no station bundle" in rows["profile and zones"].detail
    assert not rows["keys"].ok and "provision import" in rows["keys"].detail
    assert not rows["station"].ok and "uplink.endpoint is empty" in rows["station"].detail
    assert main(["provision", "check", "--config", str(cfg_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_network_command_writes_both_dropins(tmp_path, capsys):
    cfg_path = tmp_path / "appliance.toml"
    init_device(cfg_path, device_id="unit-dev-03", state_dir=str(tmp_path / "state"),
                camera="rtsp://192.0.2.10/stream")
    doc = tomllib.loads(cfg_path.read_text())
    doc["uplink"]["endpoint"] = "tcp://203.0.113.5:7100"
    cfg_path.write_text(tomli_w.dumps(doc))
    assert main(["provision", "network", "--config", str(cfg_path), "--unit-dir", str(tmp_path / "u")]) == 0
    pixel = (tmp_path / "u/appliance-pixel.service.d/10-camera.conf").read_text()
    uplink = (tmp_path / "u/appliance-uplink.service.d/10-station.conf").read_text()
    assert "IPAddressAllow=192.0.2.10" in pixel and "IPAddressAllow=203.0.113.5" in uplink


def test_preview_warns_about_a_zone_under_masks(tmp_path):
    cfg_path = masked_config(tmp_path)
    doc = tomllib.loads(cfg_path.read_text())
    doc["zones"].append({"name": "hidden", "polygon": [[0.05, 0.1], [0.2, 0.1], [0.2, 0.3], [0.05, 0.3]]})
    cfg_path.write_text(tomli_w.dumps(doc))
    entry = write_preview(cfg_path, tmp_path / "p.png", reason="site survey 2026-12-01")
    assert len(entry["warnings"]) == 1 and "'hidden' lies entirely under privacy masks" in entry["warnings"][0]
    assert "site survey 2026-12-01" in DeviceLayout(tmp_path / "state").audit_log.read_text()


def test_a_bundle_with_several_receivers_provisions_failover_endpoints(tmp_path):
    from appliance.box.provision.enrolment import import_bundle
    from appliance.station.keys import generate_station_keys

    cfg_path = init(tmp_path)
    station = tmp_path / "station"
    generate_station_keys(station, kem="X25519")
    receivers = ["tcp://127.0.0.1:7100", "tcp://127.0.0.2:7100"]
    with pytest.raises(InputError, match="each station endpoint once"):
        station_add_device(station, build_request(load_config(cfg_path)), endpoint=receivers * 2,
                           allowed_profiles=["bw-polg-44-4"])
    added = station_add_device(station, build_request(load_config(cfg_path)), endpoint=receivers,
                               allowed_profiles=["bw-polg-44-4"])
    units = tmp_path / "units"
    result = import_bundle(cfg_path, added.bundle, added.station_fingerprint, unit_dir=units)
    cfg = load_config(cfg_path)
    assert cfg.uplink.endpoint == receivers[0] and cfg.station.endpoints == tuple(receivers)
    assert cfg.station_endpoints == tuple(receivers) and result.config.station.endpoints == tuple(receivers)
    dropin = (units / "appliance-uplink.service.d" / "10-station.conf").read_text()
    assert "IPAddressAllow=127.0.0.1" in dropin and "IPAddressAllow=127.0.0.2" in dropin
