"""End to end in a real browser: a real box (pixel + uplink processes) analyses a fight clip,
a real station stores its alarm, the console (its own process) pushes it to Chromium.

Then, as an operator would: log in, see the alarm light up the black monitor, open it, see the
skeleton animation, claim it with the keyboard, be refused the video without a reason, close it
as a false alarm; the audit logs hold every step. A screenshot of the alarm page is saved
(docs/console.png is one of these).

The box runs with the lowered fight thresholds of tests/test_daemon_e2e.py (SENSITIVE_BEHAVIOUR):
the bundled clip's slow grab is not violent to the default detector; this test is about the
path from detection to the operator, not about detector accuracy (`make eval`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from appliance.station.store import ClipStore
from tests.browser import chromium
from tests.test_daemon_e2e import sensitive_box, wait_for
from tests.test_provision_e2e import station  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
APP = [sys.executable, "-m", "appliance.cli"]
PASSWORD = "operator password 2026"


def audit_kinds(path: Path) -> list[dict]:
    return [{"kind": r["kind"], **r.get("fields", {})} for r in map(json.loads, path.read_text().splitlines())]


def start_console(tmp_path: Path, station_dir: Path, console_dir: Path) -> tuple[subprocess.Popen, str]:
    for name, role in (("op-anna", "operator"), ("sup-ben", "supervisor")):
        subprocess.run([*APP, "station", "console", "user", "add", name, "--role", role, "--console-dir",
                        str(console_dir)], input=PASSWORD + "\n", text=True, check=True, cwd=REPO,
                       capture_output=True)
    ready = tmp_path / "console.url"
    log = open(tmp_path / "console.log", "w")
    proc = subprocess.Popen([*APP, "station", "console", "serve", "--station-dir", str(station_dir),
                             "--console-dir", str(console_dir), "--bind", "127.0.0.1:0", "--ready-file", str(ready)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: ready.exists() or proc.poll() is not None, 60, "the console to listen")
    assert proc.poll() is None, (tmp_path / "console.log").read_text()
    return proc, ready.read_text().strip()


def login(driver, url: str, user: str, password: str) -> None:
    driver.get(url + "/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password + Keys.ENTER)


def canvas_lit_pixels(driver) -> int:
    return driver.execute_script(
        "const c = document.getElementById('skeleton'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] > 120) { n++; } } return n;")


@pytest.mark.slow
def test_box_alarm_reaches_the_operator_in_a_real_browser(tmp_path, capsys, station):  # noqa: F811
    station_dir, server = station
    cfg_path = sensitive_box(tmp_path, capsys, station_dir, server.endpoint, uplink={"heartbeat_s": 2.0})
    console_dir = tmp_path / "console"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    logs = [open(tmp_path / "pixel.log", "w"), open(tmp_path / "uplink.log", "w")]
    # The uplink first: its heartbeat makes the device known, so the monitor starts black (an
    # enrolled device never heard from is stale and would light it with a device alarm).
    procs = [subprocess.Popen([*APP, "uplink", "--config", str(cfg_path)], cwd=REPO, env=env,
                              stdout=logs[1], stderr=subprocess.STDOUT)]
    seen = ClipStore(station_dir)
    wait_for(lambda: seen.last_seen("test-dev-01"), 60, "the first heartbeat")
    seen.close()
    console, url = start_console(tmp_path, station_dir, console_dir)
    driver = chromium(tmp_path / "chromium-profile")
    try:
        login(driver, url, "op-anna", PASSWORD)
        wait = WebDriverWait(driver, 30)
        wait.until(EC.text_to_be_present_in_element((By.ID, "live"), "live"))
        body = driver.find_element(By.TAG_NAME, "body")
        assert "lit" not in body.get_attribute("class")          # black until an alarm
        assert not driver.find_element(By.ID, "alarms").is_displayed()
        quiet = driver.execute_script("return window.consoleState")   # and silent: no tone, no sound armed
        assert quiet["beeps"] == 0 and quiet["soundArmed"] is False
        body.send_keys("s")                                          # sound needs one key press per page
        assert driver.execute_script("return window.consoleState.soundArmed") is True
        assert "lit" not in body.get_attribute("class") and driver.execute_script("return window.consoleState.beeps") == 0

        procs.append(subprocess.Popen([*APP, "run", "--config", str(cfg_path), "--max-seconds", "300"], cwd=REPO,
                                      env=env, stdout=logs[0], stderr=subprocess.STDOUT))
        item = WebDriverWait(driver, 240, poll_frequency=0.2).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "#alarms li.behaviour")))
        assert "lit" in body.get_attribute("class")
        alarm_id = item.get_attribute("data-alarm-id")
        assert alarm_id.startswith("test-dev-01#")
        state = driver.execute_script("return window.consoleState")
        assert state["beeps"] >= 1 and state["seen"][0]["alarm_id"] == alarm_id
        print(f"detection -> alarm visible in the browser: {state['seen'][0]['latency_ms']} ms")

        # Keyboard: J selects the newest alarm, Enter opens it.
        body.send_keys("j")
        body.send_keys(Keys.ENTER)
        wait.until(EC.presence_of_element_located((By.ID, "alarm-title")))
        assert alarm_id in driver.find_element(By.ID, "alarm-title").text
        assert "bw-polg-44-4" in driver.find_element(By.ID, "profile").text
        wait.until(lambda d: int(d.find_element(By.ID, "skeleton").get_attribute("data-drawn") or 0) >= 2)
        assert int(driver.find_element(By.ID, "skeleton").get_attribute("data-frames")) > 0
        assert canvas_lit_pixels(driver) > 50                      # skeleton lines were drawn

        driver.find_element(By.TAG_NAME, "body").send_keys("c")     # claim
        wait.until(EC.text_to_be_present_in_element((By.ID, "state"), "claimed (op-anna)"))

        driver.find_element(By.ID, "reveal").click()                # no reason given
        wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "needs a reason"))
        assert not driver.find_elements(By.ID, "clip-video")

        Path(os.environ.get("APPLIANCE_SCREENSHOT_DIR", tmp_path)).mkdir(parents=True, exist_ok=True)
        shot = Path(os.environ.get("APPLIANCE_SCREENSHOT_DIR", tmp_path)) / "console.png"
        wait.until(lambda d: int(d.find_element(By.ID, "skeleton").get_attribute("data-drawn") or 0) >= 2)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        driver.find_element(By.TAG_NAME, "body").send_keys("f")     # false alarm
        Select(driver.find_element(By.ID, "reason-code")).select_by_value("sport_or_play")
        driver.find_element(By.ID, "note").send_keys("two friends play-fighting")
        driver.find_element(By.ID, "close").click()
        wait.until(EC.url_to_be(url + "/"))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'#alarms li[data-alarm-id="{alarm_id}"]'))
    finally:
        driver.quit()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        console.send_signal(signal.SIGTERM)
        try:
            console.wait(timeout=30)
        except subprocess.TimeoutExpired:
            console.kill()
        for f in logs:
            f.close()
    assert console.returncode == 0, (tmp_path / "console.log").read_text()[-3000:]

    # The verdict is stored; every step is in the console's audit log with the user.
    from appliance.station.console.store import ConsoleStore

    store = ConsoleStore(console_dir)
    wf = store.workflow(alarm_id)
    store.close()
    assert (wf.state, wf.owner, wf.verdict, wf.reason_code) == ("closed", "op-anna", "false", "sport_or_play")
    records = audit_kinds(console_dir / "audit.jsonl")
    kinds = [(r["kind"], r.get("user") or r.get("operator")) for r in records]
    for expected in [("console.login", "op-anna"), ("station.view", "op-anna"), ("console.claim", "op-anna"),
                     ("console.refused", "op-anna"), ("console.verdict", "op-anna")]:
        assert expected in kinds, expected
    box_records = audit_kinds(Path(tomllib.loads(cfg_path.read_text())["audit"]["log"]))
    assert any(r["kind"] == "alarm.sent" and r["alarm_id"] == alarm_id for r in box_records)
    assert any(r["kind"] == "trigger.permitted" and r["alarm_id"] == alarm_id for r in box_records)
