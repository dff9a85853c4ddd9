"""Root must not write into a station directory owned by the station's user: files it creates
there (audit segments, database side files, keys, holds) would lock the service out."""

from __future__ import annotations

import os

import pytest

from appliance.cli import main
from appliance.station.store import ClipStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another user")

NOBODY = 65534


@pytest.fixture
def station(tmp_path, capsys):
    station_dir = tmp_path / "station"
    assert main(["station", "keygen", "--dir", str(station_dir)]) == 0
    ClipStore(station_dir).close()
    capsys.readouterr()
    return station_dir


@pytest.mark.parametrize("argv", [
    ["station", "list", "--dir", "{d}"],
    ["station", "devices", "list", "--dir", "{d}"],
    ["station", "keygen", "--dir", "{d}", "--force"],
    ["audit", "hold", "list", "--station", "{d}"],
    ["audit", "retention", "run", "--station", "{d}", "--dry-run"],
])
def test_root_is_refused_in_a_station_directory_of_another_user(station, capsys, argv):
    before = sorted(p.name for p in station.rglob("*"))
    os.chown(station, NOBODY, NOBODY)
    code = main([a.replace("{d}", str(station)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "runuser -u" in err and "lock the station service out" in err
    assert sorted(p.name for p in station.rglob("*")) == before   # nothing created or changed


def test_root_in_its_own_station_directory_is_fine(station, capsys):
    assert main(["station", "list", "--dir", str(station)]) == 0
