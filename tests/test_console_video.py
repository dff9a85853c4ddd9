"""Disclosure layers 2 and 3 in the console: the evidence key's custody (wrapped under a
supervisor's password), the in-memory vault of opened video, Range streaming, and who may play what.

Real argon2id and AES-GCM, real envelopes sealed by the contracts' sealer, the real Starlette app.
"""

from __future__ import annotations

import json
import re
import time

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


def test_wraps_are_stored_for_supervisors_only_and_survive_a_password_change(site, tmp_path, capsys):
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
