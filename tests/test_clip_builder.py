"""The in-memory clip builder: WebM/VP8 from real footage, frame hashes, window edges."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from appliance.box.clip import (
    CONTENT_TYPE,
    ClipError,
    build_clip,
    decode_frame_hashes,
    decode_frames,
    find_ram_dir,
)
from appliance.box.clip.builder import decoded_frame_sha256, is_ram_dir
from appliance.box.config import package_root
from appliance.box.policy import PolicyGate, ZoneSet, load_profile
from appliance.contracts.types import Event, Frame, Pattern, Trigger

SAMPLE = package_root() / "samples" / "demo_skeleton.mp4"
FPS = 12.5
MODEL = "ab" * 32


@pytest.fixture(scope="module")
def ring_frames() -> list[Frame]:
    """The sample as the ring holds it: downscaled, at the clip rate, times 0.00, 0.08, …"""
    cap = cv2.VideoCapture(str(SAMPLE))
    images = []
    try:
        while len(images) < 72:
            ok, image = cap.read()
            if not ok:
                break
            images.append(cv2.resize(image, (320, 180), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    assert len(images) == 72
    return [Frame(i, round(i / FPS, 6), 1_764_000_000.0 + i / FPS, im) for i, im in enumerate(images)]


def trigger_at(start: float, end: float, pattern: Pattern = Pattern.PUSH) -> Trigger:
    """A real gate trigger (5 s pre-roll, 5 s post-roll) for an event [start, end]."""
    gate = PolicyGate(load_profile("bw-polg-44-4"), ZoneSet())
    trigger = gate.trigger_for(gate.decide(Event(pattern, start, end, (1, 2), 0.9, {"why": "test"})))
    assert trigger is not None
    return trigger


def manual_trigger(window_start: float, window_end: float) -> Trigger:
    t = trigger_at(window_start, window_end)
    return Trigger(t.decision, window_start, window_end)


def test_clip_is_webm_vp8_with_metadata(ring_frames):
    trigger = manual_trigger(0.8, 2.4)     # frames 10..30
    tracks = {"keypoint_order": "coco17", "tracks": {"1": [{"t": 1.0, "box": np.float32([1, 2, 3, 4])}]}}
    clip = build_clip(trigger, ring_frames, tracks, MODEL, None, FPS)
    assert clip.video[:4] == bytes.fromhex("1a45dfa3")           # EBML (Matroska/WebM) magic
    assert b"webm" in clip.video[:64] and b"V_VP8" in clip.video[:4096]
    assert clip.content_type == CONTENT_TYPE == "video/webm"
    assert (clip.width, clip.height) == (320, 180)
    assert clip.fps == pytest.approx(FPS)
    assert clip.frame_times == tuple(f.t for f in ring_frames[10:31])
    assert clip.frame_wall == tuple(f.wall for f in ring_frames[10:31])
    assert clip.trigger is trigger and clip.model_sha256 == MODEL
    assert len(clip.frame_sha256) == 21 and len(set(clip.frame_sha256)) == 21
    # tracks: JSON-ready copy plus the window record; the caller's mapping is untouched
    assert "window" not in tracks
    json.dumps(clip.tracks)
    assert clip.tracks["tracks"]["1"][0]["box"] == [1.0, 2.0, 3.0, 4.0]
    assert clip.tracks["window"] == {
        "requested_s": [0.8, 2.4], "covered_s": [0.8, 2.4], "missing_before_s": 0.0,
        "missing_after_s": 0.0, "complete": True, "frames": 21, "resized_frames": 0}


def test_frame_hashes_match_a_fresh_decode_and_the_pixels(ring_frames):
    clip = build_clip(manual_trigger(0.0, 1.6), ring_frames, {}, MODEL, None, FPS)
    # what the station does: decode the bytes again and hash
    assert decode_frame_hashes(clip.video) == list(clip.frame_sha256)
    decoded = decode_frames(clip.video)
    assert [decoded_frame_sha256(im) for im in decoded] == list(clip.frame_sha256)
    # lossy, but the picture is the picture
    for original, image in zip(ring_frames[:21], decoded):
        assert cv2.PSNR(original.image, image) > 30


def test_an_altered_frame_is_pinpointed(ring_frames):
    """Re-encoding with one frame changed changes that frame's hash (and the comparison
    names the first altered index)."""
    frames = list(ring_frames[:15])
    honest = build_clip(manual_trigger(0.0, 1.2), frames, {}, MODEL, None, FPS)
    tampered_image = frames[7].image.copy()
    cv2.rectangle(tampered_image, (100, 50), (200, 120), (255, 255, 255), -1)
    frames[7] = Frame(7, frames[7].t, frames[7].wall, tampered_image)
    forged = build_clip(manual_trigger(0.0, 1.2), frames, {}, MODEL, None, FPS)
    changed = [i for i, (a, b) in enumerate(zip(honest.frame_sha256, forged.frame_sha256)) if a != b]
    assert changed and changed[0] == 7
    assert honest.frame_sha256[:7] == forged.frame_sha256[:7]


# -- window edges (the ring buffer's edges) --------------------------------------------


def test_window_starting_before_the_ring(ring_frames):
    """Event at 1.0..1.5 s with 5 s pre-roll: the ring starts at 0 s, so 4 s are missing."""
    trigger = trigger_at(1.0, 1.5)
    assert trigger.window_start_t == pytest.approx(-4.0)
    clip = build_clip(trigger, ring_frames, {}, MODEL, None, FPS)
    assert clip.frame_times[0] == 0.0 and clip.frame_times[-1] == ring_frames[-1].t
    window = clip.tracks["window"]
    assert window["complete"] is False
    assert window["missing_before_s"] == pytest.approx(4.0)
    assert window["missing_after_s"] == pytest.approx(6.5 - ring_frames[-1].t, abs=1e-3)
    assert window["covered_s"] == [0.0, round(ring_frames[-1].t, 3)]


def test_ring_starting_after_the_window_start(ring_frames):
    """The ring was overwritten: it now starts at frame 30 (2.4 s), the window at 1.0 s."""
    clip = build_clip(manual_trigger(1.0, 4.0), ring_frames[30:], {}, MODEL, None, FPS)
    assert clip.frame_times[0] == ring_frames[30].t and clip.frame_times[-1] == 4.0
    window = clip.tracks["window"]
    assert not window["complete"] and window["missing_before_s"] == pytest.approx(1.4)
    assert window["missing_after_s"] == 0.0


def test_ring_ending_before_the_window_end(ring_frames):
    """Final flush at end of stream: the post-roll was never captured."""
    clip = build_clip(manual_trigger(2.0, 9.0), ring_frames[:40], {}, MODEL, None, FPS)
    assert clip.frame_times == tuple(f.t for f in ring_frames[25:40])
    window = clip.tracks["window"]
    assert not window["complete"] and window["missing_after_s"] == pytest.approx(9.0 - ring_frames[39].t)


def test_window_edges_are_inclusive_and_one_frame_of_slack_is_complete(ring_frames):
    clip = build_clip(manual_trigger(0.8, 1.6), ring_frames, {}, MODEL, None, FPS)
    assert clip.frame_times[0] == 0.8 and clip.frame_times[-1] == 1.6
    # the window starts between two frames: still complete (less than one frame period missing)
    clip = build_clip(manual_trigger(0.85, 1.6), ring_frames, {}, MODEL, None, FPS)
    assert clip.frame_times[0] == 0.88 and clip.tracks["window"]["complete"] is True


def test_single_frame_clip_uses_the_nominal_rate(ring_frames):
    clip = build_clip(manual_trigger(0.8, 0.8), ring_frames, {}, MODEL, None, FPS)
    assert clip.frame_times == (0.8,) and clip.fps == FPS and len(clip.frame_sha256) == 1


def test_container_rate_follows_the_frames_when_the_camera_is_slower(ring_frames):
    every_other = ring_frames[::2]          # 6.25 fps actually delivered
    clip = build_clip(manual_trigger(0.0, 3.0), every_other, {}, MODEL, None, FPS)
    assert clip.fps == pytest.approx(6.25)


def test_unordered_and_duplicate_frames(ring_frames):
    frames = [*reversed(ring_frames[:10]), ring_frames[3]]
    clip = build_clip(manual_trigger(0.0, 1.0), frames, {}, MODEL, None, FPS)
    assert clip.frame_times == tuple(f.t for f in ring_frames[:10])


def test_empty_frames_and_no_frames_in_window_are_clear_errors(ring_frames):
    with pytest.raises(ClipError, match=r"no frames for the push clip window \[-4.000, 6.500\] s: "
                                        r"the ring buffer is empty"):
        build_clip(trigger_at(1.0, 1.5), [], {}, MODEL, None, FPS)
    with pytest.raises(ClipError, match=r"no frames inside the clip window \[100.000, 101.000\] s: "
                                        r"the ring holds \[0.000, 5.680\] s"):
        build_clip(manual_trigger(100.0, 101.0), ring_frames, {}, MODEL, None, FPS)


def test_bad_frames_and_tracks_are_refused(ring_frames):
    gray = Frame(0, 0.0, 0.0, np.zeros((180, 320), np.uint8))
    with pytest.raises(ClipError, match=r"frame 0: expected uint8\[H, W, 3\]"):
        build_clip(manual_trigger(0.0, 1.0), [gray], {}, MODEL, None, FPS)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        build_clip(manual_trigger(0.0, 1.0), ring_frames[:3], {"x": object()}, MODEL, None, FPS)


def test_odd_and_changing_frame_sizes(ring_frames):
    odd = [Frame(f.index, f.t, f.wall, f.image[:179, :319]) for f in ring_frames[:5]]
    clip = build_clip(manual_trigger(0.0, 1.0), odd, {}, MODEL, None, FPS)
    assert (clip.width, clip.height) == (318, 178)
    assert decode_frames(clip.video)[0].shape == (178, 318, 3)
    mixed = [*ring_frames[:3], Frame(3, 0.24, 0.0, cv2.resize(ring_frames[3].image, (640, 360)))]
    clip = build_clip(manual_trigger(0.0, 1.0), mixed, {}, MODEL, None, FPS)
    assert (clip.width, clip.height) == (320, 180) and clip.tracks["window"]["resized_frames"] == 1


# -- RAM only --------------------------------------------------------------------------


def test_nothing_is_left_behind(ring_frames):
    ram_dir = find_ram_dir()
    before_dir = set(os.listdir(ram_dir))
    before_fds = set(os.listdir("/proc/self/fd"))
    build_clip(manual_trigger(0.0, 1.0), ring_frames, {}, MODEL, None, FPS)
    with pytest.raises(ClipError):
        build_clip(manual_trigger(0.0, 1.0), [Frame(0, 0.0, 0.0, np.zeros((4, 4), np.uint8))], {}, MODEL, None, FPS)
    assert set(os.listdir(ram_dir)) == before_dir
    assert set(os.listdir("/proc/self/fd")) == before_fds


def test_ram_dir_must_be_ram_backed(ring_frames, tmp_path):
    assert is_ram_dir(find_ram_dir())
    if not is_ram_dir(tmp_path):
        with pytest.raises(ClipError, match="is not a writable RAM-backed"):
            build_clip(manual_trigger(0.0, 1.0), ring_frames, {}, MODEL, None, FPS, ram_dir=str(tmp_path))
        assert list(tmp_path.iterdir()) == []
