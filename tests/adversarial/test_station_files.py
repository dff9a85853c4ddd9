"""Finding 8 at the station: file modes of keygen and of decrypted exports (issue 12)."""

from __future__ import annotations

import os
import stat

import pytest

from appliance.cli import main
from appliance.contracts.envelope import seal_clip
from appliance.contracts.keys import load_hpke_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths
from appliance.station.store import ClipStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def station(tmp_path, capsys):
    """`station keygen` outside systemd, with the common 022 umask."""
    old = os.umask(0o022)
    try:
        station_dir = tmp_path / "station"
        assert main(["station", "keygen", "--dir", str(station_dir), "--kem", "X25519"]) == 0
        keys = create_device_keys(tmp_path / "dev", "dev-x")
        enrol_device(station_dir, keys)
    finally:
        os.umask(old)
    capsys.readouterr()
    return station_dir, keys


def test_keygen_outside_systemd_leaves_the_directory_and_database_private(station):
    """Before: the station directory was 0755 and station.db 0644 (world-readable). Now the
    directory is 0700 and the database never readable by others (0640: the console, in the
    station's group, reads it under systemd, where tmpfiles makes the directory 0750)."""
    station_dir, _ = station
    assert _mode(station_dir) == 0o700
    for name in ("station.db", "station.db-wal", "station.db-shm"):
        if (station_dir / name).exists():
            assert _mode(station_dir / name) & 0o037 == 0, name


def test_exports_are_private_and_never_overwritten(station, tmp_path, capsys):
    """Before: .webm and metadata 0644 in a 0755 directory, and a second export overwrote the first."""
    station_dir, keys = station
    env = seal_clip(synthetic_clip(frames=3, width=32, height=24), device_id="dev-x", sequence=1,
                    signing_key=keys.signing_key(),
                    station_public_key=load_hpke_public_key(StationKeyPaths.of(station_dir).hpke_public))
    from appliance.contracts.envelope import parse_envelope

    store = ClipStore(station_dir)
    try:
        clip_id = store.store(parse_envelope(env)).clip.clip_id
    finally:
        store.close()
    out = tmp_path / "exports" / "case-1"
    args = ["station", "export", clip_id, str(out), "--dir", str(station_dir), "--operator", "kim",
            "--reason", "case 1"]
    old = os.umask(0o022)
    try:
        assert main(args) == 0
        assert _mode(out) == 0o700
        files = sorted(out.iterdir())
        assert len(files) == 3 and all(_mode(f) == 0o600 for f in files)
        before = {f.name: f.read_bytes() for f in files}
        assert main(args) == 2                       # the same export again: refused, nothing touched
        assert "already exists" in capsys.readouterr().err
        assert {f.name: f.read_bytes() for f in out.iterdir()} == before
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        shared.chmod(0o755)
        assert main([*args[:3], str(shared), *args[4:]]) == 2   # a directory others can read
        assert "chmod 700" in capsys.readouterr().err and list(shared.iterdir()) == []
    finally:
        os.umask(old)
    # the refusals were made before anything was recorded or decrypted: one export, one result
    kinds = [line for line in (station_dir / "audit.jsonl").read_text().splitlines() if '"station.export' in line]
    assert len(kinds) == 2
