"""`appliance station ...`: keygen, list, export/decrypt with operator+reason, frame pinpointing."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.box.seal import parse_envelope, seal_clip
from appliance.cli import main
from appliance.contracts.audit.verify import verify_log
from appliance.contracts.keys import load_hpke_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths
from appliance.station.store import ClipStore


@pytest.fixture
def station(tmp_path, capsys):
    station_dir = tmp_path / "station"
    assert main(["station", "keygen", "--dir", str(station_dir)]) == 0
    out = capsys.readouterr().out
    paths = StationKeyPaths.of(station_dir)
    for private in paths.private_files():
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        # Nothing of a private key reaches the terminal.
        body = private.read_text().splitlines()
        assert not any(line in out for line in body if len(line) > 20 and "-----" not in line)
    assert "hpke (MLKEM768_X25519)" in out
    keys = create_device_keys(tmp_path / "dev", "dev-x")
    enrol_device(station_dir, keys)
    return station_dir, keys


def _store(station_dir: Path, keys, clip, sequence: int) -> str:
    env = seal_clip(clip, device_id=keys.device_id, sequence=sequence, signing_key=keys.signing_key(),
                    station_public_key=load_hpke_public_key(StationKeyPaths.of(station_dir).hpke_public))
    store = ClipStore(station_dir)
    try:
        return store.store(parse_envelope(env)).clip.clip_id
    finally:
        store.close()


def test_keygen_refuses_to_overwrite(station, capsys):
    station_dir, _ = station
    assert main(["station", "keygen", "--dir", str(station_dir)]) == 2
    assert "refusing to replace" in capsys.readouterr().err


def test_export_requires_operator_and_reason(station, tmp_path, capsys):
    station_dir, keys = station
    clip_id = _store(station_dir, keys, synthetic_clip(), 1)
    out = tmp_path / "out"
    for extra in ([], ["--operator", "kim"], ["--operator", "kim", "--reason", "  "], ["--reason", "case 12"]):
        assert main(["station", "export", clip_id, str(out), "--dir", str(station_dir), *extra]) == 2
        assert "access refused" in capsys.readouterr().err
    assert not out.exists()


def test_export_writes_clip_and_intact_report(station, tmp_path, capsys):
    station_dir, keys = station
    clip = synthetic_clip(frames=10, width=96, height=64)
    clip_id = _store(station_dir, keys, clip, 1)
    assert main(["station", "list", "--dir", str(station_dir), "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["clip_id"] == clip_id and row["pattern"] == "strike"
    out = tmp_path / "out"
    rc = main(["station", "export", clip_id, str(out), "--dir", str(station_dir), "--operator", "kim",
               "--reason", "case 2026/17: assault report"])
    assert rc == 0
    assert (out / f"{clip_id}.webm").read_bytes() == clip.video
    report = json.loads((out / f"{clip_id}.report.json").read_text())
    assert report["verdict"] == "intact" and report["signature"] == "valid"
    assert report["frames"]["decoded"] == 10 and report["frames"]["mismatched_frames"] == []
    assert report["operator"] == "kim" and report["device_id"] == "dev-x"
    records = [json.loads(line) for line in (station_dir / "audit.jsonl").read_text().splitlines()]
    export = [r for r in records if r.get("kind") == "station.export"]
    assert export and "case 2026/17" in json.dumps(export[0])
    assert verify_log(station_dir / "audit.jsonl").ok


def test_export_pinpoints_an_altered_frame(station, tmp_path, capsys):
    station_dir, keys = station
    clip = synthetic_clip(frames=8, width=96, height=64)
    hashes = list(clip.frame_sha256)
    hashes[3] = "00" * 32  # the sealed list disagrees with the video at frame 3
    clip_id = _store(station_dir, keys, replace(clip, frame_sha256=tuple(hashes)), 1)
    rc = main(["station", "export", clip_id, str(tmp_path / "o"), "--dir", str(station_dir),
               "--operator", "kim", "--reason", "case 9: verify"])
    assert rc == 6
    assert "ALTERED" in capsys.readouterr().out
    report = json.loads((tmp_path / "o" / f"{clip_id}.report.json").read_text())
    assert report["verdict"] == "altered" and report["frames"]["mismatched_frames"] == [3]


def test_decrypt_an_envelope_file_and_devices_list(station, tmp_path, capsys):
    station_dir, keys = station
    clip = synthetic_clip()
    env = seal_clip(clip, device_id="dev-x", sequence=5, signing_key=keys.signing_key(),
                    station_public_key=load_hpke_public_key(StationKeyPaths.of(station_dir).hpke_public))
    path = tmp_path / "0000000000000005.dev-x.env"
    path.write_bytes(env)
    assert main(["station", "decrypt", str(path), str(tmp_path / "o"), "--dir", str(station_dir),
                 "--operator", "kim", "--reason", "spool recovery"]) == 0
    assert (tmp_path / "o" / "0000000000000005.dev-x.webm").read_bytes() == clip.video
    flipped = bytearray(env)
    flipped[-3] ^= 1
    path.write_bytes(bytes(flipped))
    assert main(["station", "decrypt", str(path), str(tmp_path / "o2"), "--dir", str(station_dir),
                 "--operator", "kim", "--reason", "spool recovery"]) == 4
    assert "bad_signature" in capsys.readouterr().err
    # Enrolled but never heard from, past the grace for mounting the box: stale (exit 3), so a
    # monitoring job can alert.
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--json", "--grace", "0"]) == 3
    captured = capsys.readouterr()
    [dev] = [json.loads(line) for line in captured.out.splitlines()]
    assert dev["device_id"] == "dev-x" and dev["enabled"] and len(dev["signing_key"]) == 19
    assert dev["stale"] and dev["last_seen_unix_ms"] is None and "dev-x" in captured.err


def test_devices_list_flags_a_device_silent_for_too_long(station, capsys):
    import sqlite3

    station_dir, _ = station
    store = ClipStore(station_dir)
    try:
        store.record_seen("dev-x", "heartbeat", {"ok": True})
    finally:
        store.close()
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--json"]) == 0
    [dev] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not dev["stale"] and 0 <= dev["silent_s"] < 60 and dev["health"] == {"ok": True}
    # The last heartbeat was 10 minutes ago: stale at the default 120 s, not at --stale-after 900.
    conn = sqlite3.connect(station_dir / "station.db")
    conn.execute("UPDATE devices_seen SET last_seen_unix_ms = last_seen_unix_ms - 600000")
    conn.commit()
    conn.close()
    assert main(["station", "devices", "list", "--dir", str(station_dir)]) == 3
    out, err = capsys.readouterr()
    assert "STALE" in out and "60" in out and "silent for more than 120 s: dev-x" in err
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--stale-after", "900"]) == 0
    assert "STALE" not in capsys.readouterr().out
    assert main(["station", "devices", "list", "--dir", str(station_dir), "--stale-after", "0"]) == 2
    assert "--stale-after" in capsys.readouterr().err


def test_recover_reindexes_envelope_files_whose_rows_were_lost(station):
    import sqlite3

    station_dir, keys = station
    clip_id = _store(station_dir, keys, synthetic_clip(), 3)
    conn = sqlite3.connect(station_dir / "station.db")
    conn.execute("DELETE FROM clips")  # as if power failed before the index commit reached disk
    conn.commit()
    conn.close()
    store = ClipStore(station_dir)
    try:
        assert store.recover() == 1
        assert store.get(clip_id).sequence == 3
        assert store.recover() == 0
        store.delete_clip(clip_id)  # retention: file first, then row; nothing comes back
        assert store.recover() == 0 and store.count() == 0
    finally:
        store.close()
