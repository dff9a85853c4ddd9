"""The retention units: systemd-analyze verify, hardening, and that ExecStart is a real
command of this checkout that runs against a station directory."""

from __future__ import annotations

import shlex
import subprocess

from appliance.cli import build_parser
from tests.systemd_util import (
    INSTALLED_EXEC,
    LOCAL_EXEC,
    SYSTEMD_DIR,
    copy_unit,
    requires_systemd_analyze,
    security_exposure,
    unit_settings,
    verify,
)

SERVICE = SYSTEMD_DIR / "appliance-retention.service"
TIMER = SYSTEMD_DIR / "appliance-retention.timer"


@requires_systemd_analyze
def test_units_verify(tmp_path):
    service = copy_unit(SERVICE, tmp_path)
    timer = copy_unit(TIMER, tmp_path)
    proc = verify(service, timer)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@requires_systemd_analyze
def test_verify_notices_a_missing_executable(tmp_path):
    service = copy_unit(SERVICE, tmp_path, exec_path=str(tmp_path / "no-such-appliance"))
    assert verify(service).returncode != 0


@requires_systemd_analyze
def test_service_exposure_is_low(tmp_path):
    exposure, report = security_exposure(copy_unit(SERVICE, tmp_path))
    assert exposure <= 1.0, report


def test_service_and_timer_settings():
    s = unit_settings(SERVICE)
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"][0].startswith(INSTALLED_EXEC + " audit retention run ")
    assert "yes" in s["PrivateNetwork"] and s["IPAddressDeny"] == ["any"]
    assert s["InaccessiblePaths"] == ["-/var/lib/appliance-station/keys/hpke.key"]   # cannot decrypt
    t = unit_settings(TIMER)
    assert t["Unit"] == ["appliance-retention.service"] and t["Persistent"] == ["true"]
    assert t["OnCalendar"] == ["*:0/15"]


def test_exec_start_runs_against_a_station(tmp_path):
    from appliance.station.keys import generate_station_keys
    from appliance.station.store import ClipStore
    station = tmp_path / "station"
    generate_station_keys(station, kem="X25519")
    ClipStore(station).close()                                  # an empty, initialised store
    argv = shlex.split(unit_settings(SERVICE)["ExecStart"][0])
    assert argv[0] == INSTALLED_EXEC
    args = argv[1:]
    args[args.index("--station-dir") + 1] = str(station)
    build_parser().parse_args(args)                             # a real command of this CLI
    proc = subprocess.run([LOCAL_EXEC, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "0 deleted, 0 under legal hold (0 of them past their expiry), 0 within retention, 0 error(s)" in proc.stderr
    assert (station / "audit.jsonl").read_text().count('"kind":"retention.run"') == 1
