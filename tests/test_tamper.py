"""Camera tamper detection on real footage: the shipped sample clip (CC BY 4.0, see NOTICE) with
tampering applied in memory (the same transforms `appliance tamper eval` uses on ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.box.config import ConfigError, TamperConfig, default_config, parse_config
from appliance.box.tamper import (
    KindState,
    TamperDetector,
    TamperKind,
    TamperReference,
    TamperStateMachine,
    learn_from_images,
    load_reference,
    save_reference,
)
from appliance.box.tamper.evaluate import TAMPERS, Footage, infrared, ping_pong, reference_times
from appliance.box.tamper.reference import ReferenceError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "one-by-one-person-detection.mp4"
STEP = 1.0
CLEAN_S, TAMPER_S = 12.0, 12.0
CFG = TamperConfig(persist_s=5.0, clear_s=3.0, relearn_s=10.0)
TIMES = np.arange(0.0, 90.0, STEP) + STEP / 2


@pytest.fixture(scope="module")
def footage() -> Footage:
    # The frames at the sample times of a 90 s ping-pong timeline, decoded once (RAM only).
    return Footage(SAMPLE, 960, lambda d: reference_times(d) + [ping_pong(t, d) for t in TIMES])


@pytest.fixture(scope="module")
def reference(footage) -> TamperReference:
    mode, ref = learn_from_images([footage.at(t) for t in reference_times(footage.duration)],
                                  source="provision", night_max_chroma=CFG.night_max_chroma)
    assert mode == "day"
    return TamperReference({mode: ref})


def frame(footage: Footage, t: float) -> np.ndarray:
    return footage.at(ping_pong(t, footage.duration))


def run(detector: TamperDetector, frames) -> list:
    events = []
    for t, image in frames:
        events += detector.update(image, t, wall=1_800_000_000 + t)
    return events


def test_state_machine_persists_clears_and_restarts_after_a_gap():
    sm = TamperStateMachine(TamperKind.COVERED, persist_s=5, clear_s=3)
    assert [sm.step(True, t) for t in range(0, 5)] == [None] * 5 and sm.state is KindState.PENDING
    assert sm.step(True, 5) == "raised" and sm.tampered and sm.phase_start == 0
    assert sm.step(False, 6) is None and sm.state is KindState.CLEARING and sm.tampered
    assert sm.step(True, 7) is None and sm.state is KindState.TAMPERED   # back before clear_s
    assert [sm.step(False, t) for t in (8, 9, 10)] == [None, None, None]
    assert sm.step(False, 11) == "cleared" and sm.state is KindState.OK and sm.phase_start == 8
    # A condition that flickers never persists ...
    assert all(sm.step(t % 2 == 0, t) is None for t in range(20, 40))
    # ... and a gap longer than persist_s (camera reconnecting) restarts the count.
    sm2 = TamperStateMachine(TamperKind.MOVED, persist_s=5, clear_s=3)
    sm2.step(True, 0)
    sm2.step(True, 4)
    assert sm2.step(True, 20) is None and sm2.since_t == 20
    assert sm2.step(True, 25) == "raised"


def test_untampered_footage_raises_nothing(footage, reference):
    detector = TamperDetector(CFG, reference)
    events = run(detector, ((t, frame(footage, t)) for t in TIMES))
    assert events == []
    assert detector.status() == {"state": "ok", "kinds": [], "since": {}, "mode": "day",
                                 "reference": {"day": "provision", "night": "none"}}


@pytest.mark.parametrize("name", ["black cover", "partial cover 80%", "blur sigma 4", "shift 10%", "rotate 8deg",
                                  "saturation x3", "white-out (torch)", "frozen frames"])
def test_each_tamper_is_raised_with_its_kind_and_cleared_after(footage, reference, name):
    tamper = next(t for t in TAMPERS if t.name == name)
    times = TIMES[TIMES < CLEAN_S + TAMPER_S + 8]
    onset_t = float(times[times >= CLEAN_S][0])
    onset = frame(footage, onset_t)
    end = CLEAN_S + TAMPER_S

    def frames():
        for t in times:
            image = frame(footage, t)
            yield t, (tamper.transform(image, onset) if CLEAN_S <= t < end else image)

    detector = TamperDetector(CFG, reference)
    events = run(detector, frames())
    raised = [e for e in events if e.state == "raised"]
    assert [e.kind for e in raised] == [tamper.kind], [(e.kind, e.t) for e in events]
    delay = raised[0].t - onset_t
    assert CFG.persist_s <= delay <= CFG.persist_s + 2 * STEP + 1e-6
    assert raised[0].since_t >= onset_t
    cleared = [e for e in events if e.state == "cleared"]
    assert [e.kind for e in cleared] == [tamper.kind] and cleared[0].t >= end + CFG.clear_s
    # The event carries numbers only: nothing an image could be rebuilt from.
    fields = raised[0].fields()
    assert set(fields) == {"kind", "state", "time", "stream_t", "since_stream_t", "mode", "measures"}
    assert all(isinstance(v, float) for v in fields["measures"].values())
    json.dumps(fields)


def test_small_shift_and_light_blur_are_tolerated(footage, reference):
    """Pole sway and a soft image are not tampering: below max_shift / defocus_ratio."""
    for name in ("shift 2%", "rotate 3deg", "blur sigma 1"):
        tamper = next(t for t in TAMPERS if t.name == name)
        detector = TamperDetector(CFG, reference)
        events = run(detector, ((t, tamper.transform(frame(footage, t), None) if t >= CLEAN_S else frame(footage, t))
                                for t in TIMES[:30]))
        assert events == [], name


def test_person_boxes_are_masked_out(footage, reference):
    """A person filling most of the view must not read as a cover or a move when their box is known."""
    detector = TamperDetector(CFG, reference)
    events = []
    for t in TIMES[:25]:
        image = frame(footage, t).copy()
        h, w = image.shape[:2]
        box = np.array([[0.1 * w, 0.05 * h, 0.75 * w, h - 1]], np.float32)
        if t >= CLEAN_S:   # someone in a flat dark coat right in front of the camera
            image[int(0.05 * h):, int(0.1 * w):int(0.75 * w)] = 40
        events += detector.update(image, t, wall=t, person_boxes=box if t >= CLEAN_S else None)
    assert events == [], [(e.kind, e.t) for e in events]


def test_infrared_switch_learns_a_night_reference_then_detects_at_night(footage, reference):
    learnt = []
    detector = TamperDetector(CFG, reference, on_reference=lambda mode, ref: learnt.append((mode, ref.source)))
    switch, blur_from = 10.0, 40.0
    blur = next(t for t in TAMPERS if t.name == "blur sigma 4").transform

    def frames():
        for t in TIMES[TIMES < blur_from + 15]:
            image = frame(footage, t)
            if t >= switch:
                image = infrared(image)
            if t >= blur_from:
                image = blur(image, image)
            yield t, image

    events = run(detector, frames())
    assert learnt == [("night", "learned")]
    assert [(e.kind, e.state, e.mode) for e in events] == [(TamperKind.DEFOCUSED, "raised", "night")]
    assert events[0].t >= blur_from + CFG.persist_s
    status = detector.status()
    assert status["mode"] == "night" and status["kinds"] == ["defocused"]
    assert status["reference"] == {"day": "provision", "night": "learned"}


def test_without_a_reference_it_learns_one_and_never_from_a_covered_view(footage):
    detector = TamperDetector(CFG, None)
    # Covered from the start: no reference can be learnt, but the cover is raised anyway.
    events = run(detector, ((t, np.zeros_like(frame(footage, t))) for t in TIMES[:20]))
    assert [(e.kind, e.state) for e in events] == [(TamperKind.COVERED, "raised")]
    assert detector.reference.modes == {}
    with pytest.raises(ReferenceError, match="too little structure"):
        learn_from_images([np.full((540, 960, 3), 90, np.uint8)] * 3, source="provision", night_max_chroma=3.0)
    clean = TamperDetector(CFG, None)
    run(clean, ((t, frame(footage, t)) for t in TIMES[:20]))
    assert clean.reference.modes["day"].source == "learned"


def test_reference_file_holds_features_not_an_image(tmp_path, reference, footage):
    path = tmp_path / "pixel" / "tamper-reference.json"
    save_reference(path, reference)
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "appliance-tamper-reference" and doc["version"] == 1
    day = doc["modes"]["day"]
    assert set(day) == {"source", "unix_ms", "frames", "brightness", "contrast", "entropy_bits", "chroma", "cells",
                        "cell_std", "orb"}
    assert set(day["orb"]) == {"width", "height", "points", "descriptors"}
    n = len(day["orb"]["points"])
    assert 20 <= n <= 500 and len(day["cells"]) == 6 and all(len(r) == 8 for r in day["cells"])
    # far smaller than any picture of the view (a 64x48 grey thumbnail alone is 3 kB raw)
    assert path.stat().st_size < 80_000
    again = load_reference(path)
    assert np.array_equal(again.modes["day"].corners.descriptors, reference.modes["day"].corners.descriptors)
    # a reloaded reference detects the same
    cover = next(t for t in TAMPERS if t.name == "black cover").transform
    events = run(TamperDetector(CFG, again), ((t, cover(frame(footage, t), None)) for t in TIMES[:8]))
    assert [e.kind for e in events] == [TamperKind.COVERED]
    assert load_reference(tmp_path / "missing.json") is None
    path.write_text('{"format": "something else"}')
    with pytest.raises(ReferenceError, match="provision check"):
        load_reference(path)


def test_tamper_config_is_validated_with_key_and_fix():
    with pytest.raises(ConfigError) as err:
        parse_config({"tamper": {"fps": 0, "persist_s": "10", "shift": 1}})
    text = str(err.value)
    assert "tamper.fps = 0.0: must be >= 0.1 (fix: frames per second taken from the RAM ring" in text
    assert "tamper.persist_s = '10': must be a number" in text
    assert "tamper.shift: unknown key (fix: remove it or use one of:" in text and "max_shift" in text
    with pytest.raises(ConfigError, match=r"tamper.persist_s = 1: must span at least 2 samples"):
        parse_config({"tamper": {"fps": 1.0, "persist_s": 1.0}})
    cfg = default_config()
    assert cfg.tamper.enabled and cfg.tamper_reference == Path("/var/lib/appliance/pixel/tamper-reference.json")
    example = ROOT / "provisioning" / "appliance.example.toml"
    import tomllib

    assert set(tomllib.loads(example.read_text())["tamper"]) == set(TamperConfig.__dataclass_fields__)


def test_analyze_reports_a_covered_camera_and_builds_no_clip(tmp_path, capsys):
    """End to end through the pipeline (real pose): 14 s of the sample, then the lens covered."""
    import cv2
    import tomli_w

    from appliance.cli import main

    video = tmp_path / "covered.mp4"
    cap = cv2.VideoCapture(str(SAMPLE))
    writer = None
    try:
        for i in range(220):
            ok, image = cap.read()
            assert ok
            if writer is None:
                writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0,
                                         (image.shape[1], image.shape[0]))
            writer.write(image if i < 140 else np.zeros_like(image))
    finally:
        cap.release()
        writer.release()
    config = tmp_path / "appliance.toml"
    config.write_text(tomli_w.dumps({"camera": {"source": str(video)}, "analysis": {"fps": 2.0},
                                     "tamper": {"persist_s": 3.0, "clear_s": 2.0, "relearn_s": 6.0}}))
    assert main(["analyze", str(video), "--config", str(config), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    tampers = [x for x in lines if x["type"] == "tamper"]
    assert [(x["kind"], x["state"], x["mode"]) for x in tampers] == [("covered", "raised", "day")], tampers
    assert 17.0 <= tampers[0]["stream_t"] <= 19.0 and tampers[0]["since_stream_t"] >= 14.0
    summary = lines[-1]
    assert summary["tamper_raised"] == 1 and summary["clips"] == 0 and not summary["triggered"]
    assert summary["tamper"]["kinds"] == ["covered"] and summary["tamper"]["reference"]["day"] == "learned"
