"""The two service users can share the spool as the units lay it out (root:appliance 2770).

The pixel unit's user writes envelopes, the uplink unit's user (another uid, same group) must
read and delete them. Run with real, distinct uids via ``setpriv`` (root only), against a
copy of the spool code in a directory those uids can read, with the system interpreter
(the spool needs only the standard library).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PIXEL_UID, UPLINK_UID, SHARED_GID = 61001, 61002, 61000
PYTHON = shutil.which("python3", path="/usr/bin:/bin")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or PYTHON is None,
    reason="needs root, setpriv and a system python3 to act as two service users")


def as_user(uid: int, code: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={SHARED_GID}", "--clear-groups", PYTHON, "-c",
         f"import sys; sys.path.insert(0, {str(root)!r})\n" + textwrap.dedent(code)],
        check=False, capture_output=True, text=True, timeout=60, cwd=str(root))


def test_uplink_user_reads_and_deletes_what_the_pixel_user_spooled():
    root = Path(tempfile.mkdtemp(prefix="appliance-perm-"))
    try:
        root.chmod(0o755)
        shutil.copytree(REPO / "appliance", root / "appliance",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for p in (root / "appliance").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        spool = root / "spool"
        # what systemd/appliance.tmpfiles.conf creates
        for d in (spool, spool / "tmp", spool / "rejected", spool / "sequence"):
            d.mkdir()
            os.chown(d, 0, SHARED_GID)
            d.chmod(0o2770)
        put = as_user(PIXEL_UID, f"""
            from appliance.box.spool.spool import Spool
            s = Spool({str(spool)!r}, 10**8)
            s.put(b"sealed" * 10, device_id="d1", sequence=s.next_sequence("d1"))
        """, root)
        assert put.returncode == 0, put.stderr
        take = as_user(UPLINK_UID, f"""
            from appliance.box.spool.spool import Spool
            s = Spool({str(spool)!r}, 10**8)
            [entry] = s.pending()
            assert entry.read() == b"sealed" * 10
            s.ack(entry)
            assert s.pending() == []
        """, root)
        assert take.returncode == 0, take.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
