"""Where pixels go: the pipeline on real footage under a tracer.

Two tracers, because each sees what the other cannot:

* ``sys.addaudithook`` (in-process) sees every Python-level open, socket, symlink, rename,
  subprocess … with its arguments, but not what C libraries (OpenCV/FFmpeg, onnxruntime,
  libzmq) do;
* ``strace -f`` (a subprocess running the same pipeline) sees every system call of every
  thread, including C-level ``openat``, ``socket`` and ``memfd_create``.

Both assert: without a permitted trigger, nothing is opened for writing and no socket is
created; with a permitted trigger, the only thing written is the in-RAM clip (a memfd behind a
``.webm`` symlink in a tmpfs directory), and the masked region is black in that clip.

The pipeline is the real one (appliance.box.runtime: capture → masks → ring → pose → tracking →
stage 1 → stage 2 (motion energy from ring frames, zoomed re-pose of crops; the hug in the
sample opens a candidate) → behaviour → gate → clip) on samples/demo_skeleton.mp4. The behaviour stage's own events flow
through unchanged; one push event is added for the persons actually tracked, so the trigger
path is exercised whatever the detectors' accuracy (which `make eval` measures) — this test is
about where pixels go, not about detection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from appliance.box.config import package_root

SAMPLE = package_root() / "samples" / "demo_skeleton.mp4"
MASK = {"name": "left-shop", "polygon": [[0.02, 0.05], [0.30, 0.05], [0.30, 0.60], [0.02, 0.60]]}
DENY_ALL_PROFILE = """\
format = 1
id = "count-only"
version = "1"
title = "detect and count, never record"
jurisdiction = "test"
purpose = "crime"
legal_basis = "privacy test: every pattern is detected and counted, none may trigger"

[patterns.strike]
permitted = false
[patterns.kick]
permitted = false
[patterns.push]
permitted = false
[patterns.strangle]
permitted = false
[patterns.fight]
permitted = false
[patterns.fall]
permitted = false
[patterns.lying]
permitted = false
"""

# ---------------------------------------------------------------------------------------
# The pipeline run (shared by the in-process test and the strace subprocess)

PIPELINE_SCRIPT = r'''
import json, os, sys
from appliance.box.capture.source import FileSource
from appliance.box.config import default_config
from appliance.box.runtime import Pipeline, analyse_video
from appliance.contracts.types import Event, Pattern

def add_scripted_push(pipeline, at_t=1.0):
    """Adds one push event for the two first persons actually tracked at ``at_t``."""
    real_update = pipeline.behaviour.update
    state = {"fired": False}
    def update(tracked, evidence=(), scan=None):
        events = list(real_update(tracked, evidence, scan))
        if not state["fired"] and tracked.t >= at_t and tracked.persons:
            ids = tuple(sorted(p.track_id for p in tracked.persons))[:2]
            events.append(Event(Pattern.PUSH, tracked.t - 0.4, tracked.t, ids, 0.95, {"scripted": 1.0}))
            state["fired"] = True
        return events
    pipeline.behaviour.update = update

def build(sample, profile, profiles_dir, mask):
    policy = {"profile": profile, "profiles_dir": profiles_dir}
    cfg = default_config(str(sample), policy=policy, privacy_masks=[mask], ring={"seconds": 15.0})
    # redaction: both renditions of envelope version 2 (full and bystanders pixelated) are built
    pipeline = Pipeline(cfg, profile=profile, redaction=cfg.redaction)
    add_scripted_push(pipeline)
    return pipeline, FileSource(str(sample), max_width=cfg.ring.max_width)

def run(pipeline, source):
    clips = []
    stats = analyse_video(pipeline, source.frames(), on_clip=clips.append)
    return stats, clips

if __name__ == "__main__":
    sample, profile, profiles_dir, mask = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    pipeline, source = build(sample, profile, profiles_dir, mask)
    # everything is imported and the model loaded before the traced part begins
    try:
        os.stat("/PRIVACY-TRACE-BEGIN")
    except OSError:
        pass
    stats, clips = run(pipeline, source)
    try:
        os.stat("/PRIVACY-TRACE-END")
    except OSError:
        pass
    print(json.dumps({"events": stats.events, "permitted": stats.permitted, "clips": len(clips),
                      "stage2_frames": stats.stage2_frames, "repose_runs": pipeline.stage2.repose_runs,
                      "clip_bytes": [len(c.video) for c in clips],
                      "redacted_bytes": [len(c.redacted.video) for c in clips if c.redacted is not None]}))
'''



@pytest.fixture(scope="module")
def pipeline_api():
    """(build, run) from PIPELINE_SCRIPT, so both tracers run exactly the same code."""
    pytest.importorskip("appliance.box.runtime", reason="appliance.box.runtime not importable")
    namespace: dict = {}
    exec(compile(PIPELINE_SCRIPT, "<privacy pipeline>", "exec"), namespace)   # our own code, see above
    return namespace["build"], namespace["run"]


@pytest.fixture(scope="module")
def profiles_dir(tmp_path_factory) -> str:
    """The bundled profiles plus a deny-all one, in a directory of their own."""
    d = tmp_path_factory.mktemp("profiles")
    for p in (package_root() / "provisioning" / "profiles").glob("*.toml"):
        shutil.copy(p, d / p.name)
    (d / "count-only.toml").write_text(DENY_ALL_PROFILE, encoding="utf-8")
    return str(d)


# ---------------------------------------------------------------------------------------
# In-process tracer: sys.addaudithook (cannot be removed, so one hook records into whichever
# recorder is active)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
WATCHED = {
    "open", "os.symlink", "os.link", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate",
    "os.chmod", "os.chown", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree",
    "socket.__new__", "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "os.forkpty", "sqlite3.connect", "tempfile.mkstemp", "tempfile.mkdtemp",
}
_recorders: list[list[tuple[str, tuple]]] = []
_hook_lock = threading.Lock()


def _audit(event: str, args: tuple) -> None:
    if _recorders and event in WATCHED:
        _recorders[-1].append((event, args))


sys.addaudithook(_audit)


@contextmanager
def audit_trace():
    events: list[tuple[str, tuple]] = []
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True          # lazily imported modules must not write .pyc files
    with _hook_lock:
        _recorders.append(events)
    try:
        yield events
    finally:
        with _hook_lock:
            _recorders.remove(events)
        sys.dont_write_bytecode = saved


def writes_and_network(events: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """Every recorded event that can put bytes somewhere other than RAM."""
    bad = []
    for event, args in events:
        if event == "open":
            _path, mode, flags = (*args, None, None, None)[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                      (isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing:
                bad.append((event, args))
        else:
            bad.append((event, args))
    return bad


CLIP_LINK = re.compile(r"^(/dev/shm|/run/user/\d+|/run)/appliance-clip-\d+-[0-9a-f]{16}\.webm$")


def test_the_audit_tracer_sees_writes_sockets_and_links(tmp_path):
    """The tracer itself: each kind of escape is recorded (so the tests below can fail)."""
    with audit_trace() as events:
        (tmp_path / "read-me").write_bytes(b"x")
        (tmp_path / "read-me").read_bytes()
        fd = os.open(tmp_path / "raw", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        os.symlink("/proc/self/fd/0", tmp_path / "link.webm")
    kinds = [e for e, _ in writes_and_network(events)]
    assert kinds == ["open", "open", "socket.__new__", "os.symlink"]


def test_no_permitted_trigger_no_write_no_socket(profiles_dir, pipeline_api):
    build_pipeline, run_pipeline = pipeline_api
    pipeline, source = build_pipeline(SAMPLE, "count-only", profiles_dir, MASK)
    with audit_trace() as events:
        stats, clips = run_pipeline(pipeline, source)
    assert stats.analysed_frames > 10 and stats.events >= 1      # the scripted push was judged
    assert stats.stage2_frames >= 5                              # stage 2 (ring frames, crops) ran
    assert stats.permitted == 0 and clips == []
    assert writes_and_network(events) == []


def test_permitted_trigger_writes_only_the_in_memory_clip(profiles_dir, pipeline_api):
    from appliance.box.clip import decode_frame_hashes, decode_frames

    build_pipeline, run_pipeline = pipeline_api
    pipeline, source = build_pipeline(SAMPLE, "bw-polg-44-4", profiles_dir, MASK)
    with audit_trace() as events:
        stats, clips = run_pipeline(pipeline, source)
    assert stats.permitted >= 1 and len(clips) >= 1
    bad = writes_and_network(events)
    # The only Python-visible effects: creating and removing the clip's symlink in a tmpfs dir.
    kinds = {e for e, _ in bad}
    assert kinds <= {"os.symlink", "os.remove"}, bad
    links = [args[1] for e, args in bad if e == "os.symlink"]
    assert links and all(CLIP_LINK.match(os.fspath(p)) for p in links), links
    assert all(os.fspath(args[0]).startswith("/proc/self/fd/") for e, args in bad if e == "os.symlink")
    removed = [os.fspath(args[0]) for e, args in bad if e == "os.remove"]
    assert sorted(removed) == sorted(map(os.fspath, links))      # every link removed again
    assert not any(os.path.lexists(p) for p in links)

    clip = clips[0]
    assert clip.trigger.decision.profile.id == "bw-polg-44-4"
    assert decode_frame_hashes(clip.video) == list(clip.frame_sha256)
    # both renditions (envelope v2) went through memfds: two links per clip, each removed again
    assert clip.redacted is not None and len(links) == 2 * len(clips)
    assert decode_frame_hashes(clip.redacted.video) == list(clip.redacted.frame_sha256)
    # the privacy mask is black in both renditions (interior, away from VP8 ringing at the edge)
    import cv2
    h, w = clip.height, clip.width
    (x0, y0), (x1, y1) = MASK["polygon"][0], MASK["polygon"][2]
    inner = (slice(int(y0 * h) + 6, int(y1 * h) - 6), slice(int(x0 * w) + 6, int(x1 * w) - 6))
    for video in (clip.video, clip.redacted.video):
        for image in decode_frames(video):
            assert cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[inner].max() <= 8
            assert np.mean(image) > 20


# ---------------------------------------------------------------------------------------
# System-call tracer: strace -f on a subprocess running the same pipeline

STRACE = shutil.which("strace")
MARK_BEGIN, MARK_END = "/PRIVACY-TRACE-BEGIN", "/PRIVACY-TRACE-END"
NETWORK_CALLS = {"socket", "socketpair", "connect", "bind", "sendto", "sendmsg", "sendmmsg", "listen"}
FILE_CHANGE_CALLS = {"symlink", "symlinkat", "link", "linkat", "rename", "renameat", "renameat2", "unlink",
                     "unlinkat", "mkdir", "mkdirat", "truncate", "creat", "mknod", "mknodat"}
SYSCALL = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)$")


def strace_pipeline(profile: str, profiles_dir: str, tmp_path: Path, *,
                    whole_process: bool = False) -> tuple[list[tuple[str, str]], dict]:
    """Runs PIPELINE_SCRIPT under strace; returns the traced calls between the markers (or,
    with ``whole_process``, from interpreter start to the end marker) and the run's summary.

    HOME is a fresh empty directory, so anything a library would persist per user shows up as
    a write on every run; the product's own environment handling is under test, so telemetry
    switches from the developer's shell are removed."""
    pytest.importorskip("appliance.box.runtime", reason="appliance.box.runtime not importable")
    log = tmp_path / "strace.log"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if "TELEMETRY" not in k.upper()}
    # .pyc caches hold code, not pixels; keep them out of the trace
    env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="2", HOME=str(home))
    cmd = [STRACE, "-f", "-qq", "-s", "256", "-o", str(log),
           "-e", "trace=%file,%network,memfd_create", "-e", "signal=none",
           sys.executable, "-c", PIPELINE_SCRIPT, str(SAMPLE), profile, profiles_dir, json.dumps(MASK)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    calls, inside, seen_begin = [], whole_process, False
    for line in log.read_text(errors="replace").splitlines():
        m = SYSCALL.match(line)
        if not m:
            continue
        name, rest = m.group(2), m.group(3)
        if MARK_BEGIN in rest:
            inside, seen_begin = True, True
            continue
        if MARK_END in rest:
            break
        if inside:
            calls.append((name, rest))
    assert seen_begin, "trace markers not found"
    return calls, summary


def opened_for_writing(rest: str) -> bool:
    return any(flag in rest for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"))


def first_path(rest: str) -> str:
    m = re.search(r'"([^"]*)"', rest)
    return m.group(1) if m else ""


def effects(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """System calls that open a file for writing, change the filesystem or touch the network.
    (Plain ``write``s to already-open descriptors are judged by the open that made them:
    the only descriptors opened in the traced part are listed here.)"""
    out = []
    for name, rest in calls:
        changes = name in NETWORK_CALLS or name in FILE_CHANGE_CALLS or name == "memfd_create"
        writes = name in ("open", "openat", "openat2") and opened_for_writing(rest)
        if changes or writes:
            out.append((name, rest))
    return out


pytestmark_strace = pytest.mark.skipif(STRACE is None, reason="strace not installed (apt-get install strace)")


@pytestmark_strace
def test_strace_no_permitted_trigger_no_write_no_socket(profiles_dir, tmp_path):
    calls, summary = strace_pipeline("count-only", profiles_dir, tmp_path)
    assert summary["events"] >= 1 and summary["permitted"] == 0 and summary["clips"] == 0
    # Stage 2 ran inside the trace (motion energy from ring frames, zoomed re-pose of crops):
    # it wrote nothing and opened no socket either.
    assert summary["stage2_frames"] >= 5 and summary["repose_runs"] >= 5
    assert len(calls) > 0          # the trace did see the run (reads of /proc, model threads …)
    assert effects(calls) == []


@pytestmark_strace
def test_strace_whole_process_without_trigger_writes_nothing(profiles_dir, tmp_path):
    """From interpreter start (imports, model load, capture, analysis) to the end of the run:
    nothing opened for writing, no socket — including what libraries do on their own."""
    calls, summary = strace_pipeline("count-only", profiles_dir, tmp_path, whole_process=True)
    assert summary["permitted"] == 0
    found = effects(calls)
    hint = ""
    if any(".onnxruntime" in rest for _, rest in found):
        hint = ("\nonnxruntime's telemetry persists a device id and database under "
                "~/.cache/Microsoft/DeveloperTools: the pixel process must set "
                "os.environ['ORT_DISABLE_TELEMETRY'] = '1' before onnxruntime is imported")
    assert found == [], "\n".join(f"{n}({r[:200]}" for n, r in found) + hint


@pytestmark_strace
def test_strace_permitted_trigger_writes_only_to_memfd(profiles_dir, tmp_path):
    calls, summary = strace_pipeline("bw-polg-44-4", profiles_dir, tmp_path)
    assert summary["permitted"] >= 1 and summary["clips"] >= 1
    found = effects(calls)
    names = [n for n, _ in found]
    assert not NETWORK_CALLS & set(names), found
    # the clip's memfd, and the one appliance.common.video opens the VP8 writer with: it takes
    # OpenCV's stderr text for that one call (the VP80 warning), never pixels
    memfds = [r for n, r in found if n == "memfd_create"]
    assert memfds and all('"appliance-clip"' in r or '"appliance-stderr"' in r for r in memfds)
    # the full and the redacted rendition (envelope v2), each in its own memfd (plus the one each
    # re-decode for the frame hashes would need: none, they re-open the same link)
    assert summary["redacted_bytes"] and len(summary["redacted_bytes"]) == summary["clips"]
    assert sum('"appliance-clip"' in r for r in memfds) >= 2 * summary["clips"]
    for name, rest in found:
        if name == "memfd_create":
            continue
        path = first_path(rest) if name not in ("symlink", "symlinkat") else re.findall(r'"([^"]*)"', rest)[-1]
        assert CLIP_LINK.match(path), f"unexpected {name}({rest}"
    # the encoder opened the .webm link for writing (i.e. wrote into the memfd) …
    assert any(n in ("open", "openat") for n in names)
    # … and every link made was removed again
    made = {re.findall(r'"([^"]*)"', r)[-1] for n, r in found if n in ("symlink", "symlinkat")}
    removed = {first_path(r) for n, r in found if n in ("unlink", "unlinkat")}
    assert made and made == removed
