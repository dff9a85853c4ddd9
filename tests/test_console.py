"""The operator console (appliance/station/console): accounts, roles, CSRF, workflow, disclosure
refusals, audit records, the live push over a real uvicorn server, stale-device and camera-tamper alarms."""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

with warnings.catch_warnings():   # starlette 1.x suggests httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from appliance.contracts.alarm import parse_alarm, seal_alarm
from appliance.station.console.app import Console
from appliance.station.console.auth import hash_password
from appliance.station.console.service import open_console_audit_log, start_console
from appliance.station.console.store import ConsoleStore
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import generate_station_keys
from appliance.station.store import ClipStore
from tests.fixtures.alarm import make_vectors

PASSWORD = "correct horse battery"
ROLES = ("operator", "supervisor", "dpo", "admin")
PASSWORD_HASH = hash_password(PASSWORD)   # argon2id is slow on purpose: hash once per module


def store_alarm(station_dir, keys, sequence: int) -> str:
    body = make_vectors.body(sequence)
    body["device_id"] = keys.device_id
    body["created_unix_ms"] = int(time.time() * 1000)
    store = ClipStore(station_dir)
    try:
        alarm, _ = store.store_alarm(parse_alarm(seal_alarm(body, keys.signing_key())))
    finally:
        store.close()
    return alarm.alarm_id


def url(alarm_id: str) -> str:
    """The alarm id in a URL path: '#' would start the fragment."""
    return quote(alarm_id, safe="")


@pytest.fixture
def site(tmp_path):
    station_dir, console_dir = tmp_path / "station", tmp_path / "console"
    generate_station_keys(station_dir)
    keys = create_device_keys(tmp_path / "dev", "cam-01")
    enrol_device(station_dir, keys)
    store = ClipStore(station_dir)     # the device was heard from: not stale
    store.record_seen("cam-01", "heartbeat", {"spool_depth": 2, "pixel": {"camera": "ok"}, "pixel_signed": True})
    store.close()
    accounts = ConsoleStore(console_dir)
    for name, role in [(r, r) for r in ROLES] + [("operator2", "operator")]:
        accounts.add_user(name, role, PASSWORD_HASH)
    accounts.close()
    alarm_id = store_alarm(station_dir, keys, 1)
    return station_dir, console_dir, keys, alarm_id


@pytest.fixture
def console(site):
    station_dir, console_dir, _, _ = site
    audit = open_console_audit_log(console_dir)
    app = Console(station_dir, console_dir, audit=audit, login_guard={"per_client": 1000})
    yield app
    app.close()
    audit.close()


def audit_records(console_dir):
    records = [json.loads(line) for line in (console_dir / "audit.jsonl").read_text().splitlines()]
    return [{"kind": r["kind"], **r.get("fields", {})} for r in records]


def client_for(console, role=None, password=PASSWORD):
    # Not entered as a context manager: no lifespan, so no feed task; the live feed is tested
    # against the real uvicorn server below.
    c = TestClient(console.app, base_url="https://testserver", follow_redirects=False)
    if role is not None:
        r = c.post("/login", data={"username": role, "password": password})
        assert r.status_code == 303, r.text
    return c


def csrf_of(client, path="/"):
    page = client.get(path)
    return re.search(r'data-csrf="([^"]+)"', page.text).group(1)


def test_login_sets_a_strict_cookie_and_security_headers(console):
    c = client_for(console)
    r = c.post("/login", data={"username": "operator", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    page = c.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and " style=" not in page.text and "onclick" not in page.text


def test_failed_logins_are_audited_and_lock_the_account(console, site):
    _, console_dir, _, _ = site
    c = client_for(console)
    for _ in range(5):
        assert c.post("/login", data={"username": "operator", "password": "wrong password!"}).status_code == 401
    # Locked: even the right password is refused now.
    assert c.post("/login", data={"username": "operator", "password": PASSWORD}).status_code == 401
    fails = [r for r in audit_records(console_dir) if r["kind"] == "console.login_failed"]
    assert [f["reason"] for f in fails][-2:] == ["locked_now", "locked"] and fails[0]["user"] == "operator"
    assert c.post("/login", data={"username": "nobody", "password": "x"}).status_code == 401


def test_login_rate_limit_per_client(site):
    station_dir, console_dir, _, _ = site
    audit = open_console_audit_log(console_dir)
    app = Console(station_dir, console_dir, audit=audit, login_guard={"per_client": 3})
    try:
        c = client_for(app)
        codes = [c.post("/login", data={"username": f"u{i}", "password": "x"}).status_code for i in range(5)]
        assert codes == [401, 401, 401, 429, 429]
    finally:
        app.close()
        audit.close()


# (method, path template, who may: the rest must get 403)
MATRIX = [
    ("GET", "/api/alarms", {"operator", "supervisor"}),
    ("GET", "/alarms/{a}", {"operator", "supervisor"}),
    ("GET", "/api/alarms/{a}/skeletons", {"operator", "supervisor"}),
    ("POST", "/alarms/{a}/claim", {"operator", "supervisor"}),
    ("POST", "/alarms/{a}/reveal", {"operator", "supervisor"}),
    ("POST", "/alarms/{a}/request-full", {"operator", "supervisor"}),
    ("GET", "/approvals", {"supervisor"}),
    ("POST", "/approvals/1", {"supervisor"}),
    ("GET", "/events", {"operator", "supervisor"}),
    ("GET", "/devices", {"operator", "supervisor", "admin"}),
    ("GET", "/dpo", {"dpo"}),
    ("GET", "/admin/users", {"admin"}),
]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_refused_what_it_must_not_reach_by_url(console, site, role):
    _, console_dir, _, alarm_id = site
    c = client_for(console, role)
    csrf = re.search(r'data-csrf="([^"]+)"', c.get("/", follow_redirects=True).text).group(1)
    for method, template, who in MATRIX:
        path = template.format(a=url(alarm_id))
        if path == "/events" and role in who:
            continue   # a stream: tested against the real server below
        r = c.request(method, path, data={"csrf": csrf, "reason": "x"} if method == "POST" else None)
        if role in who:
            assert r.status_code in (200, 303, 400, 409), (role, path, r.status_code)
        else:
            assert r.status_code == 403, (role, path, r.status_code)
    refused = [r for r in audit_records(console_dir) if r["kind"] == "console.refused" and r.get("user") == role
               and r["reason"] == "role"]
    assert len(refused) == sum(role not in who for _, _, who in MATRIX)
    anonymous = client_for(console)
    assert anonymous.get(f"/alarms/{url(alarm_id)}").status_code == 303
    assert anonymous.get("/api/alarms").status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_only_its_buttons(console, site, role):
    _, _, _, alarm_id = site
    c = client_for(console, role)
    home = c.get("/", follow_redirects=True).text
    nav = {"monitor": 'href="/"', "approvals": 'id="nav-approvals"', "dpo": 'id="nav-dpo"', "users": 'id="nav-users"'}
    expected = {"operator": {"monitor"}, "supervisor": {"monitor", "approvals"}, "dpo": {"dpo"}, "admin": {"users"}}
    assert {k for k, marker in nav.items() if marker in home} == expected[role]
    if role in ("operator", "supervisor"):
        page = c.get(f"/alarms/{url(alarm_id)}").text
        assert 'id="claim"' in page and 'id="reveal"' in page and 'id="skeleton"' in page
        assert "/approvals/" not in page


def test_csrf_and_cross_origin_posts_are_refused(console, site):
    _, console_dir, _, alarm_id = site
    c = client_for(console, "operator")
    assert c.post(f"/alarms/{url(alarm_id)}/claim", data={}).status_code == 403
    assert c.post(f"/alarms/{url(alarm_id)}/claim", data={"csrf": "forged"}).status_code == 403
    csrf = csrf_of(c)
    r = c.post(f"/alarms/{url(alarm_id)}/claim", data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    reasons = [r["reason"] for r in audit_records(console_dir) if r["kind"] == "console.refused"]
    assert reasons == ["csrf", "csrf", "cross_origin"]


def test_workflow_new_claimed_closed_with_verdict_is_stored_and_audited(console, site):
    _, console_dir, _, alarm_id = site
    op, op2 = client_for(console, "operator"), client_for(console, "operator2")
    csrf, csrf2 = csrf_of(op), csrf_of(op2)
    # Closing before claiming is refused.
    r = op.post(f"/alarms/{url(alarm_id)}/close", data={"csrf": csrf, "verdict": "false", "reason_code": "dance"})
    assert "must be claimed" in op.get(r.headers["location"]).text
    assert op.post(f"/alarms/{url(alarm_id)}/claim", data={"csrf": csrf}).status_code == 303
    # Another operator can neither take it nor close it.
    r = op2.post(f"/alarms/{url(alarm_id)}/claim", data={"csrf": csrf2})
    assert "claimed by operator" in op2.get(r.headers["location"]).text
    op2.post(f"/alarms/{url(alarm_id)}/close", data={"csrf": csrf2, "verdict": "true", "reason_code": "violence_confirmed"})
    # A reason code that does not fit the verdict is refused.
    r = op.post(f"/alarms/{url(alarm_id)}/close", data={"csrf": csrf, "verdict": "false", "reason_code": "violence_confirmed"})
    assert "reason code" in op.get(r.headers["location"]).text
    r = op.post(f"/alarms/{url(alarm_id)}/close", data={"csrf": csrf, "verdict": "false", "reason_code": "dance",
                                                   "note": "two people dancing"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    wf = console.store.workflow(alarm_id)
    assert (wf.state, wf.owner, wf.verdict, wf.reason_code, wf.note) == ("closed", "operator", "false", "dance",
                                                                         "two people dancing")
    assert alarm_id not in op.get("/api/alarms").text        # closed alarms leave the monitor
    records = audit_records(console_dir)
    verdicts = [r for r in records if r["kind"] == "console.verdict"]
    assert len(verdicts) == 1 and verdicts[0]["user"] == "operator" and verdicts[0]["reason_code"] == "dance"
    assert [r["user"] for r in records if r["kind"] == "console.claim"] == ["operator"]


def test_skeleton_layer_is_audited_and_carries_no_pixels(console, site):
    _, console_dir, _, alarm_id = site
    c = client_for(console, "operator")
    data = c.get(f"/api/alarms/{url(alarm_id)}/skeletons").json()
    assert data["skeletons"]["frames"] and data["tracks"] == [3, 5]
    views = [r for r in audit_records(console_dir) if r["kind"] == "station.view"]
    assert views and views[-1]["layer"] == "skeletons" and views[-1]["operator"] == "operator"


def test_reveal_needs_a_reason_and_full_video_needs_another_persons_approval(console, site):
    _, console_dir, _, alarm_id = site
    op, sup = client_for(console, "operator"), client_for(console, "supervisor")
    csrf, scsrf = csrf_of(op), csrf_of(sup)
    r = op.post(f"/alarms/{url(alarm_id)}/reveal", data={"csrf": csrf, "reason": ""})
    assert "needs a reason" in op.get(r.headers["location"]).text
    r = op.post(f"/alarms/{url(alarm_id)}/request-full", data={"csrf": csrf, "reason": " "})
    assert "needs a reason" in op.get(r.headers["location"]).text
    op.post(f"/alarms/{url(alarm_id)}/request-full", data={"csrf": csrf, "reason": "case 2026-117, identify the attacker"})
    [req] = console.store.disclosures(state="pending")
    # A supervisor's own request cannot be approved by the same supervisor.
    sup.post(f"/alarms/{url(alarm_id)}/request-full", data={"csrf": scsrf, "reason": "my own request here"})
    own = console.store.disclosures(state="pending")[-1]
    assert sup.post(f"/approvals/{own['id']}", data={"csrf": scsrf, "decision": "approve",
                                                      "reason": "ok"}).status_code == 400
    assert sup.post(f"/approvals/{own['id']}", data={"csrf": scsrf, "decision": "approve",
                                                      "reason": "approving myself"}).status_code == 409
    # Approving needs the supervisor's own password (re-entered), not just the session.
    assert sup.post(f"/approvals/{req['id']}", data={"csrf": scsrf, "decision": "approve",
                                                      "reason": "case confirmed by the duty officer"}).status_code == 403
    assert console.store.disclosure(req["id"])["state"] == "pending"
    r = sup.post(f"/approvals/{req['id']}", data={"csrf": scsrf, "decision": "approve", "password": PASSWORD,
                                                  "reason": "case confirmed by the duty officer"})
    assert r.status_code == 303 and "clip%20has%20not%20arrived" in r.headers["location"]
    assert console.store.approved_full(alarm_id, "operator")["decided_by"] == "supervisor"
    page = op.get(f"/alarms/{url(alarm_id)}").text
    assert f'id="pending-grant-{req["id"]}"' in page and "approved by supervisor (case confirmed" in page
    assert 'id="full-video"' not in page          # no clip, no grant: nothing to play
    kinds = [(r["kind"], r.get("reason")) for r in audit_records(console_dir)]
    assert ("console.refused", "no reason given") in kinds and ("console.refused", "password_bad_password") in kinds
    assert ("console.full_video_approved", "case confirmed by the duty officer") in kinds


def test_admin_manages_accounts_and_dpo_sees_statistics_only(console, site):
    _, console_dir, _, alarm_id = site
    admin = client_for(console, "admin")
    csrf = csrf_of(admin, "/admin/users")
    r = admin.post("/admin/users", data={"csrf": csrf, "action": "add", "username": "newop", "role": "operator",
                                         "password": "short"})
    assert "too short" in r.text
    admin.post("/admin/users", data={"csrf": csrf, "action": "add", "username": "newop", "role": "operator",
                                     "password": "a long enough password"})
    assert console.store.user("newop").role == "operator"
    admin.post("/admin/users", data={"csrf": csrf, "action": "disable", "username": "operator"})
    assert client_for(console).post("/login", data={"username": "operator", "password": PASSWORD}).status_code == 401
    dpo = client_for(console, "dpo")
    page = dpo.get("/dpo").text
    assert "Verdicts" in page and "Retention" in page and alarm_id not in page and "<video" not in page
    assert {"console.user_added", "console.user_disabled", "console.dpo_view"} <= {
        r["kind"] for r in audit_records(console_dir)}


def test_device_panel_shows_health_and_a_stale_device_raises_a_console_alarm(site, tmp_path):
    station_dir, console_dir, keys, _ = site
    silent = create_device_keys(tmp_path / "dev2", "cam-02")      # enrolled, never heard from
    enrol_device(station_dir, silent)
    running = start_console(station_dir, console_dir)
    try:
        c = httpx.Client(base_url=running.url, timeout=60)
        login = c.post("/login", data={"username": "operator", "password": PASSWORD})
        cookie = login.headers["set-cookie"].split(";")[0]
        headers = {"Cookie": cookie, "Accept": "application/json"}
        devices = {d["device_id"]: d for d in c.get("/devices", headers=headers).json()["devices"]}
        assert devices["cam-01"]["stale"] is False and devices["cam-01"]["spool_depth"] == 2
        assert devices["cam-01"]["camera"] == "ok" and devices["cam-02"]["stale"] is True
        assert devices["cam-01"]["alarms_waiting"] == "-"      # an optional field this box did not send
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alarms = c.get("/api/alarms", headers=headers).json()["alarms"]
            if any(a["kind"] == "device_stale" and a["device_id"] == "cam-02" for a in alarms):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no stale-device alarm")
        stale = next(a for a in alarms if a["kind"] == "device_stale")
        page = c.get("/alarms/" + url(stale["alarm_id"]), headers={"Cookie": cookie})
        assert page.status_code == 200 and "has not been heard from" in page.text
        c.close()
    finally:
        running.stop()
    assert "console.device_stale" in {r["kind"] for r in audit_records(console_dir)}


def test_a_tampered_camera_shows_on_the_device_panel_and_raises_a_device_alarm(site):
    """The box's signed health statement says its camera is covered: the panel shows it, and the
    console raises its own device-kind alarm once (again only when the tamper kinds change)."""
    station_dir, console_dir, _keys, _ = site

    def report(kinds, *, signed=True):
        store = ClipStore(station_dir)
        tamper = {"state": "tampered" if kinds else "ok", "kinds": kinds, "mode": "day",
                  "since": {k: 1_800_000_000.0 for k in kinds}, "reference": {"day": "provision", "night": "none"}}
        store.record_seen("cam-01", "heartbeat", {"pixel": {"camera": "ok", "tamper": tamper}, "pixel_signed": signed})
        store.close()

    def tamper_alarms(c, headers):
        return [a for a in c.get("/api/alarms", headers=headers).json()["alarms"] if a["kind"] == "device_tamper"]

    def wait_for_tamper_alarms(c, headers, n):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = tamper_alarms(c, headers)
            if len(found) >= n:
                return found
            time.sleep(0.2)
        raise AssertionError(f"expected {n} camera tamper alarm(s), got {tamper_alarms(c, headers)}")

    report(["covered"], signed=False)          # the uplink's own word: neither shown nor alarmed
    running = start_console(station_dir, console_dir)
    try:
        c = httpx.Client(base_url=running.url)
        login = c.post("/login", data={"username": "operator", "password": PASSWORD})
        cookie = login.headers["set-cookie"].split(";")[0]
        headers = {"Cookie": cookie, "Accept": "application/json"}
        cam = next(d for d in c.get("/devices", headers=headers).json()["devices"] if d["device_id"] == "cam-01")
        assert cam["tamper"] == "-" and cam["tampered"] is False
        report(["covered"])
        cam = next(d for d in c.get("/devices", headers=headers).json()["devices"] if d["device_id"] == "cam-01")
        assert cam["tamper"] == "TAMPER covered" and cam["tampered"] is True
        page = c.get("/devices", headers={"Cookie": cookie})
        assert 'class="tampered"' in page.text and "TAMPER covered" in page.text
        [alarm] = wait_for_tamper_alarms(c, headers, 1)
        assert alarm["pattern"] == "camera tamper: covered" and alarm["device_id"] == "cam-01"
        detail = c.get("/alarms/" + url(alarm["alarm_id"]), headers={"Cookie": cookie})
        assert detail.status_code == 200 and "reports its camera <strong>covered</strong>" in detail.text
        time.sleep(2.5)                         # the same tamper, checked again: no second alarm
        assert len(tamper_alarms(c, headers)) == 1
        report(["covered", "moved"])            # a new kind: a new alarm
        second = [a for a in wait_for_tamper_alarms(c, headers, 2) if a["alarm_id"] != alarm["alarm_id"]]
        assert second[0]["pattern"] == "camera tamper: covered, moved"
        c.close()
    finally:
        running.stop()
    records = [r for r in audit_records(console_dir) if r["kind"] == "console.device_tamper"]
    assert [r["kinds"] for r in records] == [["covered"], ["covered", "moved"]]


def test_live_push_reaches_open_pages_over_a_real_server(site):
    station_dir, console_dir, keys, _ = site
    running = start_console(station_dir, console_dir)
    received: list[dict] = []
    try:
        c = httpx.Client(base_url=running.url, timeout=60)
        cookie = c.post("/login", data={"username": "operator", "password": PASSWORD}).headers["set-cookie"]
        headers = {"Cookie": cookie.split(";")[0]}
        ready = threading.Event()

        def listen():
            with httpx.stream("GET", running.url + "/events", headers=headers, timeout=60) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                ready.set()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        received.append(json.loads(line[6:]))
                        return

        t = threading.Thread(target=listen, daemon=True)
        t.start()
        assert ready.wait(60)
        alarm_id = store_alarm(station_dir, keys, 2)
        t.join(60)      # how fast is a figure of `make bench`, not a test
        c.close()
    finally:
        running.stop()
    assert received and received[0]["alarm_id"] == alarm_id and received[0]["type"] == "alarm"


def test_training_export_writes_verdicts_as_skeletons_only(console, site, tmp_path, capsys):
    import importlib.util

    from appliance.cli import main

    station_dir, console_dir, keys, alarm_id = site
    second = store_alarm(station_dir, keys, 2)
    for aid, verdict, code in ((alarm_id, "true", "violence_confirmed"), (second, "unclear", "occluded")):
        console.store.claim(aid, "operator")
        console.store.close_alarm(aid, "operator", verdict, code, "")
    out = tmp_path / "verdicts.jsonl"
    assert main(["station", "training-export", "--dir", str(station_dir), "--console-dir", str(console_dir),
                 "--since", "2026-01-01", "--out", str(out)]) == 0
    assert "2 verdict(s) exported" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["alarm_id"], r["label"]) for r in rows] == [(alarm_id, 1), (second, None)]
    row = rows[0]
    assert row["features"] == {"persons": 2, "wrist_speed_torso_per_s": 4.25}
    assert row["frames"][0]["persons"][0]["keypoints"][0] == [100.0, 50.0, 0.9]
    assert not {"video", "webm", "pixels", "image"} & set(json.dumps(rows).lower().replace('"', " ").split())
    assert "console.training_export" in {r["kind"] for r in audit_records(console_dir)}
    # Nothing since tomorrow.
    assert main(["station", "training-export", "--dir", str(station_dir), "--console-dir", str(console_dir),
                 "--since", time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400)), "--out", str(out)]) == 0
    assert out.read_text() == ""
    # The training script reads it back as tracked frames (true/false only).
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = importlib.util.spec_from_file_location("train", Path(__file__).parent.parent / "scripts" /
                                                  "train_fight_classifier.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    [(aid, label, frames)] = train.read_training_export(out)
    assert (aid, label, len(frames)) == (alarm_id, 1, 3)
    assert frames[0].persons[1].track_id == 5 and frames[0].persons[0].keypoints.shape == (17, 3)
    train.clip_windows(frames, 0.2, 0.1)   # the same feature path as the dataset's clips


def test_tls_certificate_from_setup_serves_https_with_a_host_cookie(site, capsys):
    from appliance.cli import main
    from appliance.common.errors import InputError
    from appliance.station.console.service import build_server

    station_dir, console_dir, _, _ = site
    assert main(["station", "console", "tls-cert", "--console-dir", str(console_dir), "--host", "127.0.0.1",
                 "--host", "console.example"]) == 0
    cert, key = console_dir / "tls" / "console.crt", console_dir / "tls" / "console.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert main(["station", "console", "demo-user", "--console-dir", str(console_dir)]) == 0
    out = capsys.readouterr().out
    name = re.search(r"^user (\S+)$", out, re.M).group(1)
    password = re.search(r"^password (\S+)$", out, re.M).group(1)
    with pytest.raises(InputError, match="refusing plain HTTP"):
        build_server(station_dir, console_dir, bind="0.0.0.0:0")
    running = start_console(station_dir, console_dir, tls_cert=cert, tls_key=key)
    try:
        assert running.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=running.url, verify=ssl.create_default_context(cafile=str(cert)), timeout=60) as c:
            r = c.post("/login", data={"username": name, "password": password})
            assert r.status_code == 303
            assert r.headers["set-cookie"].startswith("__Host-console=")
            page = c.get("/")
            assert page.status_code == 200 and "max-age" in page.headers["strict-transport-security"]
    finally:
        running.stop()
    assert ("console.user_added", "demo") in {(r["kind"], r.get("user")) for r in audit_records(console_dir)}
