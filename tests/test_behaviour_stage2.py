"""Two-stage fight detection (appliance/box/behaviour/stage2.py, fight_model.py) on real footage:
stage-1 gating, motion energy, the zoomed re-pose, two-person evidence, the ONNX classifier's
hash check, and hard negatives through the real pipeline."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.box.behaviour import BehaviourAnalyzer, BehaviourConfig
from appliance.box.behaviour.fight_model import FEATURE_NAMES, FightModel
from appliance.box.behaviour.stage2 import (
    CandidateGate,
    MotionField,
    RegionEvidence,
    Stage2,
    _mostly_inside,
    _share_crops,
    relative_motion,
)
from appliance.box.capture.source import FileSource
from appliance.box.config import ConfigError, default_config, package_root, parse_config
from appliance.box.pose.manifest import load_manifest
from appliance.box.runtime import Pipeline, analyse_video
from appliance.common.errors import ModelError
from appliance.contracts.types import Detections, Pattern
from tests.test_behaviour_detectors import load_fixture

ROOT = package_root()
WALKING = ROOT / "samples" / "one-by-one-person-detection.mp4"   # CC BY 4.0, Intel
HUG = ROOT / "samples" / "demo_skeleton.mp4"                     # Apache-2.0, OpenMMLab
FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"
MODEL = BehaviourConfig().fight_model


def walking_frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(WALKING))
    frames = []
    try:
        for _ in range(n):
            ok, image = cap.read()
            assert ok
            frames.append(image)
    finally:
        cap.release()
    return frames


def walker_boxes() -> dict[int, np.ndarray]:
    """Frame number → the walker's tracked box (the `walking` fixture: the same video, 10 fps)."""
    z = np.load(FIXTURES / "walking.npz")
    boxes, k = {}, 0
    for i in range(len(z["t"])):
        if int(z["count"][i]):
            boxes[i] = z["box"][k]
        k += int(z["count"][i])
    return boxes


# --------------------------------------------------------------------------- motion energy


def test_motion_energy_on_real_frames_zero_when_static_rising_with_motion_scale_free():
    frames, boxes = walking_frames(150), walker_boxes()
    empty_room = np.array([300, 100, 500, 400], np.float32)
    # The empty room before anybody comes in: nothing changes beyond camera noise.
    assert MotionField(frames[10], frames[11], []).energy(empty_room) == 0.0
    assert MotionField(frames[10], frames[10], []).energy(empty_room) == 0.0
    # The same person standing and reading (frame 140), then walking in (frame 68).
    standing = MotionField(frames[139], frames[140], [boxes[140]]).energy(boxes[140])
    walking = MotionField(frames[67], frames[68], [boxes[68]]).energy(boxes[68])
    assert standing < 0.05 < 0.3 < walking
    # ... more motion over a longer interval while walking in
    assert MotionField(frames[65], frames[68], [boxes[68]]).energy(boxes[68]) >= walking
    # A share of the box's area: the same scene at half the size gives the same energy.
    half = [cv2.resize(f, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for f in (frames[67], frames[68])]
    assert MotionField(half[0], half[1], [boxes[68] / 2]).energy(boxes[68] / 2) == pytest.approx(walking, abs=0.05)
    # A lighting change moves the background too and is subtracted.
    brighter = cv2.convertScaleAbs(frames[140], alpha=1.0, beta=40)
    assert MotionField(frames[140], brighter, [boxes[140]]).energy(boxes[140]) < 0.05


def test_relative_motion_subtracts_the_body_s_own_translation_and_is_scale_free():
    frames, boxes = walking_frames(150), walker_boxes()
    b68, b140 = boxes[68], boxes[140]
    # Nothing changed, or the person stands and reads: ~0 box heights per second.
    assert relative_motion(frames[140], frames[140], b140, [b140], 0.1)[0] < 1e-6
    standing = relative_motion(frames[139], frames[140], b140, [b140], 0.1)[1][0]
    assert standing < 0.02
    # The whole picture shifted by 6x3 px (a body carried along as one piece, or a camera pan):
    # motion energy sees a third of the box change, relative motion almost nothing.
    h, w = frames[140].shape[:2]
    shifted = cv2.warpAffine(frames[140], np.float32([[1, 0, 6], [0, 1, 3]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    assert MotionField(frames[140], shifted, [b140]).energy(b140) > 0.2
    assert relative_motion(frames[140], shifted, b140, [b140], 0.1)[1][0] < 0.05
    # Walking in close to the camera: legs and arms swing against the body.
    walking = relative_motion(frames[67], frames[68], b68, [b68], 0.1)[1][0]
    assert walking > 0.2
    # Box heights per second: the same scene at half the size gives the same value.
    half = [cv2.resize(f, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for f in (frames[67], frames[68])]
    assert relative_motion(half[0], half[1], b68 / 2, [b68 / 2], 0.1)[1][0] == pytest.approx(walking, rel=0.15)


# --------------------------------------------------------------------------- stage 1 gating


def small_cfg(source: Path, **behaviour):
    return default_config(str(source), behaviour=behaviour) if behaviour else default_config(str(source))


def run_pipeline(source: Path, seconds: float, cfg=None):
    cfg = cfg or small_cfg(source)
    pipeline = Pipeline(cfg)
    frames = (f for f in FileSource(str(source), max_width=cfg.ring.max_width).frames() if f[1] <= seconds)
    decisions = []
    analyse_video(pipeline, frames, on_result=lambda r: decisions.extend(r.decisions),
                  on_final=decisions.extend)
    return pipeline, decisions


def test_no_stage2_work_on_one_person_walking():
    # The first 25 s of the sample: an empty room, then one person walks in and stands at a desk.
    pipeline, decisions = run_pipeline(WALKING, 25.0)
    assert pipeline.stats.persons_max >= 1 and pipeline.stats.analysed_frames >= 240
    assert pipeline.stats.stage2_frames == 0
    assert pipeline.stage2.regions_measured == 0 and pipeline.stage2.repose_runs == 0
    assert not [d for d in decisions if d.event.pattern.violent]


def test_stage1_opens_on_two_persons_within_reach_with_moving_limbs():
    frames = load_fixture("scfd_fight")
    gate = CandidateGate()
    opened = [c for f in frames for c in gate.update(f)]
    assert opened and all(len(c.key) in (1, 2) for c in opened)
    assert {c.reason for c in opened} <= {"pair", "wide-box"}
    # A lone walker never opens one.
    gate = CandidateGate()
    assert not [c for f in load_fixture("walking") for c in gate.update(f)]


# --------------------------------------------------------------------------- two-person evidence


def worst_case_evidence(frames, relative=None):
    """Stage-2 evidence as strong as it gets for every candidate stage 1 opens: the whole box
    changed, every body moves in itself (``relative``: track id -> relative motion, default 1 box
    height/s for everyone), and the zoomed re-pose returns the frame's own detections."""
    gate = CandidateGate()
    for f in frames:
        out = []
        for c in gate.update(f):
            persons = [p for p in f.persons if p.track_id in c.key]
            zoomed = Detections(f.frame_index, f.t, np.array([p.box for p in persons], np.float32),
                                np.ones(len(persons), np.float32), np.array([p.keypoints for p in persons]))
            moving = tuple((relative or {}).get(k, 1.0) for k in c.key)
            out.append(RegionEvidence(c.key, c.reason, c.box, 1.0, tuple(1.0 for _ in c.key), 0.0, c.box, 2.0,
                                      zoomed, max(moving), moving))
        yield f, tuple(out)


@pytest.mark.parametrize("profile", ["bw-polg-44-4", *sorted(p.stem for p in
                                                             (ROOT / "provisioning" / "profiles").glob("*.toml"))])
def test_one_person_falling_never_raises_a_violent_pattern(profile):
    from appliance.box.policy import PolicyGate, load_profile

    frames = load_fixture("fall_constructed")
    analyzer = BehaviourAnalyzer()
    events = []
    for f, evidence in worst_case_evidence(frames):
        events += analyzer.update(f, evidence)
    assert Pattern.FALL in {e.pattern for e in events}
    gate = PolicyGate(load_profile(profile))
    assert not [e for e in events if e.pattern.violent]
    assert not [e for e in events if e.pattern.violent and gate.decide(e, {}).permitted]


def test_a_violent_rule_needs_both_bodies_moving_in_themselves():
    """Strike, kick, push and strangle (and the classifier's fight: see the threshold test) need
    stage-2 evidence that *both* persons move relative to their own body (a blow moves the
    actor's limbs and the target's body): the same real skeletons with a kick fire when both
    move, and not when the target's box stands still."""
    frames = load_fixture("pair_kick_constructed")

    def run(relative):
        analyzer = BehaviourAnalyzer()
        events = []
        for f, ev in worst_case_evidence(frames, relative):
            events += analyzer.update(f, ev)
        return [e for e in events + analyzer.flush() if e.pattern.violent]

    both = run(None)
    assert [e.pattern for e in both] == [Pattern.KICK]
    assert both[0].explanation["relative_motion_min_box_heights_per_s"] == 1.0
    target = both[0].track_ids[1]
    assert not run({target: 0.05})        # the other stands still: a keypoint swing, not a kick
    assert run({target: 0.2})             # both move: still a kick
    assert not run({t: 0.0 for t in both[0].track_ids})   # no relative motion measured at all


def test_a_region_with_one_body_is_never_asked_about_a_fight():
    # A wide box (arms out, running, dancing) with motion everywhere but one person in the crop.
    f0 = load_fixture("walking")[70]
    p = f0.persons[0]
    analyzer = BehaviourAnalyzer()
    for i in range(30):
        f = dataclasses.replace(f0, t=f0.t + 0.1 * i, frame_index=f0.frame_index + i)
        one = Detections(f.frame_index, f.t, p.box[None], np.ones(1, np.float32), p.keypoints[None])
        ev = RegionEvidence((p.track_id,), "wide-box", p.box, 1.0, (1.0,), 0.0, p.box, 2.0, one)
        assert not analyzer.update(f, (ev,))
        assert analyzer.fight_probability == 0.0


# --------------------------------------------------------------------------- hard negatives


def test_the_hug_raises_no_violent_event_though_stage2_looks_at_it():
    pipeline, decisions = run_pipeline(HUG, 10.0)
    assert pipeline.stats.stage2_frames >= 5            # the embrace is a candidate ...
    assert pipeline.stage2.repose_runs >= 5
    assert not [d for d in decisions if d.event.pattern.violent]   # ... but not a fight


def test_arm_wrestling_raises_no_violent_event_under_any_profile():
    """Close, fast, forceful contact between two persons that is not a fight (MMAction2's demo
    clip, Apache-2.0, 10 s): stage 2 looks at it most of the time, nothing violent comes out —
    not even an event a profile would refuse."""
    pipeline, decisions = run_pipeline(FIXTURES / "arm_wrestling.mp4", 60.0)
    assert pipeline.stats.analysed_frames >= 90
    assert pipeline.stats.stage2_frames >= 0.5 * pipeline.stats.analysed_frames
    assert pipeline.stage2.repose_runs < pipeline.stage2.regions_measured   # overlapping regions share
    assert not [d for d in decisions if d.event.pattern.violent]


# --------------------------------------------------------------------------- the model is data


def copy_models(tmp_path: Path) -> Path:
    entry = load_manifest()[MODEL]
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    shutil.copy(entry.path, tmp_path / entry.path.name)
    return tmp_path


def test_bundled_onnx_classifier_loads_with_its_manifest_entry():
    entry = load_manifest()[MODEL]
    assert entry.path.suffix == ".onnx" and "MIT" in entry.licence
    model = FightModel.load(MODEL)
    assert model.sha256 == entry.sha256 and model.feature_names and set(model.feature_names) <= set(FEATURE_NAMES)
    assert 0.0 < model.threshold < 1.0 and model.consecutive_windows >= 1
    # More of any feature it uses never makes a fight less likely (an operator can be told why).
    base = np.array([{"zoomed_persons_mean": 2.0, "region_speed_p50_log_per_s": 0.2}.get(n, 0.1 if "energy" in n or
                     "fraction" in n or "closeness" in n else 1.0) for n in FEATURE_NAMES])
    for name in model.feature_names:
        more = base.copy()
        more[FEATURE_NAMES.index(name)] += 1.0
        assert 0.0 <= model.probability(base) < model.probability(more) <= 1.0, name


def test_the_operating_threshold_is_a_site_setting_validated_by_the_config(tmp_path):
    """``[behaviour] fight_threshold`` moves a site along the DET without retraining: below the
    probabilities of real windows it fires, above them it does not, and the event names
    the threshold it was judged by. Out of range is refused by the one validator, naming the key."""
    # A real crowd (scfd no-fight clip) given the strongest stage-2 evidence: its windows reach a
    # middling P(fight) — exactly what a site's threshold decides about.
    frames = load_fixture("scfd_nofight_crowd")

    def run(threshold: float, relative=None):
        analyzer = BehaviourAnalyzer(BehaviourConfig(fight_threshold=threshold))
        events, probs = [], []
        for f, evidence in worst_case_evidence(frames, relative):
            events += analyzer.update(f, evidence)
            probs.append(analyzer.fight_probability)
        return [e for e in events if e.pattern is Pattern.FIGHT], max(probs)

    default_fights, p_max = run(0.0)
    assert 0.0 < p_max < 1.0
    low, _ = run(0.05)
    high, _ = run(min(0.99, round(p_max + 0.01, 2)))
    assert low and not high
    assert low[0].explanation["threshold_probability"] == 0.05 and low[0].confidence >= 0.5
    # Like the rules, the classifier's fight needs the region's persons moving in themselves.
    assert low[0].explanation["relative_motion_min_box_heights_per_s"] == 1.0
    still = {p.track_id: 0.05 for f in frames for p in f.persons}
    assert run(0.05, still) == ([], 0.0)
    if default_fights:
        assert default_fights[0].explanation["threshold_probability"] == FightModel.load(MODEL).threshold
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="behaviour.fight_threshold"):
            parse_config({"behaviour": {"fight_threshold": bad}})
    assert parse_config({"behaviour": {"fight_threshold": 0.6}}).behaviour.fight_threshold == 0.6


def test_a_changed_onnx_classifier_is_refused(tmp_path):
    models = copy_models(tmp_path)
    path = models / load_manifest()[MODEL].path.name
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01                      # one bit: it might still parse, and detect differently
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="refusing to load"):
        FightModel.load(MODEL, models)
    with pytest.raises(ModelError, match="refusing to load"):
        BehaviourAnalyzer(BehaviourConfig(), models_dir=str(models))
    path.unlink()
    with pytest.raises(ModelError, match="cannot be read"):
        BehaviourAnalyzer(BehaviourConfig(), models_dir=str(models))


def test_a_listed_file_that_is_not_an_appliance_classifier_is_a_clear_error():
    with pytest.raises(ModelError, match="not a usable ONNX classifier"):
        FightModel(b"not onnx", "x")
    with pytest.raises(ModelError, match="not a usable ONNX classifier"):   # an ONNX file without metadata
        FightModel((ROOT / "models" / "yolo11n-pose-int8.onnx").read_bytes(), "pose")


def test_stage2_is_bounded_per_frame():
    est_calls = []

    class CountingPose:
        input_width = 640

        def __call__(self, image):
            est_calls.append(image.shape)
            return Detections.empty(0, 0.0)

    stage2 = Stage2(CountingPose(), max_regions=2)
    f = load_fixture("scfd_fight")[10]
    image = np.zeros((f.frame_size[1], f.frame_size[0], 3), np.uint8)
    from appliance.box.behaviour.stage2 import Candidate
    apart = tuple(Candidate((i,), np.array([250 * i, 10, 250 * i + 50, 120], np.float32), "wide-box") for i in range(6))
    out = stage2.measure(image, image, apart, f)
    assert len(out) == 2 and len(est_calls) == 2          # two separate regions: two re-poses at most
    overlapping = tuple(Candidate((i,), np.array([10 * i, 10, 10 * i + 50, 120], np.float32), "wide-box")
                        for i in range(6))
    out = stage2.measure(image, image, overlapping, f)
    assert len(out) == 2 and len(est_calls) == 3          # overlapping regions share one
    assert all(isinstance(e.union_motion_energy, float) for e in out)


# --------------------------------------------------------------------------- zoomed re-pose


def distant_hug(frame_number: int = 55, scale: float = 0.15) -> np.ndarray:
    """The embrace of samples/demo_skeleton.mp4 as a distant CCTV camera would see it: the 1080p
    frame shrunk to ``scale`` inside a 960x540 picture (the ring's resolution), so the pair is
    about 120 px high. Real pixels of two tangled bodies; only the distance is simulated (no
    licensable real footage of a small tangled pair exists; scfd clips may not be shipped)."""
    cap = cv2.VideoCapture(str(HUG))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame_number)
        ok, image = cap.read()
    finally:
        cap.release()
    assert ok
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((540, 960, 3), 90, np.uint8)
    h, w = small.shape[:2]
    canvas[(540 - h) // 2:(540 - h) // 2 + h, (960 - w) // 2:(960 - w) // 2 + w] = small
    return canvas


def test_zoomed_repose_finds_the_second_person_the_whole_frame_pass_misses():
    from appliance.box.pose import estimator_from_config
    from appliance.contracts.types import TrackedFrame, TrackedPerson

    cfg = default_config(str(HUG))
    pose = estimator_from_config(cfg.pose)
    image = distant_hug()
    whole = pose(image)
    # The whole-frame pass: one person a track can start from (score >= tracking.high_score).
    assert int((whole.scores >= cfg.tracking.high_score).sum()) == 1
    i = int(np.argmax(whole.scores))
    person = TrackedPerson(1, whole.boxes[i], float(whole.scores[i]), whole.keypoints[i], 5, 0)
    tracked = TrackedFrame(0, 0.0, (person,), (960, 540))
    from appliance.box.behaviour.stage2 import Candidate
    ev = Stage2(pose).measure(image, image, (Candidate((1,), whole.boxes[i], "pair"),), tracked)[0]
    assert ev.zoom >= 2.0                                    # the crop gets 2-4x the pixels
    assert ev.zoomed_persons >= 2 and float(ev.zoomed.scores.min()) >= 0.5
    # The second body is a different person, not the first one found again.
    centres = 0.5 * (ev.zoomed.boxes[:, :2] + ev.zoomed.boxes[:, 2:])
    assert float(np.hypot(*(centres[0] - centres[1]))) > 0.15 * float(whole.boxes[i, 3] - whole.boxes[i, 1])
    assert ev.union_motion_energy == 0.0                     # the same frame twice: no motion


def test_overlapping_regions_share_one_repose_on_the_bundled_fight():
    """A crowded fight opens overlapping pairs (A-B, B-C): one pose run on their joint crop serves
    both regions, each keeping the persons inside its own crop (samples/scfd_fight_fi023.mp4, the
    demo's real CCTV fight)."""
    source = ROOT / "samples" / "scfd_fight_fi023.mp4"
    cfg = small_cfg(source)
    pipeline = Pipeline(cfg)
    measured: list[tuple[RegionEvidence, ...]] = []
    measure = pipeline.stage2.measure

    def recording(*args, **kwargs):
        out = measure(*args, **kwargs)
        measured.append(out)
        return out

    pipeline.stage2.measure = recording
    frames = FileSource(str(source), max_width=cfg.ring.max_width).frames()
    analyse_video(pipeline, frames, on_result=lambda r: None, on_final=lambda d: None)
    shared = [ev for ev in measured if len(ev) == 2 and _share_crops([e.crop for e in ev])[0][0] == [0, 1]]
    assert shared, "the sample opens two overlapping regions in some frames"
    assert pipeline.stage2.repose_runs < pipeline.stage2.regions_measured
    for a, b in shared:
        assert a.zoomed is not None and b.zoomed is not None and a.zoom == b.zoom > 0
        for e in (a, b):
            if len(e.zoomed.boxes):
                assert _mostly_inside(e.zoomed.boxes, e.crop).all()


def test_regions_far_apart_or_of_very_different_size_are_reposed_separately():
    near = [np.array([100, 100, 300, 400], np.float32), np.array([250, 120, 450, 420], np.float32)]
    assert [m for m, _ in _share_crops(near)] == [[0, 1]]
    apart = [near[0], np.array([600, 100, 800, 400], np.float32)]          # two scuffles
    assert [m for m, _ in _share_crops(apart)] == [[0], [1]]
    # A small pair touching a large one's crop: a joint crop would cut the small pair's zoom 4x.
    small = [np.array([0, 0, 100, 100], np.float32), np.array([90, 0, 390, 300], np.float32)]
    assert [m for m, _ in _share_crops(small)] == [[0], [1]]


# --------------------------------------------------------------------------- episodes per region


def test_episodes_are_per_region_not_per_pattern():
    from appliance.box.behaviour.analyzer import Observation

    analyzer = BehaviourAnalyzer(BehaviourConfig(fight_model=""))
    fight_a = Observation(Pattern.FIGHT, 1.0, 0.5, (1, 2), 0.8, {"fight_probability": 0.9}, region=1)
    strike_a = Observation(Pattern.STRIKE, 1.0, 0.9, (1, 2), 0.9, {"wrist_speed_torso_per_s": 9.0}, region=1)
    fight_b = Observation(Pattern.FIGHT, 1.0, 0.7, (7, 8), 0.7, {"fight_probability": 0.8}, region=2)
    events = analyzer._episode_events([fight_a, strike_a, fight_b], 1.0)
    # Region 1's fight and strike are one alarm (its strongest observation); region 2, an
    # unrelated fight elsewhere, is reported at once.
    assert sorted((e.pattern.value, e.track_ids) for e in events) == [("fight", (7, 8)), ("strike", (1, 2))]
    # Next frame: both regions go on, nothing new is reported until repeat_s.
    assert analyzer._episode_events([fight_a, fight_b], 1.1) == []
    # A fall of one person is its own episode, never folded into a violent one.
    fall = Observation(Pattern.FALL, 1.2, 1.0, (1,), 0.7, {"body_drop_torso": 1.2})
    assert [e.pattern for e in analyzer._episode_events([fight_a, fall], 1.2)] == [Pattern.FALL]
