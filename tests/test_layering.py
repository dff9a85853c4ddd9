"""The layering of box, station and contracts (docs/architecture.md): what `make lint` cannot see."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.box.config import AppConfig, load_config
from appliance.common.schema import ConfigError
from appliance.contracts.settings import BOX_SECTIONS, load_station_settings, parse_station_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "provisioning" / "appliance.example.toml"


def test_station_settings_know_every_section_of_the_device_config():
    device_sections = {f.name for f in dataclasses.fields(AppConfig)}
    station_sections = {"audit", "policy"}
    assert device_sections == set(BOX_SECTIONS) | station_sections, (
        "a new [section] in appliance.box.config.AppConfig: add its name to BOX_SECTIONS in "
        "appliance/contracts/settings.py so the station's tools accept the file")


def test_station_reads_the_device_config_it_is_given():
    box = load_config(EXAMPLE)
    station = load_station_settings(EXAMPLE)
    assert station.audit == box.audit
    assert station.policy == box.policy


def test_station_settings_refuse_unknown_sections_and_keys():
    with pytest.raises(ConfigError, match=r"audti: unknown key \(fix: remove it or use one of: audit, policy\)"):
        parse_station_settings({"audti": {}}, "station.toml")
    with pytest.raises(ConfigError, match=r"audit.retention_hours = 5000.0: must be <= 2160.0"):
        parse_station_settings({"audit": {"retention_hours": 5000}}, "station.toml")
