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
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
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


def start_console(tmp_path: Path, station_dir: Path, console_dir: Path,
                  evidence_key: Path | None = None) -> tuple[subprocess.Popen, str]:
    for name, role in (("op-anna", "operator"), ("sup-ben", "supervisor")):
        subprocess.run([*APP, "station", "console", "user", "add", name, "--role", role, "--console-dir",
                        str(console_dir)], input=PASSWORD + "\n", text=True, check=True, cwd=REPO,
                       capture_output=True)
    if evidence_key is not None:     # the key ceremony: the custodian's file, the supervisor's password
        subprocess.run([*APP, "station", "console", "evidence-key", "wrap", "--console-dir", str(console_dir),
                        "--key", str(evidence_key), "--user", "sup-ben", "--station-dir", str(station_dir)],
                       input=PASSWORD + "\n", text=True, check=True, cwd=REPO, capture_output=True)
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
    # Logged in once the next page shows the logout button (navigating earlier would race the cookie).
    WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.ID, "logout")))


def logout(driver) -> None:
    driver.find_element(By.ID, "logout").click()
    WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.ID, "username")))


def video_state(driver, video_id: str) -> dict | None:
    return driver.execute_script(
        "const v = document.getElementById(arguments[0]);"
        "return v ? {ready: v.readyState, duration: v.duration, t: v.currentTime, w: v.videoWidth,"
        " error: v.error ? v.error.code : null} : null;", video_id)


def wait_playing(driver, video_id: str, timeout: float = 60) -> dict:
    """readyState >= 2 (a frame to show), a duration, and the time advancing: the clip plays."""
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05)
    first = wait.until(lambda d: (s := video_state(d, video_id)) and s["ready"] >= 2 and s["duration"] > 0 and s)
    wait.until(lambda d: video_state(d, video_id)["t"] > first["t"] + 0.2)
    return first


def canvas_lit_pixels(driver, canvas_id: str = "skeleton") -> int:
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] > 120) { n++; } } return n;",
        canvas_id)


def reveal_and_play(driver, wait, reason: str) -> None:
    """Layer 2 as an operator does it: a reason, then the pixelated clip plays with the involved
    persons outlined on the canvas over it."""
    driver.find_element(By.ID, "reveal-reason").send_keys(reason)
    t0 = time.monotonic()
    driver.find_element(By.ID, "reveal").click()
    first = wait_playing(driver, "clip-video")
    timing = driver.execute_script("return window.consoleState.video")
    print(f"reveal -> first video frame in the browser: {timing.get('clip-video_first_frame_ms', -1):.0f} ms "
          f"(page clock; {1000 * (time.monotonic() - t0):.0f} ms polled), {first['w']} px wide, "
          f"{first['duration']:.1f} s")
    wait.until(lambda d: int(d.find_element(By.ID, "outlines").get_attribute("data-boxes") or 0) > 0)
    assert canvas_lit_pixels(driver, "outlines") > 20                # an outline was drawn over the video


def full_video_four_eyes(driver, wait, url: str, alarm_url: str) -> None:
    """Layer 3: the operator requests the full video; the supervisor approves with their password
    (which unwraps the evidence key in the console's memory); the operator plays it."""
    driver.find_element(By.ID, "full-reason").send_keys("identify the attacker, case 2026-119")
    driver.find_element(By.ID, "request-full").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "sent to a supervisor"))
    assert not driver.find_elements(By.ID, "full-video")
    logout(driver)
    login(driver, url, "sup-ben", PASSWORD)
    driver.get(url + "/approvals")
    form = driver.find_element(By.CSS_SELECTOR, "form.approval")
    form.find_element(By.NAME, "reason").send_keys("confirmed with the duty officer")
    form.find_element(By.NAME, "password").send_keys(PASSWORD)
    form.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "is open for op-anna"))
    driver.get(alarm_url)                                        # the approver does not see it
    wait.until(EC.presence_of_element_located((By.ID, "alarm-title")))
    assert not driver.find_elements(By.ID, "full-video")
    logout(driver)
    login(driver, url, "op-anna", PASSWORD)
    driver.get(alarm_url)
    wait_playing(driver, "full-video")
    assert not driver.find_elements(By.ID, "clip-video")        # the layer-2 reveal ended with the logout


def stop_console(console: subprocess.Popen, tmp_path: Path) -> None:
    console.send_signal(signal.SIGTERM)
    try:
        console.wait(timeout=30)
    except subprocess.TimeoutExpired:
        console.kill()
    assert console.returncode == 0, (tmp_path / "console.log").read_text()[-3000:]


@pytest.mark.slow
def test_video_layers_play_in_a_real_browser(tmp_path):
    """Envelope version 2 in Chromium: the pixelated clip plays after a reason with the involved
    persons outlined; the full clip plays for the operator after a supervisor's approval."""
    from appliance.contracts.envelope import parse_envelope, seal_clip
    from appliance.contracts.keys import load_hpke_public_key
    from appliance.contracts.synthetic import synthetic_clip
    from appliance.station.enrol import create_device_keys, enrol_device
    from appliance.station.keys import StationKeyPaths, generate_station_keys

    station_dir, console_dir = tmp_path / "station", tmp_path / "console"
    generate_station_keys(station_dir, kem="X25519")
    evidence_key = tmp_path / "offline" / "evidence.key"
    subprocess.run([*APP, "station", "evidence-key", "init", "--station-dir", str(station_dir), "--out",
                    str(evidence_key)], check=True, cwd=REPO, capture_output=True)
    keys = create_device_keys(tmp_path / "dev", "cam-07")
    enrol_device(station_dir, keys)
    paths = StationKeyPaths.of(station_dir)
    clip = synthetic_clip(frames=40, width=320, height=180, fps=10.0, redacted=True)
    store = ClipStore(station_dir)
    try:
        store.store(parse_envelope(seal_clip(
            clip, device_id="cam-07", sequence=1, signing_key=keys.signing_key(),
            station_public_key=load_hpke_public_key(paths.hpke_public),
            evidence_public_key=load_hpke_public_key(paths.evidence_public))))
    finally:
        store.close()
    console, url = start_console(tmp_path, station_dir, console_dir, evidence_key)
    driver = chromium(tmp_path / "chromium-profile")
    try:
        wait = WebDriverWait(driver, 30)
        login(driver, url, "op-anna", PASSWORD)
        alarm_url = url + "/alarms/cam-07%231"
        driver.get(alarm_url)
        assert driver.execute_script(f"return fetch('{alarm_url}/video').then(r => r.status)") == 403
        reveal_and_play(driver, wait, "who started it")
        driver.find_element(By.ID, "full-reason").send_keys("identify the attacker, case 2026-120")
        driver.find_element(By.ID, "request-full").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "sent to a supervisor"))
        # The supervisor approves from another place; the operator's open page shows the video at once.
        with httpx.Client(base_url=url, timeout=60) as sup:
            cookie = sup.post("/login", data={"username": "sup-ben", "password": PASSWORD}).headers["set-cookie"]
            sup.headers["Cookie"] = cookie.split(";")[0]
            page = sup.get("/approvals").text
            csrf = re.search(r'data-csrf="([^"]+)"', page).group(1)
            rid = re.search(r'action="/approvals/(\d+)"', page).group(1)
            r = sup.post(f"/approvals/{rid}", data={"csrf": csrf, "decision": "approve", "password": PASSWORD,
                                                    "reason": "confirmed by phone"})
            assert "is%20open%20for%20op-anna" in r.headers["location"]
        wait_playing(driver, "full-video")
        assert driver.find_element(By.ID, "full-layer").text.startswith("FULL video")
    finally:
        driver.quit()
        stop_console(console, tmp_path)
    # Cache-Control: no-store: the browser kept neither clip in its profile (disk cache) either.
    probes = []
    for video in (clip.video, clip.redacted.video):
        chunks = [video[i:i + 64] for i in range(0, len(video) - 64, 64)]
        probes += [p for p in chunks if len(set(p)) > 40][:32]
    assert len(probes) >= 16
    for file in (p for p in (tmp_path / "chromium-profile").rglob("*") if p.is_file()):
        content = file.read_bytes()
        assert not any(p in content for p in probes), file
    records = audit_kinds(console_dir / "audit.jsonl")
    kinds = [(r["kind"], r.get("user") or r.get("operator")) for r in records]
    assert "console.evidence_key_wrapped" in {k for k, _ in kinds}
    for expected in [("console.full_video_requested", "op-anna"), ("console.full_video_approved", "sup-ben"),
                     ("console.full_video_granted", "sup-ben"), ("console.full_video_grant_ended", "op-anna")]:
        assert expected in kinds, expected
    layers = {(r.get("layer"), r.get("outcome") or r.get("reason")) for r in records if r["kind"] == "station.view"}
    assert {("video_blurred", "shown"), ("video_blurred", "playback"), ("video_full", "playback")} <= layers
    assert ("console.refused", "op-anna") in kinds                 # the URL before the reveal


@pytest.mark.slow
def test_box_alarm_reaches_the_operator_in_a_real_browser(tmp_path, capsys, station):  # noqa: F811
    station_dir, server = station
    # The evidence key before provisioning: the bundle carries its public half, so the box seals
    # envelope version 2 (bystanders pixelated in the redacted rendition); its private half goes
    # to an offline file, and into the console only wrapped under the supervisor's password.
    evidence_key = tmp_path / "offline" / "evidence.key"
    subprocess.run([*APP, "station", "evidence-key", "init", "--station-dir", str(station_dir), "--out",
                    str(evidence_key)], check=True, cwd=REPO, capture_output=True)
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
    console, url = start_console(tmp_path, station_dir, console_dir, evidence_key)
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

        # The box's clip (version 2) arrives; with a reason, its bystander-pixelated rendition plays.
        WebDriverWait(driver, 240, poll_frequency=0.2).until(
            EC.text_to_be_present_in_element((By.ID, "clip"), "stored"))
        reveal_and_play(driver, wait, "who started it")

        Path(os.environ.get("APPLIANCE_SCREENSHOT_DIR", tmp_path)).mkdir(parents=True, exist_ok=True)
        shot = Path(os.environ.get("APPLIANCE_SCREENSHOT_DIR", tmp_path)) / "console.png"
        wait.until(lambda d: int(d.find_element(By.ID, "skeleton").get_attribute("data-drawn") or 0) >= 2)
        wait.until(lambda d: int(d.find_element(By.ID, "outlines").get_attribute("data-boxes") or 0) > 0)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        full_video_four_eyes(driver, wait, url, driver.current_url.split("?")[0])

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
        for f in logs:
            f.close()
        stop_console(console, tmp_path)

    # The verdict is stored; every step is in the console's audit log with the user.
    from appliance.station.console.store import ConsoleStore

    store = ConsoleStore(console_dir)
    wf = store.workflow(alarm_id)
    store.close()
    assert (wf.state, wf.owner, wf.verdict, wf.reason_code) == ("closed", "op-anna", "false", "sport_or_play")
    records = audit_kinds(console_dir / "audit.jsonl")
    kinds = [(r["kind"], r.get("user") or r.get("operator")) for r in records]
    for expected in [("console.login", "op-anna"), ("station.view", "op-anna"), ("console.claim", "op-anna"),
                     ("console.refused", "op-anna"), ("console.verdict", "op-anna"),
                     ("console.full_video_approved", "sup-ben"), ("console.full_video_granted", "sup-ben")]:
        assert expected in kinds, expected
    layers = {(r.get("layer"), r.get("outcome") or r.get("reason")) for r in records if r["kind"] == "station.view"}
    assert {("video_blurred", "shown"), ("video_full", "playback")} <= layers
    box_records = audit_kinds(Path(tomllib.loads(cfg_path.read_text())["audit"]["log"]))
    assert any(r["kind"] == "alarm.sent" and r["alarm_id"] == alarm_id for r in box_records)
    assert any(r["kind"] == "trigger.permitted" and r["alarm_id"] == alarm_id for r in box_records)
