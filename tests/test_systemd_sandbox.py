"""The units' kernel-level restrictions do not break the libraries each process needs.

MemoryDenyWriteExecute= and SystemCallFilter= can break JIT-using or exotic libraries. The
pixel unit runs onnxruntime inference, OpenCV decoding and VP8 encoding into a memfd, and
HPKE sealing; the uplink runs ZeroMQ with CURVE. Both are exercised here under the same
seccomp filters the units install (tests/sandbox_exec.py), built from the units' own
SystemCallFilter= lines, as an unprivileged user with an empty capability bounding set when
the test runs as root. What cannot be emulated without systemd as PID 1 (ProtectSystem,
PrivateTmp, IPAddressDeny, namespaces) is listed in docs/provisioning.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.systemd_util import (
    REPO,
    SYSTEMD_DIR,
    requires_systemd_analyze,
    unit_settings,
)

SANDBOX = Path(__file__).parent / "sandbox_exec.py"


def _libseccomp_available() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return False
    return True


# libseccomp2 comes with Debian's systemd package, which scripts/ensure-system-deps.sh installs
pytestmark = pytest.mark.skipif(not _libseccomp_available(), reason="libseccomp.so.2 missing")


def expand_filter_group(name: str, seen: set[str] | None = None) -> set[str]:
    """Syscall names in a systemd filter group such as @system-service, recursively."""
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= expand_filter_group(item, seen)
    return names


def unit_allowed_syscalls(unit: Path) -> set[str]:
    """The syscalls a unit's SystemCallFilter= lines allow (allow-lists minus ~deny-lists)."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_settings(unit)["SystemCallFilter"]:
        target = denied if value.startswith("~") else allowed
        for item in value.lstrip("~").split():
            target |= expand_filter_group(item)
    assert allowed, "no allow-list"
    return allowed - denied


@pytest.fixture
def sandbox_dir():
    """A world-traversable scratch directory any sandbox uid can use (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="appliance-sandbox-"))
    d.chmod(0o777)  # writable whichever uid the sandbox ends up with (root without DAC caps)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def unit_address_families(unit: Path) -> str | None:
    """The unit's RestrictAddressFamilies= as sandbox_exec's --families value, or None."""
    values = unit_settings(unit).get("RestrictAddressFamilies")
    return " ".join(values) if values else None


def sandbox_command(unit_name: str, command: list[str], tmp_path: Path,
                    families: bool = False) -> tuple[list[str], dict[str, str], int]:
    """``command`` wrapped in the unit's filters; returns (argv, env, uid it will run as).

    ``families``: also apply the unit's RestrictAddressFamilies= (socket() → EAFNOSUPPORT).
    """
    unit = SYSTEMD_DIR / unit_name
    allowed = unit_allowed_syscalls(unit)
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text("\n".join(sorted(allowed)))
    allow_file.chmod(0o644)
    options = []
    if families:
        value = unit_address_families(unit)
        assert value, f"{unit_name} has no RestrictAddressFamilies="
        options = ["--families", value]
    cmd = [sys.executable, str(SANDBOX), str(allow_file), *options, "--", *command]
    uid = os.geteuid()
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # like CapabilityBoundingSet= (empty): after exec not even uid 0 keeps a capability;
        # and like User=: an unprivileged uid, where it can reach the interpreter (a pyenv
        # under /root cannot be run by nobody)
        drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        user = ["--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*drop, *user, "/bin/sh", "-c", 'test -x "$0" && test -r "$1"',
                                sys.executable, str(REPO / "models/yolo11n-pose.onnx")],
                               check=False, capture_output=True, timeout=60, cwd=str(tmp_path))
        if probe.returncode == 0:
            uid = 65534
        cmd = [*drop, *(user if probe.returncode == 0 else []), *cmd]
        extra_env = {"EXPECT_NO_CAPS": "1"}
    else:
        extra_env = {}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "2", **extra_env}
    return cmd, env, uid


def run_sandboxed(unit_name: str, payload: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "payload.py"
    script.write_text(payload)
    script.chmod(0o644)
    cmd, env, _uid = sandbox_command(unit_name, [sys.executable, str(script)], tmp_path)
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path))


def test_filter_excludes_what_the_units_deny():
    """The emulated filter is the unit's: privileged and W^X-relevant calls are outside it."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing")
    allowed = unit_allowed_syscalls(SYSTEMD_DIR / "appliance-pixel.service")
    assert {"read", "mmap", "mprotect", "execve", "socket", "futex"} <= allowed
    assert not {"ptrace", "mount", "setuid", "init_module", "reboot", "settimeofday"} & allowed
    # libzmq asserts on sched_setscheduler(SCHED_OTHER) in every I/O thread: ~@resources would
    # abort the uplink (found by the test below); RestrictRealtime= still forbids real-time
    assert "sched_setscheduler" in allowed


PIXEL_PAYLOAD = textwrap.dedent("""
    import errno, os, sys, ctypes, mmap
    import numpy as np, cv2, onnxruntime as ort
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import hpke

    # the filters are really in place: a W+X mapping and a privileged call are refused
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    p = libc.mmap(None, 4096, 0x1 | 0x2 | 0x4, 0x02 | 0x20, -1, 0)
    assert p in (None, ctypes.c_void_p(-1).value) and ctypes.get_errno() == errno.EPERM, "W+X mmap allowed"
    # PTRACE_TRACEME needs no privilege, so only the filter (~@debug) can refuse it
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    assert libc.ptrace(0, 0, None, None) == -1 and ctypes.get_errno() == errno.EPERM, "ptrace allowed"
    caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))]
    if os.environ.get("EXPECT_NO_CAPS"):
        assert all(l.split()[1] == "0000000000000000" for l in caps), caps
    print("FILTERS ACTIVE", os.getuid(), caps)

    cap = cv2.VideoCapture(sys.argv[1] if len(sys.argv) > 1 else {video!r})
    frames = []
    for _ in range(5):
        ok, img = cap.read()
        assert ok, "decode failed"
        frames.append(img)
    cap.release()
    h, w = frames[0].shape[:2]
    print("DECODED", w, h)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession({model!r}, sess_options=opts, providers=["CPUExecutionProvider"])
    img = cv2.resize(frames[-1], (640, 384))
    blob = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    out = sess.run(None, {{sess.get_inputs()[0].name: blob}})[0]
    assert out.shape[0] == 1 and out.shape[1] == 56 and np.isfinite(out).all(), out.shape
    print("INFERRED", out.shape, float(out[0, 4].max()))

    fd = os.memfd_create("clip")
    link = os.path.join(os.environ["HOME"], "clip.webm")
    os.symlink(f"/proc/{{os.getpid()}}/fd/{{fd}}", link)
    vw = cv2.VideoWriter(link, cv2.VideoWriter_fourcc(*"VP80"), 10, (w, h))
    assert vw.isOpened(), "VP8 writer did not open"
    for f in frames:
        vw.write(f)
    vw.release()
    size = os.fstat(fd).st_size
    assert size > 1000, size
    print("ENCODED", size)

    key = X25519PrivateKey.generate()
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    ct = suite.encrypt(b"clip key", key.public_key(), info=b"t")
    assert suite.decrypt(ct, key, info=b"t") == b"clip key"
    print("SEALED")
""")


@requires_systemd_analyze
def test_pixel_libraries_work_under_the_pixel_units_filters(sandbox_dir):
    payload = PIXEL_PAYLOAD.format(video=str(REPO / "samples/demo_skeleton.mp4"),
                                   model=str(REPO / "models/yolo11n-pose.onnx"))
    proc = run_sandboxed("appliance-pixel.service", payload, sandbox_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for marker in ("FILTERS ACTIVE", "DECODED", "INFERRED", "ENCODED", "SEALED"):
        assert marker in proc.stdout, proc.stdout + proc.stderr


UPLINK_PAYLOAD = textwrap.dedent("""
    import zmq
    assert zmq.has("curve")
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_secretkey = server_sec
    router.curve_publickey = server_pub
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.curve_serverkey = server_pub
    dealer.curve_publickey = client_pub
    dealer.curve_secretkey = client_sec
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 10000)
    router.setsockopt(zmq.RCVTIMEO, 10000)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"envelope")
    ident, msg = router.recv_multipart()
    router.send_multipart([ident, b"ack"])
    assert dealer.recv() == b"ack"
    dealer.close(); router.close(); ctx.term()
    print("CURVE OK")
""")


@requires_systemd_analyze
def test_zeromq_curve_works_under_the_uplink_units_filters(sandbox_dir):
    proc = run_sandboxed("appliance-uplink.service", UPLINK_PAYLOAD, sandbox_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CURVE OK" in proc.stdout


# -- the station host's units -----------------------------------------------------------------


def _hand_to(path: Path, uid: int) -> None:
    """Gives a test station directory to the sandbox's uid (StateDirectory= does this on a station)."""
    if uid == os.geteuid():
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, uid, uid)


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@requires_systemd_analyze
def test_station_serve_starts_and_answers_under_the_station_units_filters(sandbox_dir):
    """`station serve` (READY=1, a CURVE probe answered, SIGTERM → exit 0) under the station
    unit's SystemCallFilter=, MemoryDenyWriteExecute= and RestrictAddressFamilies=, with the
    HPKE private key absent (the unit hides it). Binds 127.0.0.1, which goes through the same
    libzmq interface lookup (netlink) as the unit's 0.0.0.0."""
    import socket
    import time

    from tests.test_station_systemd import make_station, probe_station

    station = sandbox_dir / "station"
    keys = make_station(station)
    (station / "keys" / "hpke.key").unlink()
    cmd, env, uid = sandbox_command(
        "appliance-station.service",
        [sys.executable, "-m", "appliance.cli", "station", "serve", "--dir", str(station),
         "--bind", "tcp://127.0.0.1:*"], sandbox_dir, families=True)
    _hand_to(station, uid)
    notify_path = str(sandbox_dir / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    os.chmod(notify_path, 0o777)   # sendable by the sandbox's uid
    env.update(NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="400000")
    log = sandbox_dir / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=str(sandbox_dir))
    try:
        notify.settimeout(60.0)
        try:
            ready = notify.recv(4096).decode()
        except TimeoutError:
            pytest.fail(f"no READY=1 (exit {proc.poll()}): {log.read_text()[-3000:]}")
        assert ready.startswith("READY=1\nSTATUS=listening on tcp://127.0.0.1:"), ready
        status = _proc_status(proc.pid)          # the filters are on the serving process itself
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", status
        assert int(status.get("Seccomp_filters", "3")) >= 3, status   # W^X, families, allow-list
        assert int(status["Uid"].split()[0]) == uid
        endpoint = ready.split("listening on ", 1)[1].strip()
        reply = probe_station(station, keys["box-a"], endpoint)
        assert reply.ok and reply.status == "probe-ok"
        time.sleep(0.3)                          # a few loop turns: WATCHDOG=1 keeps coming
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    text = log.read_text()
    assert "station listening on tcp://127.0.0.1:" in text and "station stopped" in text, text


ZMQ_BIND_PAYLOAD = textwrap.dedent("""
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind("tcp://127.0.0.1:*")
    print("BOUND", s.getsockopt_string(zmq.LAST_ENDPOINT))
    s.close(); ctx.term()
""")


@requires_systemd_analyze
def test_libzmq_bind_needs_af_netlink(sandbox_dir):
    """Why the station unit allows AF_NETLINK and the uplink unit need not: under the uplink's
    families (no netlink) a bind aborts in libzmq's interface lookup (SIGABRT), a connect is
    fine (tests above). If this starts to pass, libzmq no longer needs it: drop AF_NETLINK
    from appliance-station.service."""
    script = sandbox_dir / "bind.py"
    script.write_text(ZMQ_BIND_PAYLOAD)
    script.chmod(0o644)
    uplink_families = unit_address_families(SYSTEMD_DIR / "appliance-uplink.service")
    assert "AF_NETLINK" not in uplink_families
    cmd, env, _ = sandbox_command("appliance-uplink.service", [sys.executable, str(script)], sandbox_dir,
                                  families=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == -signal.SIGABRT and "BOUND" not in proc.stdout, proc.stdout + proc.stderr
    assert "Address family not supported" in proc.stderr
    cmd, env, _ = sandbox_command("appliance-station.service", [sys.executable, str(script)], sandbox_dir,
                                  families=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "BOUND tcp://127.0.0.1:" in proc.stdout, proc.stdout + proc.stderr


@requires_systemd_analyze
def test_station_watch_runs_under_the_watch_units_filters_without_keys_or_envelopes(sandbox_dir):
    """The watch's command under its unit's filters (no socket family at all, ~@resources),
    with keys/ and envelopes/ unreadable as InaccessiblePaths= makes them: exit 3 and the
    device id while the box is silent, exit 0 once it was heard."""
    from appliance.station.store import ClipStore
    from tests.test_station_systemd import WATCH, make_station, unit_argv

    station = sandbox_dir / "station"
    make_station(station, devices=("box-yard",))
    args = unit_argv(WATCH, station)
    cmd, env, uid = sandbox_command("appliance-station-watch.service",
                                    [sys.executable, "-m", "appliance.cli", *args], sandbox_dir, families=True)
    _hand_to(station, uid)
    for hidden in ("keys", "envelopes"):     # root-owned 000 (or 000 for a non-root owner): no access
        if os.geteuid() == 0:
            os.chown(station / hidden, 0, 0)
        (station / hidden).chmod(0)
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "stale: 1 enabled device(s) silent for more than 120 s: box-yard" in proc.stderr
        store = ClipStore(station)
        try:
            store.record_seen("box-yard", "heartbeat", {})
        finally:
            store.close()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "box-yard" in proc.stdout and "STALE" not in proc.stdout
    finally:
        for hidden in ("keys", "envelopes"):
            (station / hidden).chmod(0o700)
