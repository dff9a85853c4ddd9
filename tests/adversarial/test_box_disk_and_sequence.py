"""Findings 4 and 6 on the box: a full disk, and a lost spool/sequence file (issue 12)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.box.daemon import ClipSealer
from appliance.box.spool import Spool, SpoolFullError
from appliance.common import durable
from tests.test_spool import Recorder

REPO = Path(__file__).resolve().parents[2]


def _enospc_after(limit: int):
    """An os.write that fills the disk after ``limit`` bytes, as a full filesystem does."""
    real_write = os.write
    written = {"n": 0}

    def write(fd, data):
        room = limit - written["n"]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:room]))
        written["n"] += n
        return n
    return write


def test_disk_full_refuses_the_clip_loudly_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """Before: Spool.put raised a bare OSError (the daemon exited with a traceback), left a
    partial temp file, and nothing recorded spool.refused."""
    audit = Recorder()
    spool = Spool(tmp_path / "spool", 100 * 1024 * 1024, audit=audit)
    first = spool.next_sequence("dev-1")
    spool.put(b"a" * 1000, device_id="dev-1", sequence=first)
    seq = spool.next_sequence("dev-1")
    monkeypatch.setattr(durable.os, "write", _enospc_after(4096))
    with pytest.raises(SpoolFullError, match="disk of spool .* is full"):
        spool.put(b"b" * 100_000, device_id="dev-1", sequence=seq)
    with pytest.raises(SpoolFullError):  # the sequence file cannot be written either
        monkeypatch.setattr(durable.os, "write", _enospc_after(0))
        spool.next_sequence("dev-1")
    monkeypatch.undo()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    refused = [f for k, f in audit.records if k == "spool.refused"]
    assert [f["reason"] for f in refused] == ["disk_full", "disk_full"] and refused[0]["sequence"] == seq
    assert [e.sequence for e in spool.pending()] == [first]  # nothing already spooled was lost
    later = spool.next_sequence("dev-1")  # space is back: the spool works again
    spool.put(b"c" * 10, device_id="dev-1", sequence=later)
    assert [e.sequence for e in spool.pending()] == [first, later]


def test_the_daemon_sealer_counts_a_disk_full_refusal_and_keeps_going(tmp_path, monkeypatch):
    """The pixel process's clip sink: refused (counted for appliance.stop), no exception."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.contracts.keys import generate_hpke_key
    from appliance.contracts.synthetic import synthetic_clip

    audit = Recorder()
    sealer = ClipSealer.__new__(ClipSealer)  # the sink alone, without a provisioned config
    sealer.signing_key = Ed25519PrivateKey.generate()
    sealer.station_key = generate_hpke_key(tmp_path / "hpke.key", tmp_path / "hpke.pub", kem="X25519")
    sealer.kem, sealer.device_id, sealer.audit = None, "dev-1", audit
    sealer.evidence_key = None          # a box without an evidence key: envelope version 1
    sealer.spool = Spool(tmp_path / "spool", 100 * 1024 * 1024, audit=audit)
    sealer.sealed = sealer.refused = 0
    sealer._reserved = {}
    clip = synthetic_clip(frames=2, width=32, height=24)
    monkeypatch.setattr(durable.os, "write", _enospc_after(0))
    sealer(clip)
    monkeypatch.undo()
    sealer(clip)
    assert (sealer.sealed, sealer.refused) == (1, 1)
    assert [k for k, _ in audit.records].count("spool.refused") == 1


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to mount a tmpfs")
def test_a_real_small_tmpfs_fills_up(tmp_path):
    """The same on a real filesystem: a 256 KiB tmpfs mounted in a private mount namespace."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f"""
import json, sys
from appliance.box.spool import Spool, SpoolFullError
class R:
    records = []
    def append(self, kind, **f): self.records.append(kind)
spool = Spool({str(mnt)!r} + "/spool", 10**9, audit=R())
out = {{"stored": 0, "refused": 0}}
for _ in range(20):
    try:
        n = spool.next_sequence("dev-1")
        spool.put(b"x" * 40000, device_id="dev-1", sequence=n)
        out["stored"] += 1
    except SpoolFullError:
        out["refused"] += 1
import os
out["tmp_left"] = os.listdir({str(mnt)!r} + "/spool/tmp")
out["audited"] = R.records.count("spool.refused")
print(json.dumps(out))
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           f'mount -t tmpfs -o size=256k tmpfs "{mnt}" && exec "$0" -c "$1"', sys.executable, script],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["stored"] >= 3 and out["refused"] >= 1 and out["tmp_left"] == [] and out["audited"] == out["refused"]
