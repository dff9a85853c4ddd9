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


def run_sandboxed(unit_name: str, payload: str, tmp_path: Path) -> subprocess.CompletedProcess:
    allowed = unit_allowed_syscalls(SYSTEMD_DIR / unit_name)
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text("\n".join(sorted(allowed)))
    allow_file.chmod(0o644)
    script = tmp_path / "payload.py"
    script.write_text(payload)
    script.chmod(0o644)
    cmd = [sys.executable, str(SANDBOX), str(allow_file), "--", sys.executable, str(script)]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # like CapabilityBoundingSet= (empty): after exec not even uid 0 keeps a capability;
        # and like User=: an unprivileged uid, where it can reach the interpreter (a pyenv
        # under /root cannot be run by nobody)
        drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        user = ["--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*drop, *user, "/bin/sh", "-c", 'test -x "$0" && test -r "$1"',
                                sys.executable, str(REPO / "models/yolo11n-pose.onnx")],
                               check=False, capture_output=True, timeout=60, cwd=str(tmp_path))
        cmd = [*drop, *(user if probe.returncode == 0 else []), *cmd]
        extra_env = {"EXPECT_NO_CAPS": "1"}
    else:
        extra_env = {}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "2", **extra_env}
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
