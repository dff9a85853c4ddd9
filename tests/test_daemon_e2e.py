"""`appliance run` + `appliance uplink` as real processes against a real station on loopback.

A provisioned device analyses the bundled sample video as its camera, a permitted trigger
becomes a sealed clip in the spool, the uplink delivers it, the station stores it, and an
operator (with a reason) exports a WebM whose per-frame hashes verify. Both processes stop
cleanly on SIGTERM; the pixel process talks to a fake NOTIFY_SOCKET like systemd's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import tomli_w

from appliance.contracts.types import VIOLENT_PATTERNS
from appliance.station.store import ClipStore
from tests.test_provision_e2e import provision_device, run, station  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
APP = [sys.executable, "-m", "appliance.cli"]

# The bundled clip shows a slow grab, which the default thresholds (tuned on real CCTV) need
# not call violent. This rig lowers the fight thresholds so that the grab surely becomes a
# permitted violent event under bw-polg-44-4: the test is about the daemon's plumbing, not
# about detector accuracy (that is `make eval`).
SENSITIVE_BEHAVIOUR = {"fight_model": "", "fight_limb_speed": 0.5, "fight_min_fraction": 0.05,
                       "fight_distance": 6.0}


def wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sensitive_box(tmp_path: Path, capsys, station_dir: Path, endpoint: str, *,
                  behaviour: dict | None = SENSITIVE_BEHAVIOUR, **sections) -> Path:
    """A provisioned, imported box config that loops the sample clip in real time with the
    lowered fight thresholds (``behaviour=None``: the shipped defaults); ``sections`` update
    top-level tables (e.g. ``uplink={...}``)."""
    cfg_path, bundle, fingerprint = provision_device(tmp_path, capsys, station_dir, endpoint)
    code, out = run(capsys, "provision", "import", str(bundle), "--config", str(cfg_path),
                    "--station-fingerprint", fingerprint, "--unit-dir", str(tmp_path / "units"))
    assert code == 0, out
    doc = tomllib.loads(cfg_path.read_text())
    doc["camera"].update({"realtime": True, "loop": True})
    doc["analysis"] = {"fps": 10.0}
    doc["zones"] = []
    if behaviour is not None:
        doc["behaviour"] = behaviour
    for name, values in sections.items():
        doc[name].update(values)
    cfg_path.write_text(tomli_w.dumps(doc))
    return cfg_path


def test_run_delivers_a_triggered_clip_and_stops_on_sigterm(tmp_path, capsys, station):  # noqa: F811
    station_dir, server = station
    cfg_path = sensitive_box(tmp_path, capsys, station_dir, server.endpoint, audit={"checkpoint_every": 5})
    cfg = tomllib.loads(cfg_path.read_text())
    spool_dir = Path(cfg["spool"]["dir"])

    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000")
    env.pop("INVOCATION_ID", None)
    env.pop("JOURNAL_STREAM", None)
    # Output goes to files, not pipes: nobody reads a pipe while the test waits, and a full
    # pipe would block the daemon's logging.
    pixel_log = open(tmp_path / "pixel.log", "w")
    uplink_log = open(tmp_path / "uplink.log", "w")
    pixel = subprocess.Popen([*APP, "run", "--config", str(cfg_path), "--max-seconds", "300"], cwd=REPO,
                             env=env, stdout=pixel_log, stderr=subprocess.STDOUT, text=True)
    uplink = None
    messages: list[str] = []
    # Like systemd, keep reading: a full datagram queue would block the daemon's sd_notify().
    reading = threading.Event()
    reading.set()

    def read_notify() -> None:
        while reading.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except (TimeoutError, OSError):
                continue

    reader = threading.Thread(target=read_notify, daemon=True)
    reader.start()
    try:
        def notified(prefix: str) -> bool:
            return any(m.startswith(prefix) or f"\n{prefix}" in m for m in list(messages))

        wait_for(lambda: notified("READY=1"), 90, "READY=1 from the pixel process")
        wait_for(lambda: notified("WATCHDOG=1") and sum("WATCHDOG=1" in m for m in messages) >= 2, 30,
                 "watchdog pings")
        wait_for(lambda: list(spool_dir.glob("*.env")), 180, "a sealed envelope in the spool")

        uplink = subprocess.Popen([*APP, "uplink", "--config", str(cfg_path)], cwd=REPO, env=dict(os.environ),
                                  stdout=uplink_log, stderr=subprocess.STDOUT, text=True)
        store = ClipStore(station_dir)
        clips = wait_for(lambda: store.list_clips(), 90, "the station to store the clip")
        assert clips[0].device_id == "test-dev-01"
    finally:
        pixel.send_signal(signal.SIGTERM)
        try:
            pixel.wait(timeout=180)
        finally:
            if uplink is not None:
                uplink.send_signal(signal.SIGTERM)
                uplink.wait(timeout=60)
            for proc in (pixel, uplink):
                if proc is not None and proc.poll() is None:
                    proc.kill()
            pixel_log.close()
            uplink_log.close()
            reading.clear()
            reader.join(timeout=5)
            notify.close()
    assert pixel.returncode == 0, (tmp_path / "pixel.log").read_text()[-3000:]
    assert uplink.returncode == 0, (tmp_path / "uplink.log").read_text()[-3000:]
    assert any("STOPPING=1" in m for m in messages)
    assert any("STATUS=" in m for m in messages)

    # The operator's export: refused without a reason, then the WebM and a clean report.
    clip_id = clips[0].clip_id
    out_dir = tmp_path / "export"
    code, out = run(capsys, "station", "export", clip_id, str(out_dir), "--dir", str(station_dir),
                    "--operator", "op-1")
    assert code != 0 and "reason" in out
    code, out = run(capsys, "station", "export", clip_id, str(out_dir), "--dir", str(station_dir),
                    "--operator", "op-1", "--reason", "case 2026-117: check the alarm")
    assert code == 0, out
    reports = list(out_dir.rglob("*report*.json"))
    assert reports, sorted(p.name for p in out_dir.rglob("*"))
    report = json.loads(reports[0].read_text())
    assert report["verdict"] == "intact" and report["signature"] == "valid"
    assert "bw-polg-44-4" in json.dumps(report)
    assert clips[0].pattern in {p.value for p in VIOLENT_PATTERNS}   # bw-polg-44-4 permits only these
    assert list(out_dir.rglob("*.webm"))

    # The signed health statement carries the camera tamper state (no reference was provisioned:
    # the daemon learns it at run time, and a looping sample clip is not a tampered camera).
    from appliance.contracts.health import CameraTamper

    statement = json.loads(json.loads((spool_dir / "health.json").read_text())["statement"])
    tamper = CameraTamper.from_health(statement["health"])
    assert tamper is not None and not tamper.tampered, statement["health"].get("tamper")
    assert statement["health"]["tamper"]["reference"]["day"] in ("none", "learned")

    # The pixel process's audit log records the permitted trigger with its envelope hash.
    audit_lines = [json.loads(line) for line in Path(cfg["audit"]["log"]).read_text().splitlines()]
    kinds = [r.get("kind") for r in audit_lines]
    assert "trigger.permitted" in kinds and "appliance.start" in kinds and "appliance.stop" in kinds
