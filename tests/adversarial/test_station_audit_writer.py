"""Finding 3: the station's audit log is out of reach of whoever runs exports (issue 12).

Before: ``keys/signing.key`` (the log's checkpoint key) was readable by the station user, who
is also the export operator, and ``audit.jsonl`` was that user's file: re-signing the log
without the export records, or cutting it back to an earlier checkpoint, verified OK.

After: a separate writer process (its own user in production) holds the log and its key; the
station's processes can only append through its socket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.contracts.audit.log import AuditLog
from appliance.contracts.audit.verify import verify_log
from appliance.contracts.envelope import parse_envelope, seal_clip
from appliance.contracts.keys import load_hpke_public_key, load_signing_key, load_signing_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.enrol import create_device_keys, enrol_device
from appliance.station.keys import StationKeyPaths, generate_station_keys
from appliance.station.store import ClipStore

REPO = Path(__file__).resolve().parents[2]


def _start_writer(audit_dir: Path, sock: Path, *, prefix: list[str] = (), allow: list[str] = (),
                  log: Path) -> subprocess.Popen:
    args = ["--allow-user", *allow] if allow else []
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "appliance.cli", "station", "audit-writer", "serve",
                             "--audit-dir", str(audit_dir), "--socket", str(sock), *args],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "audit writer did not start"
        time.sleep(0.05)
    return proc


def _station_with_a_clip(station_dir: Path, tmp: Path) -> str:
    generate_station_keys(station_dir, kem="X25519")
    keys = create_device_keys(tmp / "dev", "dev-x")
    enrol_device(station_dir, keys)
    env = seal_clip(synthetic_clip(frames=3, width=32, height=24), device_id="dev-x", sequence=1,
                    signing_key=keys.signing_key(),
                    station_public_key=load_hpke_public_key(StationKeyPaths.of(station_dir).hpke_public))
    store = ClipStore(station_dir)
    try:
        return store.store(parse_envelope(env)).clip.clip_id
    finally:
        store.close()


def _resign_without(log: Path, forged: Path, key, drop: set[str]) -> None:
    """What an operator holding every key the station user can read would do: replay the log
    without the records it wants gone, re-signed with the station signing key."""
    out = AuditLog(forged, signer=key, origin="station", device="station")
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"].startswith("audit.") or rec["kind"] in drop:
            continue
        out.append(rec["kind"], **rec["fields"])
    out.close()


def test_exports_go_to_the_writer_and_a_re_signed_log_does_not_verify(tmp_path, capsys):
    station_dir, audit_dir, sock = tmp_path / "station", tmp_path / "audit", tmp_path / "run" / "audit.sock"
    clip_id = _station_with_a_clip(station_dir, tmp_path)
    writer = _start_writer(audit_dir, sock, log=tmp_path / "writer.log")
    try:
        assert main(["station", "audit-writer", "enable", "--dir", str(station_dir), "--socket", str(sock)]) == 0
        assert main(["station", "export", clip_id, str(tmp_path / "out"), "--dir", str(station_dir),
                     "--operator", "kim", "--reason", "case 9"]) == 0
        assert main(["station", "devices", "disable", "dev-x", "--dir", str(station_dir), "--operator", "kim",
                     "--reason", "maintenance"]) == 0
        # refused accesses stay refused through the socket
        assert main(["station", "export", clip_id, str(tmp_path / "out2"), "--dir", str(station_dir),
                     "--operator", "kim", "--reason", " "]) == 2
        capsys.readouterr()
        assert main(["audit", "report", str(audit_dir / "audit.jsonl"), "--from", "2000-01-01", "--to", "2100-01-01",
                     "--format", "json", "--station", str(station_dir)]) == 0
        report = json.loads(capsys.readouterr().out)
    finally:
        writer.terminate()
        assert writer.wait(30) == 0
    assert not (station_dir / "audit.jsonl").exists()     # nothing kept beside the station's keys
    log = audit_dir / "audit.jsonl"
    kinds = [json.loads(x)["kind"] for x in log.read_text().splitlines()]
    assert {"station.export", "station.export_result", "station.device_disabled"} <= set(kinds)
    assert oct(os.stat(audit_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(audit_dir / "audit-signing.key").st_mode & 0o777) == "0o600"
    writer_key = load_signing_public_key(audit_dir / "audit-signing.pub")
    assert verify_log(log, [writer_key]).ok
    assert report["logs"][0]["intact"] and report["clips"]["exported"] == 1
    # The operator re-signs the log without the export with the key it can read: detected.
    forged = tmp_path / "forged.jsonl"
    _resign_without(log, forged, load_signing_key(StationKeyPaths.of(station_dir).signing_private),
                    {"station.export", "station.export_result"})
    result = verify_log(forged, [writer_key])
    assert not result.ok and "unknown key" in str(result.first)


def _readable_by_other_users(path: Path) -> bool:
    """The two test users (65534, 65533) import the appliance from this checkout: every directory
    above it must let others through (a clone under ``mktemp -d``, mode 0700, does not)."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run two users")
@pytest.mark.skipif(not _readable_by_other_users(REPO), reason="the checkout is not readable by other users "
                    "(e.g. cloned under a 0700 mktemp directory): clone it where uid 65534 can read it")
def test_an_operator_running_as_the_station_user_cannot_touch_the_log_or_its_key(capsys):
    """Two real uids: the writer as 65534, the station user/export operator as 65533."""
    base = Path(tempfile.mkdtemp(prefix="appliance-audit-writer-"))
    base.chmod(0o755)
    writer_uid, station_uid = 65534, 65533
    try:
        station_dir, audit_dir, run = base / "station", base / "audit", base / "run"
        clip_id = _station_with_a_clip(station_dir, base)
        run.mkdir()
        audit_dir.mkdir(mode=0o700)
        for d in (run, audit_dir):
            os.chown(d, writer_uid, writer_uid)
        for root, dirs, files in os.walk(station_dir):
            for name in [*dirs, *files]:
                os.chown(Path(root) / name, station_uid, station_uid)
        os.chown(station_dir, station_uid, station_uid)
        drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--clear-groups"]
        as_writer = [*drop, f"--reuid={writer_uid}", f"--regid={writer_uid}"]
        as_station = [*drop, f"--reuid={station_uid}", f"--regid={station_uid}"]
        sock = run / "audit.sock"
        writer = _start_writer(audit_dir, sock, prefix=as_writer, allow=[str(station_uid)], log=base / "writer.log")
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)}
        app = [sys.executable, "-m", "appliance.cli"]
        try:
            def station_user(*argv: str) -> subprocess.CompletedProcess:
                return subprocess.run([*as_station, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                                      timeout=120, check=False)
            r = station_user(*app, "station", "audit-writer", "enable", "--dir", str(station_dir), "--socket", str(sock))
            assert r.returncode == 0, r.stderr
            out = station_dir / "exports"
            r = station_user(*app, "station", "export", clip_id, str(out), "--dir", str(station_dir),
                             "--operator", "kim", "--reason", "case 10")
            assert r.returncode == 0, r.stderr
            # Everything the station user might try against the log and its key is refused.
            attack = ("import sys\nfrom pathlib import Path\nd = Path(sys.argv[1])\nres = []\n"
                      "for name, mode in (('audit.jsonl', 'r+b'), ('audit.jsonl', 'rb'), ('audit-signing.key', 'rb')):\n"
                      "    try:\n        open(d / name, mode).close(); res.append('opened ' + name)\n"
                      "    except PermissionError:\n        res.append('denied')\n"
                      "try:\n    (d / 'audit.jsonl').unlink(); res.append('unlinked')\n"
                      "except PermissionError:\n    res.append('denied')\nprint(res)\n")
            r = station_user(sys.executable, "-c", attack, str(audit_dir))
            assert r.stdout.strip() == "['denied', 'denied', 'denied', 'denied']", r.stdout + r.stderr
        finally:
            writer.terminate()
            assert writer.wait(30) == 0
        log = audit_dir / "audit.jsonl"
        records = [json.loads(x) for x in log.read_text().splitlines()]
        assert [r["fields"]["operator"] for r in records if r["kind"] == "station.export"] == ["kim"]
        assert verify_log(log, [load_signing_public_key(audit_dir / "audit-signing.pub")]).ok
    finally:
        shutil.rmtree(base, ignore_errors=True)
