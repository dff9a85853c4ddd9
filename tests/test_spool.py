"""Spool: atomic puts, ack-only removal, the full policy, restarts and monotonic sequences."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from appliance.box.spool import Spool, SpoolFullError


class Recorder:
    def __init__(self):
        self.records = []

    def append(self, kind, **fields):
        self.records.append((kind, fields))
        return {"kind": kind, **fields}

    def kinds(self):
        return [k for k, _ in self.records]


def test_put_pending_ack_and_audit(tmp_path):
    audit = Recorder()
    spool = Spool(tmp_path / "spool", 10 * 1024 * 1024, audit=audit)
    entries = []
    for _ in range(3):
        seq = spool.next_sequence("dev-1")
        entries.append(spool.put(b"env-%d" % seq, device_id="dev-1", sequence=seq))
    assert [e.sequence for e in spool.pending()] == [1, 2, 3]
    assert spool.pending()[1].read() == b"env-2"
    spool.ack(entries[0], envelope_sha256="x")
    spool.ack(entries[0])  # idempotent
    spool.delete(entries[1], reason="test: operator decision")
    with pytest.raises(Exception, match="reason"):
        spool.delete(entries[2], reason=" ")
    assert [e.sequence for e in spool.pending()] == [3]
    assert audit.kinds().count("spool.insert") == 3 and "spool.ack" in audit.kinds() and "spool.delete" in audit.kinds()
    assert not list((tmp_path / "spool" / "tmp").iterdir())


def test_full_spool_refuses_loudly_and_keeps_everything(tmp_path):
    audit = Recorder()
    spool = Spool(tmp_path, 1024 * 1024, audit=audit)
    blob = b"x" * 300_000
    for seq in (1, 2, 3):
        spool.put(blob, device_id="d", sequence=seq)
    with pytest.raises(SpoolFullError, match="NOT stored"):
        spool.put(blob, device_id="d", sequence=4)
    assert [e.sequence for e in spool.pending()] == [1, 2, 3]
    assert "spool.refused" in audit.kinds()
    health = spool.health()
    assert health.pending == 3 and health.used_bytes == 900_000 and health.full_fraction > 0.85
    spool.ack(spool.pending()[0])
    spool.put(blob, device_id="d", sequence=4)  # room again


def test_rejected_envelopes_are_kept_and_counted(tmp_path):
    spool = Spool(tmp_path, 1024 * 1024)
    e = spool.put(b"abc", device_id="d", sequence=1)
    spool.move_to_rejected(e, reason="bad_signature")
    assert spool.pending() == [] and len(spool.rejected()) == 1
    assert spool.health().used_bytes == 3
    with pytest.raises(Exception, match="already spooled"):
        spool.put(b"abc", device_id="d", sequence=1)


def test_sequences_survive_restarts_and_never_repeat(tmp_path):
    spool = Spool(tmp_path, 1024 * 1024)
    assert [spool.next_sequence("d") for _ in range(3)] == [1, 2, 3]
    e = spool.put(b"a", device_id="d", sequence=3)
    spool.ack(e)
    spool = Spool(tmp_path, 1024 * 1024)  # "restart"
    assert spool.next_sequence("d") == 4
    assert spool.next_sequence("other") == 1
    # A lost sequence file must not lead to reuse while envelopes are still spooled.
    spool.put(b"b", device_id="d", sequence=9)
    (tmp_path / "sequence" / "d").unlink()
    assert Spool(tmp_path, 1024 * 1024).next_sequence("d") == 10


_WRITER = r"""
import hashlib, sys
from appliance.box.spool import Spool
spool = Spool(sys.argv[1], 1 << 30)
for _ in range(100000):
    seq = spool.next_sequence("d")
    body = bytes([seq % 256]) * 200_000
    spool.put(body + hashlib.sha256(body).digest(), device_id="d", sequence=seq)
    print(seq, flush=True)
"""


def test_killed_writer_leaves_only_whole_envelopes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(8):  # wait until it has written a few, then kill it mid-stream
            assert proc.stdout.readline()
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    for leftover in (tmp_path / "tmp").iterdir():  # age the dead writer's wreckage past the grace period
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    spool = Spool(tmp_path, 1 << 30)  # restart cleans the dead writer's stale temp file
    pending = spool.pending()
    assert len(pending) >= 8
    for e in pending:
        data = e.read()
        assert hashlib.sha256(data[:-32]).digest() == data[-32:], e.path
    assert not list((tmp_path / "tmp").iterdir())
    assert spool.next_sequence("d") > max(e.sequence for e in pending)
    # Group-readable for the uplink user, nothing for others (systemd/appliance.tmpfiles.conf).
    assert all(os.stat(e.path).st_mode & 0o037 == 0 for e in pending)
