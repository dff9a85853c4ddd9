"""Licence view: `models list` shows each model's licence, `provision check` warns when a box runs
an AGPL model, and NOTICE lists every shipped model with its terms."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

from appliance.box.pose import load_manifest
from appliance.box.provision.check import format_table, run_checks
from appliance.box.provision.enrolment import init_device
from appliance.cli import main
from tests.conftest import ROOT, WALK_CLIP


def test_models_list_shows_every_licence_and_marks_agpl(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for entry in load_manifest().values():
        line = next(line for line in out.splitlines() if line.startswith(entry.name + " "))
        assert f"licence {entry.licence}" in line
        assert (" AGPL licence" in line) == entry.agpl
    assert "movenet-multipose-lightning" in out and "Apache-2.0" in out and "yolox-nano" in out


def test_notice_lists_every_shipped_model_and_its_terms():
    notice = (ROOT / "NOTICE").read_text()
    for entry in load_manifest().values():
        assert f"models/{entry.path.name}" in notice, entry.name
    for licence_file in (ROOT / "models" / "licences").iterdir():
        assert f"models/licences/{licence_file.name}" in notice or "models/licences/" in notice


def _config(tmp_path: Path, **pose) -> Path:
    cfg = tmp_path / "appliance.toml"
    init_device(cfg, device_id="lic-dev-01", state_dir=str(tmp_path / "state"), camera=str(WALK_CLIP))
    doc = tomllib.loads(cfg.read_text())
    doc["analysis"] = {"fps": 0.5}
    doc.setdefault("pose", {}).update(pose)
    cfg.write_text(tomli_w.dumps(doc))
    return cfg


def test_check_warns_when_the_box_runs_an_agpl_model(tmp_path):
    rows = {r.name: r for r in run_checks(_config(tmp_path))}
    row = rows["model hash"]
    assert row.ok and "AGPL-3.0" in row.warning and "pose.model = 'yolo11n-pose-int8'" in row.warning
    assert "movenet-multipose-lightning" in row.warning          # the fix names the permissive model
    table = format_table(list(rows.values())).splitlines()
    model_row = next(line for line in table if line.startswith("model hash"))
    assert " PASS " in model_row and "; WARNING: this box runs an AGPL-3.0 model" in model_row


def test_check_does_not_warn_for_a_permissive_stack(tmp_path):
    cfg = _config(tmp_path / "a", model="movenet-multipose-lightning")
    doc = tomllib.loads(cfg.read_text())
    doc["objects"] = {"enabled": True}
    cfg.write_text(tomli_w.dumps(doc))
    row = {r.name: r for r in run_checks(cfg)}["model hash"]
    assert row.ok and row.warning == ""
    assert "movenet-multipose-lightning" in row.detail and "yolox-nano" in row.detail
    assert "fight-window-lr" in row.detail
