"""`appliance analyze` end to end on the bundled real clips (real ONNX inference)."""

import json
import subprocess
import sys

import cv2
import pytest

from tests.conftest import DEMO_CLIP, ROOT

APP = [sys.executable, "-m", "appliance.cli"]


def run(*args, check=True):
    proc = subprocess.run([*APP, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def demo_json():
    proc = run("analyze", str(DEMO_CLIP), "--json")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_json_lines_end_with_the_summary(demo_json):
    summary = demo_json[-1]
    assert summary["type"] == "summary"
    assert summary["frames"] == 72
    # 72 frames at 28 fps = 2.57 s, analysed on a 10 fps grid.
    assert 24 <= summary["analysed_frames"] <= 27
    assert summary["persons_max"] == 2
    assert summary["tracks"] == 2                       # the two men keep their ids
    assert summary["seconds"] == pytest.approx(71 / 28.05, abs=0.05)
    assert isinstance(summary["triggered"], bool)
    frames = [o for o in demo_json if o["type"] == "frame"]
    assert len(frames) == summary["analysed_frames"]
    assert all(len(p["keypoints"]) == 17 for f in frames for p in f["persons"])


def test_event_lines_carry_verdict_profile_and_explanation(demo_json):
    events = [o for o in demo_json if o["type"] == "event"]
    summary = demo_json[-1]
    for e in events:
        assert {"pattern", "start_s", "end_s", "tracks", "confidence", "permitted", "profile",
                "explanation"} <= set(e)
        assert e["profile"] == "bw-polg-44-4"
        assert e["explanation"]
    assert summary["triggered"] == any(e["permitted"] for e in events)


def test_readable_output_and_overlay(tmp_path):
    out = tmp_path / "overlay.webm"
    proc = run("analyze", str(DEMO_CLIP), "--overlay", str(out))
    assert "summary: 72 frames" in proc.stdout and "2 tracks" in proc.stdout
    cap = cv2.VideoCapture(str(out))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, img = cap.read()
    cap.release()
    assert ok and img.shape[1] == 960 and n > 0


@pytest.mark.parametrize("target, message", [
    ("/nonexistent/video.mp4", "no such file"),
    ("README.md", "decod"),
])
def test_unreadable_video_is_a_one_line_error(target, message):
    proc = run("analyze", target, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error:") and message in lines[0]
    assert proc.stdout == ""
