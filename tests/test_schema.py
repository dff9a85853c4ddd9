"""The one TOML validation mechanism (appliance.common.schema) over config, profiles and manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.box.config import ConfigError, parse_config
from appliance.box.pose.manifest import load_manifest
from appliance.common.errors import ModelError
from appliance.contracts import profile, settings

ROOT = Path(__file__).resolve().parent.parent


def test_manifest_refuses_unknown_keys_and_names_the_fix(tmp_path):
    text = (ROOT / "models" / "manifest.toml").read_text(encoding="utf-8")
    (tmp_path / "manifest.toml").write_text(text.replace('task = "multi-person 2D pose"', 'tsak = "typo"', 1),
                                            encoding="utf-8")
    with pytest.raises(ModelError, match=r"model\[0\]\.tsak: unknown key \(fix: remove it or use one of: .*task"):
        load_manifest(tmp_path)


def test_manifest_entries_need_every_provenance_key(tmp_path):
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    text = (tmp_path / "manifest.toml").read_text(encoding="utf-8")
    (tmp_path / "manifest.toml").write_text(text.replace('licence = "AGPL-3.0 (Ultralytics YOLO11 weights); see NOTICE"',
                                                         'licence = " "', 1), encoding="utf-8")
    with pytest.raises(ModelError, match=r"model\[0\]\.licence = ' ': must be a non-empty string \(fix:"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.toml").write_text("manifest_version = 2\n", encoding="utf-8")
    with pytest.raises(ModelError, match="manifest_version = 2: must be one of 1"):
        load_manifest(tmp_path)


def test_config_refuses_a_number_that_is_not_finite():
    with pytest.raises(ConfigError, match=r"analysis\.fps = nan: must be a finite number \(fix:"):
        parse_config({"analysis": {"fps": float("nan")}})


def test_the_retention_limit_is_defined_once():
    fields = {f.name: f for f in profile.ProfileFile.__dataclass_fields__.values()}
    assert fields["retention_hours"].metadata["hi"] == settings.LEGAL_MAX_RETENTION_HOURS
    audit = settings.AuditConfig.__dataclass_fields__
    assert audit["retention_hours"].metadata["hi"] == settings.LEGAL_MAX_RETENTION_HOURS
    assert settings.RetentionRule.__dataclass_fields__["hours"].metadata["hi"] == settings.LEGAL_MAX_RETENTION_HOURS
