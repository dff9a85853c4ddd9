"""Object stage and the weapon pattern: real YOLOX-Nano inference on real frames.

Fixture: 8 frames (every 3rd of frames 78-99, JPEG) of MMAction2's arm-wrestling demo clip
(Apache-2.0, see NOTICE), where a man at the table holds a bottle. No shippable footage shows a
knife or a bat, so the whole chain (crop → detector → wrist → consecutive scans → Event →
gate) is exercised with ``classes = ["bottle"]``, the harmless class a technician would use on
site, and the default classes must stay silent on the same frames.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.box.behaviour import BehaviourAnalyzer
from appliance.box.config import ConfigError, ObjectsConfig, default_config, package_root, parse_config
from appliance.box.objects import COCO_CLASSES, ObjectDetector, ObjectStage
from appliance.box.objects.stage import box_point_distance
from appliance.box.policy import PolicyGate, load_profile, parse_profile
from appliance.box.pose import estimator_from_config
from appliance.box.tracking import Tracker
from appliance.common.errors import ModelError
from appliance.contracts.types import KP, Detections, HandScan, HeldObject, Pattern, TrackedFrame, TrackedPerson

ROOT = package_root()
FIXTURE = Path(__file__).parent / "fixtures" / "objects" / "arm_wrestling_bottle.npz"


def fixture_frames() -> list[tuple[int, float, np.ndarray]]:
    z = np.load(FIXTURE)
    off, fps = z["offsets"], float(z["fps"])
    return [(int(i), int(i) / fps, cv2.imdecode(z["jpeg"][a:b], cv2.IMREAD_COLOR))
            for i, a, b in zip(z["frame_index"], off[:-1], off[1:])]


@pytest.fixture(scope="module")
def detector() -> ObjectDetector:
    return ObjectDetector("yolox-nano", threads=2)


@pytest.fixture(scope="module")
def tracked_frames() -> list[tuple[np.ndarray, TrackedFrame]]:
    cfg = default_config()
    est = estimator_from_config(cfg.pose)
    tracker = Tracker(cfg.tracking)
    out = []
    for index, t, image in fixture_frames():
        tracker.frame_size = (image.shape[1], image.shape[0])
        d = est(image)
        out.append((image, tracker.update(Detections(index, t, d.boxes, d.scores, d.keypoints))))
    return out


def run_chain(detector, tracked_frames, objects: ObjectsConfig):
    stage = ObjectStage(objects, detector=detector)
    analyzer = BehaviourAnalyzer(objects=objects)
    scans, events = [], []
    for image, tracked in tracked_frames:
        scan = stage.update(image, tracked, analyzer.focus_tracks())
        scans.append(scan)
        events += analyzer.update(tracked, scan)
    return scans, events


def test_detector_finds_persons_and_the_bottle_on_a_real_frame(detector):
    _, _, image = fixture_frames()[1]
    found = detector(image, min_score=0.3)
    labels = found.labels()
    assert labels.count("person") >= 2
    assert found.boxes.shape == (len(found), 4) and found.scores.dtype == np.float32
    # boxes are in the given image's pixels
    assert (found.boxes[:, 0] >= -5).all() and (found.boxes[:, 2] <= image.shape[1] + 5).all()
    crop_found = detector(image[20:200, 150:330], classes=("bottle",), min_score=0.2)
    assert crop_found.labels() and set(crop_found.labels()) == {"bottle"}
    assert len(COCO_CLASSES) == 80 and COCO_CLASSES[43] == "knife" and COCO_CLASSES[34] == "baseball bat"


def test_weapon_event_names_object_score_and_hand(detector, tracked_frames):
    objects = ObjectsConfig(enabled=True, classes=("bottle",), min_score=0.2, min_frames=2, max_crops=3, rescan_s=0.1)
    scans, events = run_chain(detector, tracked_frames, objects)
    assert any(s.objects for s in scans)
    for scan in scans:
        for obj in scan.objects:
            assert obj.label == "bottle" and obj.hand in ("left", "right")
            assert obj.wrist_distance <= objects.wrist_distance and obj.track_id in scan.scanned
    weapons = [e for e in events if e.pattern is Pattern.WEAPON]
    assert weapons, "two consecutive scans with the bottle near a wrist must raise weapon"
    e = weapons[0]
    assert e.explanation["object"] == "bottle" and e.explanation["hand"] in ("left", "right")
    assert 0.2 <= e.explanation["score"] <= 1.0 and e.explanation["frames"] >= 2
    assert len(e.track_ids) == 1 and not e.pattern.violent
    assert 0.5 <= e.confidence <= 1.0


def test_default_classes_stay_silent_on_ordinary_objects(detector, tracked_frames):
    _, events = run_chain(detector, tracked_frames, ObjectsConfig(enabled=True, rescan_s=0.1))
    assert not [e for e in events if e.pattern is Pattern.WEAPON]


def test_one_frame_is_not_enough(detector, tracked_frames):
    objects = ObjectsConfig(enabled=True, classes=("bottle",), min_score=0.2, min_frames=50, rescan_s=0.1)
    _, events = run_chain(detector, tracked_frames, objects)
    assert not [e for e in events if e.pattern is Pattern.WEAPON]


def test_budget_and_focus(detector, tracked_frames):
    image, tracked = tracked_frames[0]
    assert len(tracked.persons) >= 2
    stage = ObjectStage(ObjectsConfig(enabled=True, max_crops=1, rescan_s=5.0), detector=detector)
    focus = tracked.persons[-1].track_id
    first = stage.update(image, tracked, {focus})
    assert first.scanned == (focus,)                  # the focus track first, one crop only
    nxt = TrackedFrame(tracked.frame_index + 1, tracked.t + 0.1, tracked.persons, tracked.frame_size)
    second = stage.update(image, nxt, set())
    assert len(second.scanned) == 1 and second.scanned[0] != focus   # then the never-scanned ones
    later = TrackedFrame(tracked.frame_index + 2, tracked.t + 0.2, tracked.persons, tracked.frame_size)
    assert len(stage.update(image, later, set()).scanned) <= 1


def test_person_without_a_visible_wrist_is_not_scanned(detector):
    kp = np.zeros((17, 3), np.float32)
    kp[:, :2] = 50
    kp[KP["left_shoulder"], 2] = 0.9          # no wrist seen
    person = TrackedPerson(1, np.array([10, 10, 90, 200], np.float32), 0.9, kp, 5, 0)
    stage = ObjectStage(ObjectsConfig(enabled=True), detector=detector)
    scan = stage.update(np.zeros((240, 320, 3), np.uint8), TrackedFrame(0, 0.0, (person,), (320, 240)))
    assert scan.scanned == () and scan.objects == ()


def test_streak_rules():
    analyzer = BehaviourAnalyzer(objects=ObjectsConfig(min_frames=3, min_score=0.3))
    empty = TrackedFrame(0, 0.0, (), (640, 480))

    def scan(t, scanned, holding):
        objs = tuple(HeldObject(7, "knife", 0.6, "right", 0.1, np.zeros(4, np.float32)) for _ in range(holding))
        return HandScan(0, t, scanned, objs)

    def step(t, scanned, holding):
        return [e for e in analyzer.update(replace(empty, t=t), scan(t, scanned, holding))
                if e.pattern is Pattern.WEAPON]

    assert step(0.0, (7,), 1) == [] and 7 in analyzer.focus_tracks()
    assert step(0.1, (), 0) == []             # not scanned: neither extends nor ends the streak
    assert step(0.2, (7,), 1) == []
    fired = step(0.3, (7,), 1)
    assert fired and fired[0].explanation["object"] == "knife" and fired[0].explanation["hand"] == "right"
    assert fired[0].start_t == 0.0 and fired[0].confidence == 1.0      # score 0.6 = twice the floor
    analyzer = BehaviourAnalyzer(objects=ObjectsConfig(min_frames=3, min_score=0.3))
    assert step(1.0, (7,), 1) == [] and step(1.1, (7,), 0) == []       # scanned without it: ends
    assert 7 not in analyzer.focus_tracks()
    assert step(1.2, (7,), 1) == [] and step(1.3, (7,), 1) == []


def test_bw_polg_counts_weapon_but_never_records_it_and_a_weapon_profile_may():
    event_scan = HandScan(0, 0.0, (7,), (HeldObject(7, "knife", 0.9, "left", 0.0, np.zeros(4, np.float32)),))
    analyzer = BehaviourAnalyzer(objects=ObjectsConfig(min_frames=1))
    event = analyzer.update(TrackedFrame(0, 0.0, (), (640, 480)), event_scan)[0]
    decision = PolicyGate(load_profile("bw-polg-44-4")).decide(event)
    assert not decision.permitted and decision.rule == "patterns.weapon.permitted"
    assert PolicyGate(load_profile("helpless-person")).decide(event).rule == "not-listed"
    text = (ROOT / "provisioning" / "profiles" / "bw-polg-44-4.toml").read_text()
    text = text.replace('id = "bw-polg-44-4"', 'id = "weapon-zone"').replace(
        "[patterns.weapon]\npermitted = false", "[patterns.weapon]\npermitted = true\nmin_confidence = 0.6")
    profile = parse_profile(text.encode(), expected_id="weapon-zone")
    assert PolicyGate(profile).decide(event).permitted


def test_objects_config_is_validated_with_fixes():
    with pytest.raises(ConfigError) as info:
        parse_config({"objects": {"classes": ["knife", "sword"], "min_frames": 0, "max_crops": "2", "colour": 1}})
    msg = str(info.value)
    assert "objects.classes[1] = 'sword': must be one of 'knife', 'baseball bat'" in msg
    assert "objects.min_frames = 0: must be >= 1" in msg and "objects.max_crops = '2': must be an integer" in msg
    assert "objects.colour: unknown key" in msg
    with pytest.raises(ConfigError, match=r"objects.classes = \[\]: names no class"):
        parse_config({"objects": {"classes": []}})
    cfg = parse_config({"objects": {"enabled": True, "classes": ["knife"]}})
    assert cfg.objects.enabled and cfg.objects.classes == ("knife",)


def test_example_config_has_objects_and_pose_model_choice():
    import tomllib

    data = tomllib.loads((ROOT / "provisioning" / "appliance.example.toml").read_text())
    assert "objects" in data and "classes" in data["objects"] and "model" in data["pose"]
    parse_config(data)


def test_yolox_whose_hash_differs_is_refused(tmp_path):
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    blob = bytearray((ROOT / "models" / "yolox-nano.onnx").read_bytes())
    blob[-64] ^= 0x01
    (tmp_path / "yolox-nano.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="refusing to load"):
        ObjectDetector("yolox-nano", models_dir=str(tmp_path))
    with pytest.raises(ModelError, match="fix: set objects.model"):
        ObjectDetector("no-such-detector")


def test_box_point_distance():
    box = np.array([10, 10, 20, 20], np.float32)
    assert box_point_distance(box, np.array([15, 15])) == 0.0
    assert box_point_distance(box, np.array([23, 24])) == pytest.approx(5.0)


def test_pipeline_counts_a_weapon_under_bw_polg_but_records_nothing():
    """The whole box pipeline (masks → ring → pose → tracking → object stage → behaviour → gate)
    on the real frames: the weapon decision is made and refused by the profile, no clip."""
    from appliance.box.runtime import Pipeline, analyse_video

    cfg = default_config(objects={"enabled": True, "classes": ["bottle"], "min_score": 0.2, "min_frames": 2,
                                  "rescan_s": 0.1, "max_crops": 3})
    pipeline = Pipeline(cfg)
    results, decisions, clips = [], [], []
    stats = analyse_video(pipeline, ((i, t, t, img) for i, t, img in fixture_frames()),
                          on_result=results.append, on_clip=clips.append,
                          on_final=lambda final: decisions.extend(final))
    decisions += [d for r in results for d in r.decisions]
    assert all(r.scan is not None for r in results) and stats.objects_s > 0
    weapon = [d for d in decisions if d.event.pattern is Pattern.WEAPON]
    assert weapon and not any(d.permitted for d in weapon)
    assert weapon[0].rule == "patterns.weapon.permitted" and weapon[0].profile.version == "2026.2"
    assert clips == [] and pipeline.pending == []
