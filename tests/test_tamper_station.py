"""The station side of camera tamper: signed state in heartbeats over real CurveZMQ, audited on
change, shown by `station devices list` with its own exit code for monitoring."""

from __future__ import annotations

import json

from appliance.cli import main
from appliance.contracts import protocol as p
from appliance.contracts.health import CameraTamper, sign_health
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import generate_station_keys
from tests.test_uplink_station import make_client, running_station


def tamper_health(kinds):
    return {"analysis_fps": 10.0, "tamper": {
        "state": "tampered" if kinds else "ok", "kinds": kinds,
        "since": {k: 1_800_000_000.0 for k in kinds}, "mode": "day",
        "reference": {"day": "provision", "night": "none"}}}


def heartbeat(client, keys, health, *, signed=True, unsigned_health=None):
    body = {"type": "heartbeat", "device_id": keys.device_id, "health": unsigned_health or {}, "checkpoints": [],
            "pixel_health": sign_health(health, device_id=keys.device_id, signing_key=keys.signing_key())
            if signed else None}
    reply = client.request(p.HEARTBEAT, p.canonical_json(body))
    assert reply.ok and reply.status == "recorded", reply


def test_tamper_state_audited_on_change_and_listed_with_exit_4(tmp_path, capsys):
    station_dir = tmp_path / "station"
    generate_station_keys(station_dir)
    devices = {}
    for name in ("box-yard", "box-gate"):
        devices[name] = create_device_keys(tmp_path / name, name)
        enrol_device(station_dir, devices[name])
    yard, gate = devices["box-yard"], devices["box-gate"]
    with running_station(station_dir) as (server, audit):
        cy, cg = make_client(station_dir, yard, server.endpoint), make_client(station_dir, gate, server.endpoint)
        try:
            heartbeat(cg, gate, tamper_health([]))
            heartbeat(cy, yard, tamper_health([]))
            # The uplink (unsigned health) cannot raise or hide a tamper.
            heartbeat(cy, yard, {}, signed=False, unsigned_health=tamper_health(["covered"]))
            assert main(["station", "devices", "list", "--dir", str(station_dir)]) == 0
            out = capsys.readouterr().out
            assert "camera ok" in out and "camera ?" in out       # yard's last statement was unsigned
            heartbeat(cy, yard, tamper_health([]))
            heartbeat(cy, yard, tamper_health(["covered"]))
            heartbeat(cy, yard, tamper_health(["covered"]))        # unchanged: not audited again
            assert main(["station", "devices", "list", "--dir", str(station_dir)]) == 4
            captured = capsys.readouterr()
            line = next(x for x in captured.out.splitlines() if x.startswith("box-yard"))
            assert "TAMPER covered" in line and "enabled" in line
            assert "tamper: 1 enabled device(s) report a camera tamper: box-yard (covered)" in captured.err
            assert main(["station", "devices", "list", "--dir", str(station_dir), "--json"]) == 4
            rows = {r["device_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
            assert rows["box-yard"]["tamper"] == {"tampered": True, "kinds": ["covered"],
                                                  "since": {"covered": 1_800_000_000.0}, "mode": "day"}
            assert rows["box-gate"]["tamper"]["tampered"] is False
            heartbeat(cy, yard, tamper_health(["covered", "frozen"]))
            heartbeat(cy, yard, tamper_health([]))
            assert main(["station", "devices", "list", "--dir", str(station_dir)]) == 0
            capsys.readouterr()
            # A silent device outranks a tamper: exit 3 (a box never heard from is stale).
            third = create_device_keys(tmp_path / "box-new", "box-new")
            enrol_device(station_dir, third)
            heartbeat(cy, yard, tamper_health(["moved"]))
            assert main(["station", "devices", "list", "--dir", str(station_dir), "--grace", "0"]) == 3
            err = capsys.readouterr().err
            assert "box-yard (moved)" in err and "stale: 1" in err
        finally:
            cy.close()
            cg.close()
    changes = [(f["device_id"], f["state"], f["kinds"], f["previous"])
               for k, f in audit.records if k == "station.device_tamper"]
    assert changes == [("box-yard", "tampered", ["covered"], []),
                       ("box-yard", "tampered", ["covered", "frozen"], ["covered"]),
                       ("box-yard", "ok", [], ["covered", "frozen"]),
                       ("box-yard", "tampered", ["moved"], [])]


def test_health_tamper_member_is_optional_and_checked():
    assert CameraTamper.from_health({"analysis_fps": 10}) is None           # an older box
    assert CameraTamper.from_health({"tamper": "covered"}) is None
    assert CameraTamper.from_health({"tamper": {"state": "tampered", "kinds": [1]}}) is None
    t = CameraTamper.from_health(tamper_health(["moved", "defocused"]))
    assert t.tampered and t.kinds == ("defocused", "moved") and t.describe() == "TAMPER defocused,moved"
