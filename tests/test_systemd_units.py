"""The hardened units in systemd/: verify, exposure, required hardening, provisioning drop-ins."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from appliance.box.provision.network import camera_dropin, station_dropin, write_dropins
from tests.systemd_util import (
    SYSTEMD_DIR,
    copy_unit,
    requires_systemd_analyze,
    security_exposure,
    unit_settings,
    verify,
)

UNITS = ("appliance-pixel.service", "appliance-uplink.service")
STATION_UNITS = ("appliance-station.service", "appliance-station-audit.service", "appliance-station-watch.service",
                 "appliance-station-watch.timer", "appliance-retention.service", "appliance-retention.timer",
                 "appliance-console.service")
MAX_EXPOSURE = 2.0

#: What the issue asks of both units (exact values where the value is the point).
REQUIRED = {
    "Type": "notify",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "MemorySwapMax": "0",
    "LimitCORE": "0",
    "Restart": "on-failure",
    "IPAddressDeny": "any",
}


@pytest.mark.parametrize("name", UNITS)
def test_unit_has_required_hardening(name):
    s = unit_settings(SYSTEMD_DIR / name)
    for key, value in REQUIRED.items():
        assert value in s.get(key, []), f"{name}: {key}={value} missing"
    assert s["User"][0].startswith("appliance-") and s["Group"] == ["appliance"]
    assert s["StateDirectory"][0].startswith("appliance/")
    assert s["WatchdogSec"][0].endswith("s")
    assert s["ExecStart"][0].startswith("/opt/appliance/.venv/bin/appliance ")
    assert s["ReadWritePaths"] == ["/var/lib/appliance/spool /var/lib/appliance/audit"]


def test_units_do_not_share_state_but_share_the_spool():
    pixel = unit_settings(SYSTEMD_DIR / UNITS[0])
    uplink = unit_settings(SYSTEMD_DIR / UNITS[1])
    assert pixel["User"] != uplink["User"]
    assert pixel["StateDirectory"] != uplink["StateDirectory"]
    assert "-/var/lib/appliance/pixel" in uplink["InaccessiblePaths"]
    tmpfiles = (SYSTEMD_DIR / "appliance.tmpfiles.conf").read_text()
    assert "d /var/lib/appliance/spool             2770 root appliance -" in tmpfiles


@requires_systemd_analyze
@pytest.mark.parametrize("group", ["box", "station"])
def test_systemd_analyze_verify_passes_on_every_unit(tmp_path, group):
    """The box's units together, and the station host's units together."""
    names = {"box": UNITS, "station": STATION_UNITS}[group]
    copies = [copy_unit(SYSTEMD_DIR / n, tmp_path) for n in names]
    proc = verify(*copies)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@requires_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    """The verify helper can fail: a missing executable and a misspelt setting are reported."""
    broken = copy_unit(SYSTEMD_DIR / UNITS[0], tmp_path, exec_path=str(tmp_path / "no-such-binary"),
                       extra="[Service]\nProtectSystm=strict\n")
    proc = verify(broken)
    assert proc.returncode != 0 or proc.stderr.strip()
    assert "no-such-binary" in proc.stderr or "ProtectSystm" in proc.stderr


@requires_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_at_most_2(tmp_path, name):
    exposure, report = security_exposure(copy_unit(SYSTEMD_DIR / name, tmp_path))
    print(f"{name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, report


def fake_resolve(host, port):
    assert host == "camera.local"
    return [(2, 1, 6, "", ("192.0.2.10", 0)), (10, 1, 6, "", ("2001:db8::10", 0, 0, 0))]


@requires_systemd_analyze
@pytest.mark.parametrize("dropin", [
    camera_dropin("rtsp://tech:secret@192.0.2.10:554/stream1"),
    camera_dropin("rtsp://camera.local/stream", resolve=fake_resolve),
    camera_dropin("/dev/video0"),
    camera_dropin("/srv/demo.mp4"),
    station_dropin("tcp://203.0.113.5:7100"),
    station_dropin("tcp://[2001:db8::5]:7100"),
], ids=["rtsp-ip", "rtsp-name", "device", "file", "station-v4", "station-v6"])
def test_provisioning_dropins_verify_and_keep_exposure(tmp_path, dropin):
    unit = copy_unit(SYSTEMD_DIR / dropin.unit, tmp_path, extra=dropin.text)
    proc = verify(unit)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    exposure, report = security_exposure(unit)
    assert exposure <= MAX_EXPOSURE, report
    assert "secret" not in dropin.text  # camera passwords never land in unit files


def test_dropin_contents_and_paths(tmp_path):
    cam = camera_dropin("rtsp://camera.local/stream", resolve=fake_resolve)
    assert "IPAddressAllow=192.0.2.10\n" in cam.text and "IPAddressAllow=2001:db8::10\n" in cam.text
    dev = camera_dropin("0")
    assert "DeviceAllow=/dev/video0 rw" in dev.text and "PrivateNetwork=yes" in dev.text
    st = station_dropin("tcp://203.0.113.5:7100")
    paths = write_dropins([cam, st], tmp_path)
    assert paths == [tmp_path / "appliance-pixel.service.d/10-camera.conf",
                     tmp_path / "appliance-uplink.service.d/10-station.conf"]
    assert paths[1].read_text() == st.text and (paths[1].stat().st_mode & 0o777) == 0o644


def test_dropin_refuses_bad_endpoints():
    from appliance.common.errors import InputError
    with pytest.raises(InputError, match="tcp://HOST:PORT"):
        station_dropin("station.example:7100")
    with pytest.raises(InputError, match="no host"):
        camera_dropin("rtsp:///stream")


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles missing")
def test_sysusers_and_tmpfiles_create_the_layout(tmp_path):
    """Applies the sysusers/tmpfiles snippets to an empty root: users, group, spool 2770."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD_DIR / "appliance.sysusers.conf")],
                   check=True, capture_output=True, timeout=60)
    passwd = (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    assert "appliance-pixel:" in passwd and "appliance-uplink:" in passwd
    gid = next(line.split(":")[2] for line in group.splitlines() if line.startswith("appliance:"))
    for line in passwd.splitlines():
        if line.startswith("appliance-"):
            assert line.split(":")[3] == gid  # primary group is the shared one
    proc = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                           str(SYSTEMD_DIR / "appliance.tmpfiles.conf")],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    spool = root / "var/lib/appliance/spool"
    for d in (spool, spool / "tmp", spool / "rejected", spool / "sequence", root / "var/lib/appliance/audit"):
        assert (d.stat().st_mode & 0o7777) == 0o2770, d
        assert str(d.stat().st_gid) == gid
    log = root / "var/lib/appliance/audit/audit.jsonl"
    assert (log.stat().st_mode & 0o777) == 0o660 and str(log.stat().st_gid) == gid


# -- the station host: receiver, watch (+ timer), retention; its own sysusers/tmpfiles -----------

#: Measured with systemd 252 (docs/provisioning.md, "Station deployment"): receiver 1.2 (it must
#: accept connections from anywhere the boxes are: no PrivateNetwork=/IPAddressDeny=), watch 0.2.
STATION_MAX_EXPOSURE = {"appliance-station.service": 1.5, "appliance-station-watch.service": 0.5,
                        "appliance-console.service": 1.6, "appliance-station-audit.service": 1.0}
STATION_DIR = "/var/lib/appliance-station"


@requires_systemd_analyze
@pytest.mark.parametrize("name", sorted(STATION_MAX_EXPOSURE))
def test_station_unit_exposure_ceiling(tmp_path, name):
    exposure, report = security_exposure(copy_unit(SYSTEMD_DIR / name, tmp_path))
    print(f"{name}: exposure {exposure}")
    assert exposure <= STATION_MAX_EXPOSURE[name], report


@requires_systemd_analyze
def test_station_with_a_box_subnet_dropin_verifies_and_is_lower(tmp_path):
    """The narrowing the unit comment suggests (IPAddressDeny=any + the boxes' networks)."""
    plain, _ = security_exposure(copy_unit(SYSTEMD_DIR / "appliance-station.service", tmp_path / "plain"))
    unit = copy_unit(SYSTEMD_DIR / "appliance-station.service", tmp_path / "narrow",
                     extra="[Service]\nIPAddressDeny=any\nIPAddressAllow=192.0.2.0/24 2001:db8::/32\n")
    proc = verify(unit)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    narrow, report = security_exposure(unit)
    print(f"appliance-station.service + IPAddressAllow drop-in: exposure {narrow}")
    assert narrow < plain, report


def test_station_receiver_unit_settings():
    s = unit_settings(SYSTEMD_DIR / "appliance-station.service")
    for key, value in {**REQUIRED, "IPAddressDeny": None, "Type": "notify"}.items():
        if value is not None:
            assert value in s.get(key, []), f"{key}={value} missing"
    assert s["User"] == ["appliance-station"] and s["Group"] == ["appliance-station"]
    assert s["ExecStart"] == [f"/opt/appliance/.venv/bin/appliance station serve --station-dir {STATION_DIR}"]
    assert s["StateDirectory"] == ["appliance-station"] and s["StateDirectoryMode"] == ["0750"]
    assert s["UMask"] == ["0027"]        # station.db group-readable for the console
    assert "ReadWritePaths" not in s                     # the state directory is the only writable path
    assert s["InaccessiblePaths"] == [f"-{STATION_DIR}/keys/hpke.key"]   # cannot decrypt a clip
    assert s["WatchdogSec"] == ["60s"] and s["NotifyAccess"] == ["main"]
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["Environment"] == ["ORT_DISABLE_TELEMETRY=1"]
    # libzmq's bind looks the address up as an interface name first (tests/test_systemd_sandbox.py)
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert s["RestartPreventExitStatus"] == ["2"]        # InputError: missing keys


def test_station_watch_unit_and_timer_settings():
    s = unit_settings(SYSTEMD_DIR / "appliance-station-watch.service")
    assert s["Type"] == ["oneshot"] and "Restart" not in s
    assert s["ExecStart"] == [f"/opt/appliance/.venv/bin/appliance station devices list --station-dir {STATION_DIR} "
                              "--stale-after 120"]
    assert s["User"] == ["appliance-station"] and s["Group"] == ["appliance-station"]
    assert s["ReadWritePaths"] == [STATION_DIR]        # SQLite WAL readers write station.db-shm
    assert s["InaccessiblePaths"] == [f"-{STATION_DIR}/keys -{STATION_DIR}/envelopes"]
    assert s["PrivateNetwork"] == ["yes"] and s["IPAddressDeny"] == ["any"]
    assert s["RestrictAddressFamilies"] == ["none"] and s["ProtectSystem"] == ["strict"]
    assert s["NoNewPrivileges"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    assert s["Environment"] == ["ORT_DISABLE_TELEMETRY=1"]
    assert s["ConditionPathExists"] == [f"{STATION_DIR}/station.db"]
    text = (SYSTEMD_DIR / "appliance-station-watch.service").read_text()
    assert "OnFailure=" in text and "journalctl -u appliance-station-watch" in text   # how to hook an alert
    t = unit_settings(SYSTEMD_DIR / "appliance-station-watch.timer")
    assert t["Unit"] == ["appliance-station-watch.service"] and t["OnCalendar"] == ["minutely"]
    assert t["WantedBy"] == ["timers.target"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles missing")
def test_station_sysusers_and_tmpfiles_create_the_station_layout(tmp_path):
    """Every station unit's User= exists after the station's sysusers snippet; the station
    directory is 0700 appliance-station; the box users are not needed there."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD_DIR / "appliance-station.sysusers.conf")],
                   check=True, capture_output=True, timeout=60)
    passwd = (root / "etc/passwd").read_text()
    users = {line.split(":")[0]: line.split(":") for line in passwd.splitlines()}
    assert set(users) == {"appliance-station", "appliance-station-audit", "appliance-console"}
    s = unit_settings(SYSTEMD_DIR / "appliance-station-audit.service")
    assert s["User"] == ["appliance-station-audit"] and s["StateDirectoryMode"] == ["0700"]
    assert "--allow-user appliance-station" in s["ExecStart"][0]
    for name in ("appliance-station.service", "appliance-station-watch.service", "appliance-retention.service"):
        s = unit_settings(SYSTEMD_DIR / name)
        assert s["User"] == ["appliance-station"] and s["Group"] == ["appliance-station"], name
    group = (root / "etc/group").read_text()
    gid = next(line.split(":")[2] for line in group.splitlines() if line.startswith("appliance-station:"))
    assert users["appliance-station"][3] == gid and users["appliance-station"][5] == STATION_DIR
    proc = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                           str(SYSTEMD_DIR / "appliance-station.tmpfiles.conf")],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    d = root / STATION_DIR.lstrip("/")
    assert (d.stat().st_mode & 0o7777) == 0o750       # the console's group reads station.db
    assert (str(d.stat().st_uid), str(d.stat().st_gid)) == (users["appliance-station"][2], gid)
    members = next(line for line in group.splitlines() if line.startswith("appliance-station:")).split(":")[3]
    assert members.split(",") == ["appliance-console"]
    audit = root / "var/lib/appliance-station-audit"   # the audit writer's: not the station user's
    assert (audit.stat().st_mode & 0o7777) == 0o700
    assert str(audit.stat().st_uid) == users["appliance-station-audit"][2] != users["appliance-station"][2]


def test_console_unit_settings():
    s = unit_settings(SYSTEMD_DIR / "appliance-console.service")
    for key, value in {**REQUIRED, "IPAddressDeny": None}.items():
        if value is not None:
            assert value in s.get(key, []), f"{key}={value} missing"
    assert s["User"] == ["appliance-console"] and s["SupplementaryGroups"] == ["appliance-station"]
    assert s["ExecStart"][0].startswith("/opt/appliance/.venv/bin/appliance station console serve ")
    assert "--tls-cert" in s["ExecStart"][0]
    assert s["StateDirectory"] == ["appliance-console"] and s["StateDirectoryMode"] == ["0700"]
    # the station's key directory is not even visible to the console; it gets the HPKE key (which
    # opens only the bystander-pixelated rendition) as a credential, and reads the ciphertext
    assert s["InaccessiblePaths"] == [f"-{STATION_DIR}/keys -{STATION_DIR}/tmp"]
    assert s["ReadOnlyPaths"] == [f"-{STATION_DIR}/envelopes"]
    assert s["LoadCredential"] == [f"station-hpke.key:{STATION_DIR}/keys/hpke.key"]
    assert s["MemorySwapMax"] == ["0"] and s["LimitCORE"] == ["0"]
