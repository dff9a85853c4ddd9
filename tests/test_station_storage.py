"""The station's two storage tiers against real servers: SQLite + files, and PostgreSQL + S3
(SeaweedFS), through the same store code: sequence rules, exactly-once under racing
receivers, crash re-indexing, versioned migrations, object lock, audited retention."""

from __future__ import annotations

import json
import threading

import pytest
from test_retention import DEVICE_KEY, STATION_KEY, Clock

from appliance.common.errors import ApplianceError, InputError
from appliance.contracts.audit.log import AuditLog
from appliance.contracts.envelope import EnvelopeError, parse_envelope, seal_bytes
from appliance.contracts.keys import HpkePrivateKey
from appliance.station.registry import DeviceRegistry
from appliance.station.retention import LegalHolds, RetentionJob, RetentionPolicy, StationClipStore
from appliance.station.storage import StorageSettings, resolve_settings, schema, write_storage_file
from appliance.station.storage.blobs import S3Location
from appliance.station.storage.database import PostgresDatabase
from appliance.station.store import ClipStore

HPKE = HpkePrivateKey.generate("X25519").public_key()


def envelope(sequence: int, *, device: str = "dev-a", body: bytes = b"", profile: str = "bw-polg-44-4") -> bytes:
    return seal_bytes(b"\x1aE\xdf\xa3 not really webm %d %s" % (sequence, body), {"frame_sha256": []},
                      device_id=device, sequence=sequence, signing_key=DEVICE_KEY, station_public_key=HPKE,
                      pattern="strike", event_window_ms=(0, 400), clip_wall_unix_ms=(0, 1000),
                      profile={"id": profile, "version": "1", "sha256": "ab" * 32},
                      model_sha256="cd" * 32, content_type="video/webm", frames=1)


@pytest.fixture(params=["embedded", "scale"])
def tier(request, tmp_path):
    """(station dir, settings) for each tier; the scale tier starts the real servers."""
    station_dir = tmp_path / "station"
    station_dir.mkdir()
    if request.param == "embedded":
        return station_dir, StorageSettings()
    return station_dir, request.getfixturevalue("scale_storage")


def _stores(station_dir, settings):
    return ClipStore(station_dir, settings=settings)


@pytest.mark.servers
def test_store_duplicate_replay_old_sequence_read_and_remove(tier):
    station_dir, settings = tier
    store = _stores(station_dir, settings)
    try:
        first = parse_envelope(envelope(5))
        stored = store.store(first)
        assert not stored.duplicate and stored.clip.sequence == 5
        assert store.store(first).duplicate
        with pytest.raises(EnvelopeError) as replay:
            store.store(parse_envelope(envelope(5, body=b"other")))
        assert replay.value.reason == "replayed_sequence"
        with pytest.raises(EnvelopeError) as old:
            store.store(parse_envelope(envelope(4)))
        assert old.value.reason == "old_sequence"
        assert store.read_envelope(store.get(stored.clip.clip_id)) == first.data
        assert store.last_seen("dev-a").highest_sequence == 5
        if settings.store:  # content-addressed by the envelope hash
            assert stored.clip.location.endswith(f"envelopes/{first.sha256[:2]}/{first.sha256}")
        clip, removed = store.remove(stored.clip.clip_id)
        assert removed == 1 and store.count() == 0 and not store.blobs.exists(clip.location)
        assert store.recover() == 0          # nothing comes back
        with pytest.raises(EnvelopeError):   # the sequence floor stays after deletion
            store.store(parse_envelope(envelope(5)))
    finally:
        store.close()


@pytest.mark.servers
def test_recover_indexes_bytes_whose_row_a_crash_lost(tier):
    station_dir, settings = tier
    store = _stores(station_dir, settings)
    try:
        parsed = parse_envelope(envelope(1))
        store.blobs.put("dev-a", 1, parsed.sha256, parsed.data)   # crashed before the row was committed
        assert store.count() == 0
        assert store.recover() == 1 and store.count() == 1 and store.recover() == 0
        assert store.store(parsed).duplicate
    finally:
        store.close()


@pytest.mark.servers
def test_registry_checkpoints_and_holds_on_both_tiers(tier):
    station_dir, settings = tier
    registry = DeviceRegistry(station_dir, settings=settings)
    store = _stores(station_dir, settings)
    holds = LegalHolds.open(station_dir, settings=settings)
    try:
        from appliance.station.enrol import create_device_keys
        keys = create_device_keys(station_dir.parent / "dev", "dev-a")
        public, _ = keys.curve_keypair()
        registry.add_device("dev-a", keys.signing_key().public_key(), public)
        assert registry.by_curve_key(public).device_id == "dev-a"
        registry.set_enabled("dev-a", False)
        assert registry.get("dev-a") is None and registry.get("dev-a", include_disabled=True) is not None
        assert store.add_checkpoints("dev-a", [{"n": 1}, {"n": 2}]) == 2
        assert store.add_checkpoints("dev-a", [{"n": 2}, {"n": 3}]) == 1
        assert [c["checkpoint"]["n"] for c in store.checkpoints_for("dev-a")] == [1, 2, 3]
        hold = holds.set("abc", reason="case 1", by="dpo", until=4e9)
        assert holds.active(1e9)["abc"].id == hold.id
    finally:
        holds.close()
        store.close()
        registry.close()


@pytest.mark.servers
def test_two_receivers_racing_store_each_envelope_once(scale_storage, tmp_path):
    """Two receivers (own pools, own station directories) get the same envelopes at once."""
    stores = [ClipStore(tmp_path / f"r{i}", settings=scale_storage) for i in range(2)]
    envelopes = [parse_envelope(envelope(seq)) for seq in range(1, 31)]
    outcomes: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def receive(i: int) -> None:
        for parsed in envelopes:
            barrier.wait(10)
            outcomes[i].append("duplicate" if stores[i].store(parsed).duplicate else "stored")

    threads = [threading.Thread(target=receive, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        for a, b in zip(*outcomes, strict=True):
            assert sorted([a, b]) == ["duplicate", "stored"]   # exactly one stored each
        assert stores[0].count() == 30
        assert len(list(stores[0].blobs.locations())) == 30   # content-addressed: one object each
        rows = stores[0].db.execute("SELECT device_id, sequence, COUNT(*) FROM clips GROUP BY device_id, sequence "
                                    "HAVING COUNT(*) > 1").fetchall()
        assert rows == []
    finally:
        for s in stores:
            s.close()


@pytest.mark.servers
def test_migrations_versioned_once_under_concurrent_start_and_newer_schema_refused(scale_storage):
    dbs: list[PostgresDatabase] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            dbs.append(PostgresDatabase(scale_storage.db, schema.STATION_POSTGRESQL, max_size=2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors
        versions = [r[0] for r in dbs[0].execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [v for v, _ in schema.STATION_POSTGRESQL]
        dbs[0].execute("INSERT INTO schema_migrations(version) VALUES (?)", (999,))
        with pytest.raises(ApplianceError, match="schema version 999"):
            PostgresDatabase(scale_storage.db, schema.STATION_POSTGRESQL, max_size=1)
    finally:
        for d in dbs:
            d.close()


@pytest.mark.servers
def test_retention_on_postgres_and_s3_audits_every_deletion_and_removes_every_version(
        scale_storage, seaweedfs_server, tmp_path):
    scale_storage = StorageSettings(scale_storage.db, seaweedfs_server.store_url(seaweedfs_server.new_bucket()))
    station_dir = tmp_path / "station"
    store = ClipStore(station_dir, settings=scale_storage)
    ids = [store.store(parse_envelope(envelope(seq, profile=p))).clip for seq, p in
           enumerate(["bw-polg-44-4", "bw-polg-44-4", "bw-polg-44-4"], 1)]
    bucket = scale_storage.store.split("?")[0].removeprefix("s3://")
    s3 = seaweedfs_server.client()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # A second version of the first object: retention must remove both, not add a delete marker.
    s3.put_object(Bucket=bucket, Key=ids[0].location, Body=store.read_envelope(ids[0]))
    store.close()
    received = ids[-1].received_unix_ms / 1000
    clock = Clock(received + 73 * 3600)
    audit = AuditLog(station_dir / "audit.jsonl", signer=STATION_KEY, origin="station", device="station",
                     checkpoint_every=5, clock=clock)
    holds = LegalHolds.open(station_dir, settings=scale_storage, audit=audit, clock=clock)
    holds.set(ids[2].clip_id, reason="case 7", by="dpo", until=clock() + 3600)
    retained = StationClipStore(station_dir, settings=scale_storage)
    try:
        result = RetentionJob(retained, RetentionPolicy(), audit=audit, holds=holds, clock=clock).run()
    finally:
        retained.close()
        holds.close()
        audit.close()
    assert {d.clip.clip_id for d in result.deleted} == {ids[0].clip_id, ids[1].clip_id}
    assert [h.clip_id for _, h in result.held] == [ids[2].clip_id] and not result.errors
    deletions = [r for r in map(json.loads, (station_dir / "audit.jsonl").read_text().splitlines())
                 if r["kind"] == "retention.delete"]
    assert {r["fields"]["envelope_sha256"] for r in deletions} == {ids[0].envelope_sha256, ids[1].envelope_sha256}
    assert {r["fields"]["clip_id"]: r["fields"]["files"] for r in deletions}[ids[0].clip_id] == 2
    versions = s3.list_object_versions(Bucket=bucket, Prefix=ids[0].location)
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    s3.close()


@pytest.mark.servers
def test_object_lock_refuses_early_deletion_and_retention_reports_it(
        postgres_server, seaweedfs_server, monkeypatch, tmp_path):
    for key, value in seaweedfs_server.env().items():
        monkeypatch.setenv(key, value)
    settings = StorageSettings(postgres_server.create_database(),
                               seaweedfs_server.store_url(seaweedfs_server.new_bucket(), lock_days="1"))
    station_dir = tmp_path / "station"
    store = ClipStore(station_dir, settings=settings)
    try:
        clip = store.store(parse_envelope(envelope(1))).clip
        bucket = settings.store.split("?")[0].removeprefix("s3://")
        s3 = seaweedfs_server.client()
        retention = s3.get_object_retention(Bucket=bucket, Key=clip.location)["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        s3.close()
        with pytest.raises(ApplianceError, match="object lock"):
            store.remove(clip.clip_id)
        assert store.count() == 1 and store.read_envelope(clip)   # row and bytes both kept
    finally:
        store.close()


def test_settings_resolution_and_bad_urls(tmp_path, monkeypatch):
    monkeypatch.delenv("APPLIANCE_STATION_DB", raising=False)
    monkeypatch.delenv("APPLIANCE_STATION_STORE", raising=False)
    assert resolve_settings(tmp_path).embedded
    settings = StorageSettings("postgresql://station:secret@db/appliance", "s3://clips?endpoint=http://s3:8333")
    write_storage_file(tmp_path, settings)
    assert resolve_settings(tmp_path) == settings
    assert "secret" not in settings.describe()
    monkeypatch.setenv("APPLIANCE_STATION_DB", "postgresql://other/db")
    monkeypatch.setenv("APPLIANCE_STATION_STORE", "s3://other")
    assert resolve_settings(tmp_path).db == "postgresql://other/db"
    assert resolve_settings(tmp_path, "postgresql://cli/db", "s3://cli").store == "s3://cli"
    with pytest.raises(InputError, match="both db"):
        resolve_settings(tmp_path, "postgresql://cli/db", None)
    with pytest.raises(InputError, match="not a postgresql"):
        resolve_settings(tmp_path, "mysql://x", "s3://y")
    (tmp_path / "storage.toml").write_text('[storage]\ndb = "postgresql://a/b"\nbucket = "x"\n')
    monkeypatch.delenv("APPLIANCE_STATION_DB")
    monkeypatch.delenv("APPLIANCE_STATION_STORE")
    with pytest.raises(InputError, match=r"storage\.bucket: unknown key"):
        resolve_settings(tmp_path)
    with pytest.raises(InputError, match="lock_days"):
        S3Location.parse("s3://b?lock_days=forever")
    with pytest.raises(InputError, match="credentials do not belong"):
        S3Location.parse("s3://key:secret@bucket")


@pytest.mark.servers
def test_unreachable_database_names_the_fix(postgres_server, tmp_path):
    url = postgres_server.url("postgres").replace(str(postgres_server.port), "1")
    with pytest.raises(InputError, match=r"cannot connect.*\*\*\*.*fix: start PostgreSQL"):
        PostgresDatabase(url, schema.STATION_POSTGRESQL, connect_timeout_s=2)


@pytest.mark.servers
def test_console_tables_on_both_tiers_and_shared_by_two_console_hosts(tier, tmp_path):
    """Users, sessions, claims, verdicts and four-eyes disclosures: console.db on the embedded
    tier, the shared database on the scale-out tier (a second console host sees the claim)."""
    from appliance.station.console.store import ConsoleStore, WorkflowError
    _, settings = tier
    first = ConsoleStore(tmp_path / "console-1", settings=settings)
    second = ConsoleStore(tmp_path / ("console-2" if settings.db else "console-1"), settings=settings)
    try:
        first.add_user("kim", "operator", "hash-1")
        first.add_user("sam", "supervisor", "hash-2")
        with pytest.raises(InputError, match="exists"):
            second.add_user("kim", "operator", "hash-3")
        token, csrf = first.new_session("kim", 60_000)
        assert second.session(token).username == "kim" and second.session(token).csrf == csrf
        first.claim("cam-01#7", "kim")
        with pytest.raises(WorkflowError, match="claimed by kim"):
            second.claim("cam-01#7", "sam")
        closed = second.close_alarm("cam-01#7", "kim", "false", "sport_or_play", "two boxers")
        assert closed.state == "closed" and first.workflow("cam-01#7").verdict == "false"
        request = first.request_full("cam-01#7", "kim", "case 12")
        with pytest.raises(WorkflowError, match="four eyes"):
            second.decide(request, "kim", True, "self")
        assert second.decide(request, "sam", True, "ok")["state"] == "approved"
        assert first.approved_full("cam-01#7", "kim")["id"] == request
        first.add_console_alarm("device_stale", "cam-02", {"silent_s": 300})
        assert [a["device_id"] for a in second.console_alarms()] == ["cam-02"]
        assert second.verdict_stats()["by_verdict"] == {"false": 1}
    finally:
        first.close()
        second.close()
