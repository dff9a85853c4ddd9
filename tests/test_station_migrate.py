"""`appliance station migrate`: an embedded site (SQLite + files) moved to PostgreSQL + S3 with
its clips, times, devices, checkpoints and legal holds; then exported from the new tier."""

from __future__ import annotations

import json

import pytest
from test_station_cli import _store

from appliance.cli import main
from appliance.contracts.audit.verify import verify_log
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.retention import LegalHolds
from appliance.station.storage import StorageSettings, read_storage_file
from appliance.station.store import ClipStore


@pytest.mark.servers
def test_migrate_an_embedded_site_then_serve_it_from_postgres_and_s3(scale_storage, tmp_path, capsys, monkeypatch):
    station_dir = tmp_path / "station"
    assert main(["station", "keygen", "--dir", str(station_dir)]) == 0
    from appliance.station.enrol import create_device_keys, enrol_device
    keys = create_device_keys(tmp_path / "dev", "dev-x")
    enrol_device(station_dir, keys)
    clip = synthetic_clip(frames=6, width=96, height=64)
    ids = [_store(station_dir, keys, clip, seq) for seq in (1, 2, 3)]
    store = ClipStore(station_dir)
    store.add_checkpoints("dev-x", [{"n": 99}])
    before = {c.clip_id: c.received_unix_ms for c in store.list_clips()}
    files = [c.path for c in store.list_clips()]
    store.close()
    holds = LegalHolds.open(station_dir)
    hold = holds.set(ids[1], reason="case 4711", by="dpo", until=4e9)
    holds.close()
    capsys.readouterr()

    args = ["station", "migrate", "--dir", str(station_dir), "--to-db", scale_storage.db,
            "--to-store", scale_storage.store]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "migrated 3 clip(s) (3 new" in out and "still there" in out
    assert read_storage_file(station_dir) == scale_storage
    assert all(p.exists() for p in files)
    assert main([*args, "--remove-source"]) == 0     # a second run: nothing new, the files go
    out = capsys.readouterr().out
    assert "(0 new" in out and "removed 3 envelope file(s)" in out
    assert not any(p.exists() for p in files)

    # Every command on the directory now reads PostgreSQL + S3 (storage.toml).
    store = ClipStore(station_dir)
    try:
        assert store.storage.settings == scale_storage
        assert {c.clip_id: c.received_unix_ms for c in store.list_clips()} == before   # times kept
        assert [c["checkpoint"] for c in store.checkpoints_for("dev-x")] == [{"n": 99}]
    finally:
        store.close()
    holds = LegalHolds.open(station_dir)
    assert holds.active(1e9)[ids[1]].id == hold.id
    holds.close()
    out_dir = tmp_path / "export"
    assert main(["station", "export", ids[0], str(out_dir), "--dir", str(station_dir), "--operator", "kim",
                 "--reason", "case 12"]) == 0
    assert (out_dir / f"{ids[0]}.webm").read_bytes() == clip.video
    records = [json.loads(line) for line in (station_dir / "audit.jsonl").read_text().splitlines()]
    migrated = [r["fields"] for r in records if r["kind"] == "station.migrated"]
    assert [m["source_files_removed"] for m in migrated] == [0, 3]
    assert verify_log(station_dir / "audit.jsonl").ok
    # A different target is refused: the site already moved.
    other = StorageSettings(scale_storage.db + "x", scale_storage.store)
    assert main(["station", "migrate", "--dir", str(station_dir), "--to-db", other.db,
                 "--to-store", other.store]) == 2
    assert "already uses" in capsys.readouterr().err
