"""Disclosure layers 2 and 3 in the console: the evidence key's custody (wrapped under a
supervisor's password), the in-memory vault of opened video, Range streaming, and who may play what.

Real argon2id and AES-GCM, real envelopes sealed by the contracts' sealer, the real Starlette app.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from appliance.common.errors import InputError
from appliance.contracts.envelope import parse_envelope, seal_clip
from appliance.contracts.keys import HpkePrivateKey, generate_hpke_key, load_hpke_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.console.custody import EvidenceWrap, WrongPassword, unwrap_key, wrap_key
from appliance.station.console.store import ConsoleStore
from appliance.station.console.video import HeldVideo, VideoVault, byte_range
from appliance.station.keys import StationKeyPaths
from appliance.station.store import ClipStore
from tests.test_console import (  # noqa: F401  (fixtures)
    PASSWORD,
    PASSWORD_HASH,
    audit_records,
    client_for,
    console,
    csrf_of,
    site,
    url,
)

SUPERVISOR_PASSWORD = PASSWORD


# -- custody of the evidence key --------------------------------------------------------------


def test_a_wrap_opens_only_with_its_password_user_and_key():
    key = HpkePrivateKey.generate("X25519")
    wrap = wrap_key(key, "sup-ben", "ben's long password")
    assert unwrap_key(wrap, "ben's long password").raw == key.raw
    assert key.raw.hex() not in wrap.blob and key.raw not in wrap.blob.encode()
    with pytest.raises(WrongPassword):
        unwrap_key(wrap, "ben's long passworD")
    # The same blob under another user's name, or relabelled as another key, does not open.
    with pytest.raises(WrongPassword):
        unwrap_key(EvidenceWrap("sup-eve", wrap.fingerprint, wrap.kem, wrap.blob), "ben's long password")
    other = HpkePrivateKey.generate("X25519").public_key().fingerprint
    with pytest.raises(WrongPassword):
        unwrap_key(EvidenceWrap("sup-ben", other, wrap.kem, wrap.blob), "ben's long password")
    # Each wrap has its own salt and nonce: wrapping twice gives different blobs.
    again = wrap_key(key, "sup-ben", "ben's long password")
    assert json.loads(again.blob)["salt"] != json.loads(wrap.blob)["salt"]
    # A damaged blob is a clear error, not a crash.
    damaged = {**json.loads(wrap.blob), "salt": "!not base64"}
    broken = EvidenceWrap("sup-ben", wrap.fingerprint, wrap.kem, json.dumps(damaged))
    with pytest.raises(InputError, match="damaged"):
        unwrap_key(broken, "ben's long password")


def test_wraps_are_stored_for_supervisors_only_and_survive_a_password_change(site, tmp_path, capsys):  # noqa: F811
    from appliance.cli import main

    station_dir, console_dir, _, _ = site
    key_file = tmp_path / "offline" / "evidence.key"
    key_file.parent.mkdir()
    public = generate_hpke_key(key_file, StationKeyPaths.of(station_dir).directory / "evidence.pub")
    args = ["station", "console", "evidence-key", "wrap", "--console-dir", str(console_dir), "--key", str(key_file),
            "--station-dir", str(station_dir)]

    def run(argv, stdin):
        import io
        import sys

        old = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            return main(argv)
        finally:
            sys.stdin = old

    assert run([*args, "--user", "operator"], PASSWORD + "\n") != 0           # not a supervisor
    assert run([*args, "--user", "supervisor"], "not the password\n") != 0     # a typo wraps nothing
    assert run([*args, "--user", "supervisor"], PASSWORD + "\n") == 0
    # A key that is not the station's evidence key is refused.
    stray = tmp_path / "stray.key"
    generate_hpke_key(stray, tmp_path / "stray.pub")
    assert run([*args[:-4], "--key", str(stray), "--station-dir", str(station_dir), "--user", "supervisor"],
               PASSWORD + "\n") != 0
    store = ConsoleStore(console_dir)
    try:
        wrap = store.wrap("supervisor")
        assert wrap.fingerprint == public.fingerprint and [w.username for w in store.wraps()] == ["supervisor"]
    finally:
        store.close()
    assert run(["station", "console", "evidence-key", "list", "--console-dir", str(console_dir)], "") == 0
    assert f"supervisor               {public.fingerprint}" in capsys.readouterr().out

    # A password change re-wraps under the new password; the old one no longer opens it.
    new = "a brand new supervisor password"
    passwd = ["station", "console", "user", "passwd", "supervisor", "--console-dir", str(console_dir)]
    assert run(passwd, "wrong current password\n" + new + "\n") != 0
    assert run(passwd, PASSWORD + "\n" + new + "\n") == 0
    store = ConsoleStore(console_dir)
    try:
        rewrapped = store.wrap("supervisor")
        assert unwrap_key(rewrapped, new).public_key().fingerprint == public.fingerprint
        with pytest.raises(WrongPassword):
            unwrap_key(rewrapped, PASSWORD)
    finally:
        store.close()
    # An administrator's reset (no current password) drops the wrap: it could not be opened any more.
    assert run([*passwd, "--drop-wrap"], "an administrator's reset password\n") == 0
    store = ConsoleStore(console_dir)
    try:
        assert store.wrap("supervisor") is None
    finally:
        store.close()
    kinds = [(r["kind"], r.get("target"), r.get("evidence_wrap")) for r in audit_records(console_dir)]
    assert ("console.evidence_key_wrapped", "supervisor", None) in kinds
    assert ("console.password_changed", "supervisor", "rewrapped") in kinds
    assert ("console.password_changed", "supervisor", "dropped") in kinds


# -- the vault and Range ------------------------------------------------------------------------


def held(alarm_id="cam-01#1", size=1000) -> HeldVideo:
    return HeldVideo(alarm_id, "full", bytes(range(256)) * (size // 256) + b"x" * (size % 256), {})


def test_vault_grants_expire_and_are_bounded():
    vault = VideoVault(grant_ttl_s=0.3, grant_bytes=2500)
    vault.grant(held("a#1"), user="anna", request_id=1, approved_by="ben")
    assert vault.granted("anna", "a#1") is not None
    assert vault.granted("carl", "a#1") is None and vault.granted("anna", "a#2") is None
    dropped = vault.grant(held("a#2"), user="anna", request_id=2, approved_by="ben")
    assert dropped == []
    dropped = vault.grant(held("a#3"), user="anna", request_id=3, approved_by="ben")   # over 2500 bytes
    assert [d.request_id for d in dropped] == [1] and vault.granted("anna", "a#1") is None
    deadline = time.monotonic() + 10
    expired: list[HeldVideo] = []
    while time.monotonic() < deadline and len(expired) < 2:
        time.sleep(0.1)
        expired += vault.expire()
    assert sorted(e.request_id for e in expired) == [2, 3]
    assert vault.granted("anna", "a#3") is None and vault.held_bytes()["grants"] == 0


def test_vault_reveals_are_bound_to_the_session():
    vault = VideoVault(reveal_ttl_s=60)
    vault.reveal("session-a", "cam#1")
    assert vault.revealed("session-a", "cam#1")
    assert not vault.revealed("session-b", "cam#1") and not vault.revealed("session-a", "cam#2")
    vault.end_session("session-a")
    assert not vault.revealed("session-a", "cam#1")


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None), ("bytes=0-", 100, (0, 99)), ("bytes=10-19", 100, (10, 19)),
    ("bytes=90-500", 100, (90, 99)), ("bytes=-10", 100, (90, 99)), ("bytes=0-0", 100, (0, 0)),
    ("bytes=0-1,5-6", 100, None),
])
def test_byte_range(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=50-10", "bytes=-0", "bytes=-", "items=0-1", "bytes=x-"])
def test_byte_range_unsatisfiable(header):
    with pytest.raises(ValueError):
        byte_range(header, 100)


# -- a version-1 clip: no bystander-pixelated rendition -------------------------------------


def store_v1_clip(station_dir, keys, sequence: int) -> bytes:
    clip = synthetic_clip(frames=6)
    public = load_hpke_public_key(StationKeyPaths.of(station_dir).hpke_public)
    data = seal_clip(clip, device_id=keys.device_id, sequence=sequence, signing_key=keys.signing_key(),
                     station_public_key=public)
    store = ClipStore(station_dir)
    try:
        store.store(parse_envelope(data))
    finally:
        store.close()
    return clip.video


def test_a_version_1_clip_is_not_shown_at_layer_2(console, site):  # noqa: F811
    station_dir, console_dir, keys, alarm_id = site
    store_v1_clip(station_dir, keys, 1)
    op = client_for(console, "operator")
    csrf = csrf_of(op)
    page = op.get(f"/alarms/{url(alarm_id)}").text
    assert 'id="not-pixelated"' in page
    r = op.post(f"/alarms/{url(alarm_id)}/reveal", data={"csrf": csrf, "reason": "check who is involved"})
    page = op.get(r.headers["location"]).text
    assert "envelope version 1" in page and "request the full video" in page and "<video" not in page
    assert op.get(f"/alarms/{url(alarm_id)}/video").status_code == 403
    records = audit_records(console_dir)
    view = [r for r in records if r["kind"] == "station.view" and r["layer"] == "video_blurred"][-1]
    assert (view["outcome"], view["reason"], view["operator"]) == ("not_pixelated", "check who is involved",
                                                                   "operator")
    assert ("console.refused", "no_reveal") in {(r["kind"], r.get("reason")) for r in records}
    assert console.vault.held_bytes()["cache"] == 0          # nothing was decrypted for it


# -- version 2: layer 2 (pixelated) and layer 3 (full, four eyes) through the real app ----------


@pytest.fixture
def evidence(site, tmp_path):  # noqa: F811
    """The station's evidence key: public half in keys/evidence.pub, private half offline."""
    station_dir = site[0]
    private = tmp_path / "offline" / "evidence.key"
    private.parent.mkdir()
    generate_hpke_key(private, StationKeyPaths.of(station_dir).directory / "evidence.pub")
    return private


def store_v2_clip(station_dir, keys, sequence: int):
    clip = synthetic_clip(frames=12, width=96, height=64, redacted=True, seed=sequence)
    paths = StationKeyPaths.of(station_dir)
    data = seal_clip(clip, device_id=keys.device_id, sequence=sequence, signing_key=keys.signing_key(),
                     station_public_key=load_hpke_public_key(paths.hpke_public),
                     evidence_public_key=load_hpke_public_key(paths.directory / "evidence.pub"))
    store = ClipStore(station_dir)
    try:
        store.store(parse_envelope(data))
    finally:
        store.close()
    return clip


def login_again(app, role):
    """A fresh login session (its own cookie) and its CSRF token."""
    c = client_for(app, role)
    return c, re.search(r'data-csrf="([^"]+)"', c.get("/", follow_redirects=True).text).group(1)


def test_layer_2_plays_the_pixelated_rendition_to_the_revealing_session_only(console, site, evidence):  # noqa: F811
    station_dir, console_dir, keys, alarm_id = site
    clip = store_v2_clip(station_dir, keys, 1)
    op, csrf = login_again(console, "operator")
    assert op.get(f"/alarms/{url(alarm_id)}/video").status_code == 403          # no reveal yet
    r = op.post(f"/alarms/{url(alarm_id)}/reveal", data={"csrf": csrf, "reason": "who started it?"})
    page = op.get(r.headers["location"]).text
    assert 'id="clip-video"' in page and 'id="outlines"' in page and "<script>" not in page
    whole = op.get(f"/alarms/{url(alarm_id)}/video")
    assert whole.status_code == 200 and whole.content == clip.redacted.video != clip.video
    assert whole.headers["content-type"] == "video/webm" and whole.headers["cache-control"] == "no-store"
    assert whole.headers["accept-ranges"] == "bytes"
    part = op.get(f"/alarms/{url(alarm_id)}/video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == clip.redacted.video[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(clip.redacted.video)}"
    tail = op.get(f"/alarms/{url(alarm_id)}/video", headers={"Range": f"bytes={len(clip.redacted.video)}-"})
    assert tail.status_code == 416
    outlines = op.get(f"/api/alarms/{url(alarm_id)}/outlines").json()
    assert outlines["rendition"] == "redacted" and outlines["pixelated_tracks"] == ["2"]
    assert outlines["involved_boxes"]["1"][0] == list(clip.involved_boxes["1"][0])
    assert len(outlines["frame_times_s"]) == len(clip.frame_times)
    # The full rendition is not reachable at this layer, nor by the station key at all.
    assert op.get(f"/alarms/{url(alarm_id)}/full-video").status_code == 403
    assert op.get(f"/api/alarms/{url(alarm_id)}/outlines?layer=full").status_code == 403
    # The same user in another login session, another operator, the officer, the administrator: refused.
    again, _ = login_again(console, "operator")
    other, _ = login_again(console, "operator2")
    for client in (again, other):
        assert client.get(f"/alarms/{url(alarm_id)}/video").status_code == 403
        assert client.get(f"/api/alarms/{url(alarm_id)}/outlines").status_code == 403
        assert 'id="clip-video"' not in client.get(f"/alarms/{url(alarm_id)}").text
    for role in ("dpo", "admin"):
        c, _ = login_again(console, role)
        for path in ("video", "full-video"):
            assert c.get(f"/alarms/{url(alarm_id)}/{path}").status_code == 403
        assert c.get(f"/api/alarms/{url(alarm_id)}/outlines").status_code == 403
    # Logging out ends the reveal.
    op.post("/logout", data={"csrf": csrf})
    records = audit_records(console_dir)
    reveal = [r for r in records if r["kind"] == "station.view" and r["layer"] == "video_blurred"]
    assert reveal[0]["outcome"] == "shown" and reveal[0]["reason"] == "who started it?"
    assert [r["reason"] for r in reveal[1:]] == ["playback"]      # the whole-body fetch; the ranges are seeks
    refused = {(r.get("user"), r["reason"]) for r in records if r["kind"] == "console.refused"}
    assert {("operator", "no_reveal"), ("operator2", "no_reveal"), ("operator", "no_grant"), ("dpo", "role"),
            ("admin", "role")} <= refused


def files_under(*dirs):
    return {p: p.stat().st_size for d in dirs for p in d.rglob("*") if p.is_file()}


def test_layer_3_full_video_needs_a_supervisors_password_and_stays_in_memory(
        site, evidence, tmp_path, monkeypatch):  # noqa: F811
    import sys
    import tempfile

    from appliance.contracts.envelope import EnvelopeError, open_envelope
    from appliance.contracts.keys import load_hpke_private_key
    from appliance.station.console.app import Console
    from appliance.station.console.service import open_console_audit_log

    station_dir, console_dir, keys, alarm_id = site
    clip = store_v2_clip(station_dir, keys, 1)
    own_tmp = tmp_path / "process-tmp"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))
    audit = open_console_audit_log(console_dir)
    app = Console(station_dir, console_dir, audit=audit, login_guard={"per_client": 1000},
                  vault=VideoVault(grant_ttl_s=600))
    try:
        op, csrf = login_again(app, "operator")
        sup, scsrf = login_again(app, "supervisor")
        op.post(f"/alarms/{url(alarm_id)}/request-full", data={"csrf": csrf, "reason": "case 2026-118"})
        [req] = app.store.disclosures(state="pending")
        # No supervisor holds a wrap: the approvals page says how to set one up; approving opens nothing.
        page = sup.get("/approvals").text
        assert "No supervisor holds one yet" in page and "evidence-key wrap" in page
        r = sup.post(f"/approvals/{req['id']}", data={"csrf": scsrf, "decision": "approve", "password": PASSWORD,
                                                      "reason": "duty officer agrees"})
        assert "hold%20no%20wrap" in r.headers["location"]
        assert op.get(f"/alarms/{url(alarm_id)}/full-video").status_code == 403
        assert f'id="pending-grant-{req["id"]}"' in op.get(f"/alarms/{url(alarm_id)}").text

        # The custodian wraps the offline key for the supervisor; the supervisor opens the grant.
        app.store.put_wrap(wrap_key(load_hpke_private_key(evidence), "supervisor", PASSWORD))
        before = files_under(station_dir, console_dir)
        opened_for_writing: list[str] = []
        tracing = [True]

        def hook(event, args):
            if tracing[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
                mode, flags = args[1], args[2] if len(args) > 2 else 0
                if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int)
                                                                                 and flags & 0o3):
                    opened_for_writing.append(str(args[0]))

        sys.addaudithook(hook)
        try:
            op.post(f"/alarms/{url(alarm_id)}/reveal", data={"csrf": csrf, "reason": "first look"})
            assert op.get(f"/alarms/{url(alarm_id)}/video").content == clip.redacted.video
            assert sup.post(f"/approvals/{req['id']}/grant", data={"csrf": scsrf, "password": "wrong password!"}
                            ).status_code == 403
            r = sup.post(f"/approvals/{req['id']}/grant", data={"csrf": scsrf, "password": PASSWORD})
            assert "is%20open%20for%20operator" in r.headers["location"]
            page = op.get(f"/alarms/{url(alarm_id)}").text
            assert 'id="full-video"' in page and "approved by supervisor" in page
            full = op.get(f"/alarms/{url(alarm_id)}/full-video", headers={"Range": "bytes=0-"})
            assert full.status_code == 206 and full.content == clip.video
            assert op.get(f"/alarms/{url(alarm_id)}/full-video", headers={"Range": "bytes=50-60"}).content == \
                clip.video[50:61]
            assert op.get(f"/api/alarms/{url(alarm_id)}/outlines?layer=full").json()["rendition"] == "full"
            # Only the requester: not another operator, not the approving supervisor, not the officer.
            for role in ("operator2", "supervisor", "dpo", "admin"):
                c, ccsrf = login_again(app, role)
                assert c.get(f"/alarms/{url(alarm_id)}/full-video").status_code == 403, role
                assert c.get(f"/api/alarms/{url(alarm_id)}/outlines?layer=full").status_code == 403, role
                assert 'id="full-video"' not in c.get(f"/alarms/{url(alarm_id)}").text
                if role != "supervisor":     # opening a grant is a supervisor's (with a password)
                    assert c.post(f"/approvals/{req['id']}/grant", data={"csrf": ccsrf, "password": PASSWORD}
                                  ).status_code == 403, role
                home = c.get("/", follow_redirects=True).text
                assert "<video" not in home and 'id="reveal"' not in home
        finally:
            tracing[0] = False
        # Nothing decrypted reached a file: no new file, nothing written but the console's own
        # database and audit log, no temporary file, and no file holds any of the video's bytes.
        after = files_under(station_dir, console_dir)
        assert set(after) - set(before) <= {console_dir / "console.db-wal", console_dir / "console.db-shm"}
        allowed_writes = {str(console_dir / n) for n in ("console.db", "console.db-wal", "console.db-shm",
                                                          "audit.jsonl")}
        assert {p for p in opened_for_writing if p not in allowed_writes and not p.endswith(".lock")} == set()
        assert list(own_tmp.iterdir()) == []
        probes = []
        for video in (clip.video, clip.redacted.video):
            chunks = [video[i:i + 64] for i in range(0, len(video) - 64, 64)]
            probes += [p for p in chunks if len(set(p)) > 40][:32]    # distinctive chunks (not zero runs)
        assert len(probes) >= 16
        for path in after:
            content = path.read_bytes()
            assert not any(p in content for p in probes), path

        # The console's files and database alone cannot open the full rendition: the evidence key is
        # in no file there, the station key opens only the redacted one, and the wrap needs the password.
        envelope = ClipStore(station_dir)
        try:
            data = envelope.read_envelope(envelope.get(alarm_id))
        finally:
            envelope.close()
        evidence_raw = load_hpke_private_key(evidence).raw
        for path in files_under(station_dir, console_dir):
            assert evidence_raw not in path.read_bytes() and evidence_raw.hex().encode() not in path.read_bytes()
        station_key = load_hpke_private_key(StationKeyPaths.of(station_dir).hpke_private)
        with pytest.raises(EnvelopeError):
            open_envelope(data, station_key, app.view, rendition="full")
        wrap = app.store.wrap("supervisor")
        for guess in (app.store.user("supervisor").password_hash, "", wrap.blob):
            with pytest.raises(WrongPassword):
                unwrap_key(wrap, guess)

        # The grant ends (here: expires now); the operator's page and URL close.
        held = app.vault.granted("operator", alarm_id)
        held.expires_monotonic = 0.0
        assert app.expire_grants() == 1
        assert op.get(f"/alarms/{url(alarm_id)}/full-video").status_code == 403
    finally:
        app.close()
        audit.close()
    records = audit_records(console_dir)
    kinds = [r["kind"] for r in records]
    granted = [r for r in records if r["kind"] == "console.full_video_granted"]
    assert len(granted) == 1 and granted[0]["requested_by"] == "operator" and granted[0]["user"] == "supervisor"
    views = [r for r in records if r["kind"] == "station.view" and r.get("layer") == "video_full"]
    assert [v["operator"] for v in views] == ["operator"] and views[0]["request"] == req["id"]
    assert [r["outcome"] for r in records if r["kind"] == "station.view" and r.get("layer") == "video_blurred"
            and "outcome" in r] == ["shown"]
    ended = [r for r in records if r["kind"] == "console.full_video_grant_ended"]
    assert ended[0]["why"] == "expired" and ended[0]["views"] == 1
    assert ("password_bad_password" in {r.get("reason") for r in records if r["kind"] == "console.refused"})
    assert kinds.index("console.full_video_approved") < kinds.index("console.full_video_granted")


def test_the_station_key_comes_from_the_systemd_credential_when_there_is_one(tmp_path, monkeypatch):
    from appliance.station.console.app import STATION_KEY_CREDENTIAL, default_station_key

    station = tmp_path / "station"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert default_station_key(station) == StationKeyPaths.of(station).hpke_private
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert default_station_key(station) == StationKeyPaths.of(station).hpke_private    # not passed: the dir
    (credentials / STATION_KEY_CREDENTIAL).write_bytes(b"key")
    assert default_station_key(station) == credentials / STATION_KEY_CREDENTIAL


STRACE = shutil.which("strace")
OPEN_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
TRACED = re.compile(r"^(?:\[pid\s+)?\d+\]?\s+(\w+)\((.*)$")


@pytest.mark.slow
@pytest.mark.skipif(STRACE is None, reason="strace not installed (scripts/ensure-system-deps.sh installs it)")
def test_strace_the_console_process_writes_no_video_anywhere(site, evidence, tmp_path):  # noqa: F811
    """Every system call of the real console process (``strace -f``, every thread, C level too)
    while an operator reveals and plays the pixelated clip and, after a supervisor's approval, the
    full one: nothing is opened for writing outside the console's own directory (its database,
    audit log and key) and SQLite's shared-memory index of the station database, no memfd is
    made, and no file anywhere under the test's directories holds a byte run of either video."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from appliance.contracts.keys import load_hpke_private_key

    station_dir, console_dir, keys, alarm_id = site
    clip = store_v2_clip(station_dir, keys, 1)
    accounts = ConsoleStore(console_dir)
    accounts.put_wrap(wrap_key(load_hpke_private_key(evidence), "supervisor", PASSWORD))
    accounts.close()
    log, ready, home = tmp_path / "strace.log", tmp_path / "console.url", tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([STRACE, "-f", "-qq", "-s", "200", "-o", str(log), "-e", "trace=%file,memfd_create",
                             "-e", "signal=none", sys.executable, "-m", "appliance.cli", "station", "console",
                             "serve", "--station-dir", str(station_dir), "--console-dir", str(console_dir),
                             "--bind", "127.0.0.1:0", "--ready-file", str(ready),
                             "--login-attempts-per-minute", "1000"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is not None and "ptrace" in proc.stderr.read().lower():
            pytest.skip("strace cannot trace here")
        base = ready.read_text().strip()

        def session(user):
            c = httpx.Client(base_url=base, timeout=120)
            c.headers["Cookie"] = c.post("/login", data={"username": user, "password": PASSWORD}
                                         ).headers["set-cookie"].split(";")[0]
            return c, re.search(r'data-csrf="([^"]+)"', c.get("/").text).group(1)

        op, csrf = session("operator")
        sup, scsrf = session("supervisor")
        path = f"/alarms/{url(alarm_id)}"
        op.post(f"{path}/reveal", data={"csrf": csrf, "reason": "who is involved"})
        assert op.get(f"{path}/video").content == clip.redacted.video
        assert op.get(f"{path}/video", headers={"Range": "bytes=10-99"}).status_code == 206
        op.post(f"{path}/request-full", data={"csrf": csrf, "reason": "case 2026-121"})
        rid = re.findall(r'action="/approvals/(\d+)"', sup.get("/approvals").text)[-1]
        sup.post(f"/approvals/{rid}", data={"csrf": scsrf, "decision": "approve", "password": PASSWORD,
                                            "reason": "duty officer agrees"})
        assert op.get(f"{path}/full-video").content == clip.video
        op.close()
        sup.close()
    finally:
        # SIGTERM to the console (strace's child), which stops cleanly; strace then ends with it.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for pid in (children.read_text().split() if children.exists() else []):
            os.kill(int(pid), signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    allowed = (str(console_dir) + "/", str(ready), str(ready) + ".tmp", str(station_dir / "station.db-shm"),
               str(station_dir / "station.db-wal"), "/dev/null", "/dev/urandom", "/dev/tty")
    writes, memfds, own = [], [], []
    for line in log.read_text(errors="replace").splitlines():
        m = TRACED.match(line)
        if not m:
            continue
        call, args = m.groups()
        if call == "memfd_create":
            memfds.append(line)
        target = re.search(r'"([^"]*)"', args)
        if target is None or " = -1 " in args:
            continue
        written = (call in ("open", "openat", "openat2") and OPEN_FLAGS.search(args)) or call in (
            "creat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "link", "linkat", "symlink", "symlinkat")
        name = target.group(1)
        if written and not name.startswith(allowed):
            writes.append(line)
        elif written:
            own.append(name)
    assert any(n.endswith("audit.jsonl") for n in own) and any("console.db" in n for n in own)   # it traced
    assert memfds == []
    assert writes == [], "\n".join(writes[:20])
    assert list((tmp_path / "tmp").iterdir()) == []
    probes = []
    for video in (clip.video, clip.redacted.video):
        chunks = [video[i:i + 64] for i in range(0, len(video) - 64, 64)]
        probes += [p for p in chunks if len(set(p)) > 40][:32]
    for file in (p for p in tmp_path.rglob("*") if p.is_file() and p != log):
        content = file.read_bytes()
        assert not any(p in content for p in probes), file


@pytest.fixture(params=["embedded", "scale"])
def storage_tier(request, tmp_path):
    """A station directory on each storage tier (scale-out: real PostgreSQL and S3 servers)."""
    from appliance.station.storage import StorageSettings, write_storage_file

    station_dir = tmp_path / "station"
    station_dir.mkdir()
    if request.param == "scale":
        write_storage_file(station_dir, request.getfixturevalue("scale_storage"))
    else:
        write_storage_file(station_dir, StorageSettings())
    return station_dir


@pytest.mark.servers
def test_the_console_plays_a_clip_from_either_storage_tier(storage_tier, tmp_path):
    """The console finds the envelope where the station stored it: a file under envelopes/, or an
    object in the S3 store (scale-out tier, with the console's own credentials)."""
    from appliance.station.console.app import Console
    from appliance.station.console.service import open_console_audit_log
    from appliance.station.enrol import create_device_keys, enrol_device
    from appliance.station.keys import generate_station_keys, init_evidence_key

    station_dir, console_dir = storage_tier, tmp_path / "console"
    generate_station_keys(station_dir, kem="X25519")
    (tmp_path / "offline").mkdir()
    init_evidence_key(station_dir, tmp_path / "offline" / "evidence.key")
    keys = create_device_keys(tmp_path / "dev", "cam-09")
    enrol_device(station_dir, keys)
    clip = store_v2_clip(station_dir, keys, 4)
    accounts = ConsoleStore(console_dir)
    accounts.add_user("operator", "operator", PASSWORD_HASH)
    accounts.close()
    audit = open_console_audit_log(console_dir)
    app = Console(station_dir, console_dir, audit=audit)
    try:
        op, csrf = login_again(app, "operator")
        op.post(f"/alarms/{url('cam-09#4')}/reveal", data={"csrf": csrf, "reason": "check the scene"})
        assert op.get(f"/alarms/{url('cam-09#4')}/video").content == clip.redacted.video
    finally:
        app.close()
        audit.close()
