"""Retention on an injected clock over the station's real store: nothing deleted early,
everything expired deleted (file unlinked, row gone, deletion recorded with the envelope
hash), legal holds respected until released or expired."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.box.config import parse_config
from appliance.cli import main
from appliance.common.errors import InputError
from appliance.contracts.audit.log import AuditLog
from appliance.contracts.audit.verify import verify_log
from appliance.contracts.envelope import RenditionPlain, parse_envelope, seal_bytes, seal_renditions
from appliance.contracts.keys import HpkePrivateKey
from appliance.station.retention import (
    LegalHolds,
    RetentionJob,
    RetentionPolicy,
    StationClipStore,
    delete_files_durably,
)
from appliance.station.store import ClipStore

HOUR = 3600.0
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STATION_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def store_clips(station_dir, profiles: list[str]) -> tuple[dict[str, str], float]:
    """Seals real envelopes and stores them with the station's own store; returns
    {profile-tagged name: clip_id} and the latest received time (Unix s)."""
    hpke = HpkePrivateKey.generate("X25519").public_key()
    evidence = HpkePrivateKey.generate("X25519").public_key()
    store = ClipStore(station_dir)
    ids = {}
    try:
        for seq, profile in enumerate(profiles, 1):
            video = b"\x1aE\xdf\xa3 not really webm %d" % seq
            common = dict(device_id="dev-a", sequence=seq, signing_key=DEVICE_KEY, pattern="strike",
                          event_window_ms=(0, 400), clip_wall_unix_ms=(0, 1000),
                          profile={"id": profile, "version": "1", "sha256": "ab" * 32},
                          model_sha256="cd" * 32, content_type="video/webm", frames=1)
            if seq % 2 == 0:    # envelope version 2 (two renditions): retention treats it like v1
                env = seal_renditions([RenditionPlain("redacted", video, {"rendition": "redacted"}, hpke),
                                       RenditionPlain("full", video, {"rendition": "full"}, evidence)], **common)
            else:
                env = seal_bytes(video, {"frame_sha256": []}, station_public_key=hpke, **common)
            ids[f"{seq}:{profile}"] = store.store(parse_envelope(env)).clip.clip_id
        received = max(c.received_unix_ms for c in store.list_clips()) / 1000.0
    finally:
        store.close()
    return ids, received


@pytest.fixture()
def station(tmp_path):
    d = tmp_path / "station"
    ids, received = store_clips(d, ["bw-polg-44-4", "short-test", "bw-polg-44-4", "bw-polg-44-4"])
    clock = Clock(received)
    audit = AuditLog(d / "audit.jsonl", signer=STATION_KEY, origin="station", device="station",
                     checkpoint_every=5, clock=clock)
    holds = LegalHolds.open(d, audit=audit, clock=clock)
    store = StationClipStore(d)
    cfg = parse_config({"audit": {"retention": [{"profile": "short-test", "hours": 24}]}})
    policy = RetentionPolicy.from_config(cfg.audit)
    job = RetentionJob(store, policy, audit=audit, holds=holds, clock=clock)
    yield d, ids, received, clock, audit, holds, job
    holds.close()
    store.close()
    audit.close()


def remaining(d) -> set[str]:
    s = ClipStore(d)
    try:
        return {c.clip_id for c in s.list_clips()}
    finally:
        s.close()


def records(d, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (d / "audit.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_policy_uses_profile_file_config_override_and_legal_maximum():
    cfg = parse_config({"audit": {"retention_hours": 48, "retention": [{"profile": "short-test", "hours": 24}]}})
    policy = RetentionPolicy.from_config(cfg.audit)
    assert policy.hours_for("bw-polg-44-4") == 72       # the bundled profile's retention_hours
    assert policy.hours_for("short-test") == 24         # config override
    assert policy.hours_for("unknown-profile") == 48    # config default
    with pytest.raises(InputError, match="legal maximum"):
        RetentionPolicy(default_hours=72, per_profile={"x": 5000})


def test_nothing_early_everything_expired_and_holds(station):
    d, ids, received, clock, audit, holds, job = station
    all_ids = set(ids.values())
    bw_a, short, held, bw_b = ids["1:bw-polg-44-4"], ids["2:short-test"], ids["3:bw-polg-44-4"], ids["4:bw-polg-44-4"]
    clip = ClipStore(d)
    paths = {c.clip_id: c.path for c in clip.list_clips()}
    hashes = {c.clip_id: c.envelope_sha256 for c in clip.list_clips()}
    clip.close()
    holds.set(held, reason="case 2026-0815, court order", by="dpo.mueller", until=received + 100 * HOUR)
    assert {parse_envelope(paths[i].read_bytes()).header.version for i in (short, bw_b)} == {2}

    clock.t = received + 24 * HOUR - 1                   # one second before the first expiry
    result = job.run()
    assert result.deleted == () and result.kept == 4
    assert remaining(d) == all_ids and all(p.exists() for p in paths.values())

    clock.t = received + 24 * HOUR                       # the short profile's clip expires
    result = job.run()
    assert [x.clip.clip_id for x in result.deleted] == [short]
    assert not paths[short].exists() and remaining(d) == all_ids - {short}

    clock.t = received + 72 * HOUR - 1
    assert job.run().deleted == ()

    clock.t = received + 72 * HOUR
    result = job.run()
    assert {x.clip.clip_id for x in result.deleted} == {bw_a, bw_b}
    assert [c.clip_id for c, _ in result.held] == [held]
    assert remaining(d) == {held} and paths[held].exists()

    clock.t = received + 100 * HOUR                      # the hold has run out
    result = job.run()
    assert [x.clip.clip_id for x in result.deleted] == [held] and remaining(d) == set()
    assert not any(p.exists() for p in paths.values())

    deletions = records(d, "retention.delete")
    assert {r["fields"]["clip_id"]: r["fields"]["envelope_sha256"] for r in deletions} == hashes
    assert all(r["fields"]["files"] == 1 for r in deletions)
    assert {r["fields"]["clip_id"]: r["fields"]["retention_hours"] for r in deletions}[short] == 24
    runs = records(d, "retention.run")
    assert runs[3]["fields"]["held_clips"] == [held]
    assert len(records(d, "hold.set")) == 1
    audit.checkpoint()
    assert verify_log(d / "audit.jsonl", [STATION_KEY.public_key()]).ok


def test_released_hold_lets_the_clip_go(station):
    d, ids, received, clock, _audit, holds, job = station
    held = ids["3:bw-polg-44-4"]
    holds.set(held, reason="case 7", by="dpo", until=received + 1000 * HOUR)
    clock.t = received + 80 * HOUR
    assert held in {c.clip_id for c, _ in job.run().held}
    assert holds.release(held, reason="proceedings closed", by="dpo") == 1
    assert holds.release(held, reason="again", by="dpo") == 0
    result = job.run()
    assert [x.clip.clip_id for x in result.deleted] == [held]
    assert records(d, "hold.release")[0]["fields"]["reason"] == "proceedings closed"


def test_holds_need_reason_author_and_future_expiry(station):
    d, ids, received, _clock, _audit, holds, _job = station
    clip_id = ids["1:bw-polg-44-4"]
    with pytest.raises(InputError, match="reason is mandatory"):
        holds.set(clip_id, reason="  ", by="dpo", until=received + HOUR)
    with pytest.raises(InputError, match="who sets it"):
        holds.set(clip_id, reason="case 1", by="", until=received + HOUR)
    with pytest.raises(InputError, match="not in the future"):
        holds.set(clip_id, reason="case 1", by="dpo", until=received - 1)
    assert holds.holds() == [] and records(d, "hold.set") == []


def test_dry_run_changes_nothing(station):
    d, ids, received, clock, _audit, _holds, job = station
    clock.t = received + 500 * HOUR
    before = (d / "audit.jsonl").read_bytes()
    result = job.run(dry_run=True)
    assert len(result.deleted) == 4 and remaining(d) == set(ids.values())
    assert (d / "audit.jsonl").read_bytes() == before


def test_delete_files_durably_counts_and_tolerates_missing(tmp_path):
    a, b = tmp_path / "a.env", tmp_path / "sub" / "b.key"
    b.parent.mkdir()
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    assert delete_files_durably([a, b, tmp_path / "missing"]) == 2
    assert not a.exists() and not b.exists()


def test_retention_and_hold_commands(tmp_path, capsys):
    from appliance.station.keys import generate_station_keys
    d = tmp_path / "station"
    generate_station_keys(d, kem="X25519")
    ids, _received = store_clips(d, ["bw-polg-44-4", "bw-polg-44-4"])
    keep = ids["1:bw-polg-44-4"]
    assert main(["audit", "hold", "set", keep, "--station", str(d), "--reason", "case 9",
                 "--by", "dpo", "--until", "2999-01-01"]) == 0
    assert main(["audit", "hold", "list", "--station", str(d), "--json"]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [h["clip_id"] for h in listed] == [keep]
    # nothing has expired yet in real time: a run deletes nothing and says so
    assert main(["audit", "retention", "run", "--station", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"] == [] and out["kept"] == 2
    assert main(["audit", "hold", "release", keep, "--station", str(d), "--reason", "closed", "--by", "dpo"]) == 0
    assert main(["audit", "hold", "release", keep, "--station", str(d), "--reason", "closed", "--by", "dpo"]) == 2
    assert main(["audit", "verify", str(d / "audit.jsonl"), "--key", str(d / "keys" / "signing.pub")]) == 0
    assert main(["audit", "retention", "run", "--station", str(tmp_path / "nope")]) == 2
