"""verify streams: on a large log its memory stays bounded (docs/audit-log.md §3), and it
still finds an edit near the end."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.contracts.audit.canonical import GENESIS_PREV, b64, canonical, key_id, raw_public, record_hash, utc_iso
from appliance.contracts.audit.checkpoints import sign_checkpoint
from appliance.contracts.audit.verify import verify_log

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG_ID = "5e" * 16
RECORDS = 60_000          # ~26 MB; verify peaks near 0.4 MB whatever the size (tracemalloc is slow)
CHECKPOINT_EVERY = 10_000


def write_large_log(path: Path, records: int) -> list[dict]:
    """``records`` chained canonical records as AuditLog writes them (genesis, triggers, a real
    signed checkpoint every CHECKPOINT_EVERY records), written directly for speed. Returns
    the checkpoints, as the station would hold them."""
    checkpoints: list[dict] = []
    prev, t0 = GENESIS_PREV, 1_764_000_000.0
    with open(path, "wb") as fh:
        for seq in range(records):
            time_s = utc_iso(t0 + seq)
            if seq == 0:
                kind, fields = "audit.genesis", {"log": LOG_ID, "origin": "appliance", "device": "dev-big",
                                                 "public_key": b64(raw_public(KEY.public_key())),
                                                 "key_id": key_id(KEY)}
            elif seq % CHECKPOINT_EVERY == 0:
                cp = sign_checkpoint(KEY, log=LOG_ID, n=len(checkpoints), count=seq, head=prev, time=time_s)
                kind, fields = "audit.checkpoint", cp.to_json()
                checkpoints.append(fields)
            else:
                kind, fields = "trigger.permitted", {"pattern": "strike", "profile": "bw-polg-44-4",
                                                     "rule": "patterns.strike", "clip_id": f"big#{seq:07d}",
                                                     "envelope_sha256": "ab" * 32, "confidence": 0.9}
            rec = {"v": 1, "seq": seq, "time": time_s, "kind": kind, "fields": fields, "prev": prev}
            rec["hash"] = prev = record_hash(rec)
            fh.write(canonical(rec) + b"\n")
    return checkpoints


def test_verify_streams_a_large_log_in_bounded_memory_and_finds_a_late_edit(tmp_path):
    path = tmp_path / "audit.jsonl"
    checkpoints = write_large_log(path, RECORDS)
    size = path.stat().st_size

    # Edit a record near the end in place (content changed, hash not recomputed).
    edited_seq = RECORDS - 7
    data = bytearray(path.read_bytes())
    at = data.index(f'"clip_id":"big#{edited_seq:07d}"'.encode())
    data[at + len('"clip_id":"big#')] = ord("9")
    path.write_bytes(bytes(data))
    del data

    tracemalloc.start()
    try:
        result = verify_log(path, [KEY.public_key()], checkpoints)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.records == RECORDS
    assert peak < size * 0.10, f"verify peaked at {peak} bytes for a {size}-byte log"
    assert not result.ok
    assert [str(p) for p in result.problems] == [
        f"line {edited_seq + 1} (seq {edited_seq}): trigger.permitted record: content does not match its hash: edited"]
    # Every checkpoint still verified against the log and the station's copies.
    assert result.log_checkpoints == len(checkpoints) == result.station_checkpoints


def test_a_badly_damaged_log_keeps_the_first_problems_and_counts_the_rest(tmp_path):
    from appliance.contracts.audit.verify import MAX_PROBLEMS

    path = tmp_path / "audit.jsonl"
    write_large_log(path, 3)
    with open(path, "ab") as fh:
        fh.write(b"garbage\n" * (MAX_PROBLEMS + 50))
    result = verify_log(path, [KEY.public_key()])
    assert len(result.problems) == MAX_PROBLEMS
    assert result.problem_count == MAX_PROBLEMS + 50
    assert str(result.first) == "line 4: not a JSON object: edited or corrupted"
    assert result.problems[-1].line == 3 + MAX_PROBLEMS
    assert result.to_json()["problems_omitted"] == 50
