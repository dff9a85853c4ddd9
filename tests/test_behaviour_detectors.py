"""Behaviour detectors on recorded skeleton sequences (tests/fixtures/behaviour, see
scripts/make_behaviour_fixtures.py for where each one comes from)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from appliance.box.behaviour import BehaviourAnalyzer, BehaviourConfig
from appliance.box.config import ConfigError, parse_config
from appliance.contracts.types import VIOLENT_PATTERNS, Event, Pattern, TrackedFrame, TrackedPerson

FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"


def load_fixture(name: str, *, scale: float = 1.0, dt: float = 0.0, id_offset: int = 0) -> list[TrackedFrame]:
    z = np.load(FIXTURES / f"{name}.npz")
    frames, k = [], 0
    for i, t in enumerate(z["t"]):
        persons = []
        for _ in range(int(z["count"][i])):
            kp = z["keypoints"][k].copy()
            kp[:, :2] *= scale
            persons.append(TrackedPerson(int(z["track_id"][k]) + id_offset, z["box"][k] * scale,
                                         float(z["score"][k]), kp, 0, 0))
            k += 1
        size = tuple(int(v * scale) for v in z["frame_size"])
        frames.append(TrackedFrame(i, float(t) + dt, tuple(persons), size))
    return frames


def run(frames, cfg: BehaviourConfig | None = None) -> list[Event]:
    analyzer = BehaviourAnalyzer(cfg)
    events = []
    for f in frames:
        events += analyzer.update(f)
    return events + analyzer.flush()


def patterns(events) -> set[Pattern]:
    return {e.pattern for e in events}


# --------------------------------------------------------------------------- positives


@pytest.mark.parametrize("fixture, pattern", [
    ("scfd_strike", Pattern.STRIKE),        # real CCTV fight: a punch lands on the other's head
    ("scfd_push", Pattern.PUSH),            # real CCTV fight: a shove
    ("scfd_fight", Pattern.FIGHT),          # real CCTV fight: the window classifier (default)
    ("scfd_fight_rule", Pattern.FIGHT),     # the same with the kinematic fight rule (fight_model = "")
    ("pair_strangle_constructed", Pattern.STRANGLE),
    ("pair_kick_constructed", Pattern.KICK),
    ("fall_constructed", Pattern.FALL),
    ("fall_constructed", Pattern.LYING),
])
def test_detector_fires_on_its_positive(fixture, pattern):
    cfg = None
    if fixture.endswith("_rule"):
        fixture, cfg = fixture.removesuffix("_rule"), BehaviourConfig(fight_model="")
    events = run(load_fixture(fixture), cfg)
    hits = [e for e in events if e.pattern is pattern]
    assert hits, f"{pattern.value} not detected in {fixture}: {[e.pattern.value for e in events]}"
    e = hits[0]
    assert 0.5 <= e.confidence <= 1.0
    assert e.start_t <= e.end_t
    assert e.track_ids
    assert e.explanation
    json.dumps(e.to_json())   # explanations are JSON scalars
    # Units are in the key names.
    # Units are in the key names (the classifier's: a probability, a count of windows, the model
    # and its reasons, each "feature = value (+log-odds)" with the unit in the feature name).
    # A fall also names its cue ("down" or "collapse") and, for a collapse, dimensionless ratios.
    units = ("torso", "_s", "deg", "track", "wrist", "fraction", "probability", "windows", "model", "reason",
             "cue", "ratio")
    assert all(any(u in k for u in units) for k in e.explanation)


def test_strike_explains_speed_and_reach():
    strike = next(e for e in run(load_fixture("scfd_strike")) if e.pattern is Pattern.STRIKE)
    cfg = BehaviourConfig()
    assert strike.explanation["wrist_speed_torso_per_s"] >= cfg.strike_wrist_speed
    assert strike.explanation["wrist_to_target_torso"] <= cfg.strike_reach
    assert strike.explanation["attacker_track"] == strike.track_ids[0]


def test_fall_is_timed_at_the_drop_and_lying_after_lying_min_s():
    events = run(load_fixture("fall_constructed"))   # tips over from t=2.0 s to 2.6 s
    fall = next(e for e in events if e.pattern is Pattern.FALL)
    lying = next(e for e in events if e.pattern is Pattern.LYING)
    assert 1.5 <= fall.start_t <= 2.6 and fall.end_t <= 3.0
    assert lying.end_t - lying.start_t >= BehaviourConfig().lying_min_s - 1e-6
    assert not patterns(events) & VIOLENT_PATTERNS


def end_on_fall(duration_s: float, *, frame_size=(768, 720), squash: float = 0.35,
                shift_torso: float = 0.8) -> list[TrackedFrame]:
    """A real standing skeleton (fall_constructed's first frame) falling *towards the camera*:
    over ``duration_s`` its height shrinks to ``squash`` of itself about the feet (the body now
    lies along the line of sight, foreshortened) and it moves ``shift_torso`` torso lengths down
    the image; the torso keeps looking upright, so only the collapse cue can see it. 1 s
    standing before, 3 s down after, 10 fps, in a picture tall enough to hold the whole fall."""
    first = load_fixture("fall_constructed")[0].persons[0]
    kp0 = first.keypoints.copy()
    feet_y = float(kp0[[15, 16], 1].max())
    torso = float(np.linalg.norm(kp0[[5, 6], :2].mean(0) - kp0[[11, 12], :2].mean(0)))
    frames, t = [], 0.0
    steps = round(duration_s * 10)
    for i in range(10 + steps + 30):
        a = min(max(i - 10, 0) / max(steps, 1), 1.0)
        kp = kp0.copy()
        kp[:, 1] = feet_y + (kp0[:, 1] - feet_y) * (1 - (1 - squash) * a) + shift_torso * torso * a
        pts = kp[kp[:, 2] > 0.3, :2]
        box = np.array([*pts.min(0) - 5, *pts.max(0) + 5], np.float32)
        frames.append(TrackedFrame(i, t, (TrackedPerson(1, box, 0.9, kp, i, 0),), frame_size))
        t = round(t + 0.1, 6)
    return frames


def test_fall_seen_end_on_is_caught_by_the_collapse_cue():
    fall = [e for e in run(end_on_fall(0.6)) if e.pattern is Pattern.FALL]
    assert len(fall) == 1, [e.to_json() for e in fall]
    x = fall[0].explanation
    assert x["cue"] == "collapse" and x["body_drop_torso"] >= BehaviourConfig().collapse_drop
    assert x["height_to_width_ratio_after"] <= 0.7 * x["height_to_width_ratio_before"]
    assert x["torso_angle_after_deg"] < BehaviourConfig().lying_angle_deg   # "down" could not see it
    assert 0.9 <= fall[0].start_t and fall[0].end_t <= 1.8


def test_collapse_cue_needs_speed_depth_and_a_whole_body():
    # Sitting down on the ground takes longer than collapse_window_s.
    assert Pattern.FALL not in patterns(run(end_on_fall(2.0)))
    # A squat: the hips drop less than collapse_drop.
    assert Pattern.FALL not in patterns(run(end_on_fall(0.6, squash=0.6, shift_torso=0.0)))
    # Walking out of the picture at the bottom looks like a collapse; a box at the border is not judged.
    frames = end_on_fall(0.6)
    low = max(float(p.box[3]) for f in frames for p in f.persons)
    assert Pattern.FALL not in patterns(run([dataclasses.replace(f, frame_size=(768, int(low) + 2)) for f in frames]))
    # Disabled by a collapse_drop larger than any fall.
    assert Pattern.FALL not in patterns(run(end_on_fall(0.6), BehaviourConfig(collapse_drop=10.0)))


def _torso(kp: np.ndarray) -> float:
    return float(np.linalg.norm(kp[[5, 6], :2].mean(0) - kp[[11, 12], :2].mean(0)))


def _with_keypoints(frame: TrackedFrame, kp: np.ndarray, frame_size=None) -> TrackedFrame:
    pts = kp[kp[:, 2] > 0.3, :2]
    box = np.array([*pts.min(0) - 5, *pts.max(0) + 5], np.float32)
    person = dataclasses.replace(frame.persons[0], keypoints=kp, box=box)
    return dataclasses.replace(frame, persons=(person,), frame_size=frame_size or frame.frame_size)


def away_fall(frame_size=(1024, 720)) -> list[TrackedFrame]:
    """fall_constructed (tips over about the feet from t=2.0 to 2.6 s), but falling *away* from
    the camera: the body lands further up the image, so the hips drop about 0.67 torso lengths
    instead of 1.22, less than ``fall_drop``."""
    frames = load_fixture("fall_constructed")
    torso = _torso(frames[0].persons[0].keypoints)
    out = []
    for f in frames:
        kp = f.persons[0].keypoints.copy()
        kp[:, 1] -= 0.55 * torso * min(max((f.t - 2.0) / 0.6, 0.0), 1.0) - 200   # 200: room above
        out.append(_with_keypoints(f, kp, frame_size))
    return out


def test_fall_away_from_the_camera_is_caught_by_the_tip_over_cue():
    events = run(away_fall())
    fall = [e for e in events if e.pattern is Pattern.FALL]
    assert len(fall) == 1, [e.to_json() for e in events]
    x = fall[0].explanation
    assert x["cue"] == "tip-over" and x["body_drop_torso"] < BehaviourConfig().fall_drop
    assert x["height_to_width_ratio_after"] < 1.0
    assert Pattern.LYING in patterns(events)


def test_tip_over_needs_a_horizontal_whole_body():
    # Bending over with a knee dip: the torso is horizontal ("down") and the hips drop 0.6 torso
    # lengths, but the legs stay upright and the arms hang: the body is about as wide as high.
    from appliance.box.behaviour import features as F
    from appliance.box.behaviour.analyzer import TIPOVER_MAX_ASPECT

    first = load_fixture("fall_constructed")[0]
    kp0 = first.persons[0].keypoints.copy()
    torso = _torso(kp0)
    frames = []
    for i in range(40):
        a = min(max(i - 10, 0) / 6, 1.0)
        kp = kp0.copy()
        kp[:13, 1] += 0.6 * torso * a                 # head, arms and hips lower (knees bend)
        hip = kp[[11, 12], :2].mean(0)
        rot = np.deg2rad(90 * a)                      # head and shoulders pivot forward about the hips
        upper = kp[:7, :2] - hip
        kp[:7, 0] = hip[0] + upper[:, 0] * np.cos(rot) - upper[:, 1] * np.sin(rot)
        kp[:7, 1] = hip[1] + upper[:, 0] * np.sin(rot) + upper[:, 1] * np.cos(rot)
        for shoulder, elbow, wrist in ((5, 7, 9), (6, 8, 10)):   # the arms hang from the shoulders
            kp[elbow, :2] = kp[shoulder, :2] + [0, 0.6 * torso]
            kp[wrist, :2] = kp[shoulder, :2] + [0, 1.1 * torso]
        frames.append(_with_keypoints(dataclasses.replace(first, frame_index=i, t=i / 10), kp, (768, 720)))
    last = frames[-1].persons[0]
    assert F.is_down(last.keypoints, last.box, 60)
    assert F.body_aspect(last.keypoints, last.box) > TIPOVER_MAX_ASPECT
    assert Pattern.FALL not in patterns(run(frames))
    # A fall away from the camera ending at the image border: only the full drop would count.
    low = float(away_fall()[-1].persons[0].box[3])   # where the lying body ends
    assert Pattern.FALL not in patterns(run(away_fall(frame_size=(1024, int(low) + 2))))


# --------------------------------------------------------------------------- negatives


@pytest.mark.parametrize("fixture", [
    "scfd_nofight_crowd",   # real CCTV, 7 persons standing and walking in a bar
    "scfd_nofight_group",   # real CCTV, 6 persons
    "walking",              # 40 s of one person walking to a desk and standing
    "pair_none_constructed",  # two persons standing close, nothing else
])
def test_no_violent_pattern_on_ordinary_behaviour(fixture):
    events = run(load_fixture(fixture))
    assert not patterns(events) & VIOLENT_PATTERNS, [e.to_json() for e in events]


def test_no_fall_or_lying_on_walking_and_standing():
    for fixture in ("walking", "scfd_nofight_crowd", "scfd_nofight_group", "pair_none_constructed"):
        assert not patterns(run(load_fixture(fixture))) & {Pattern.FALL, Pattern.LYING}, fixture


def test_strangle_needs_the_grip_held():
    cfg = BehaviourConfig(strangle_min_s=2.5)   # the fixture's grip lasts 2 s
    assert Pattern.STRANGLE not in patterns(run(load_fixture("pair_strangle_constructed"), cfg))


def test_lying_needs_lying_min_s():
    cfg = BehaviourConfig(lying_min_s=10.0)     # the fixture lies for about 5 s
    events = run(load_fixture("fall_constructed"), cfg)
    assert Pattern.FALL in patterns(events) and Pattern.LYING not in patterns(events)


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("fixture", sorted(p.stem for p in FIXTURES.glob("*.npz")))
def test_same_events_at_half_the_body_scale(fixture):
    full = run(load_fixture(fixture))
    half = run(load_fixture(fixture, scale=0.5))
    key = lambda evs: [(e.pattern, round(e.start_t, 3), round(e.end_t, 3), e.track_ids) for e in evs]  # noqa: E731
    assert key(full) == key(half)
    for a, b in zip(full, half):
        assert abs(a.confidence - b.confidence) < 0.02


def test_each_episode_is_reported_once():
    events = run(load_fixture("scfd_strike"))
    counts = {p: sum(1 for e in events if e.pattern is p) for p in patterns(events)}
    assert counts and all(n == 1 for n in counts.values()), counts


def test_a_long_fight_is_reported_at_most_every_repeat_s():
    # The same real fight, replayed back to back for 60 s (fresh track ids each time).
    one = load_fixture("scfd_fight")
    span = one[-1].t + 0.1
    frames = []
    for r in range(int(60 / span)):
        frames += load_fixture("scfd_fight", dt=r * span, id_offset=100 * r)
    cfg = BehaviourConfig(repeat_s=10.0, episode_gap_s=5.0)
    fights = [e for e in run(frames, cfg) if e.pattern is Pattern.FIGHT]
    assert 1 <= len(fights) <= 60 / cfg.repeat_s + 1
    starts = [e.end_t for e in fights]
    assert all(b - a >= cfg.repeat_s - 1e-6 for a, b in itertools.pairwise(starts))
    # A later report covers the time since the previous one.
    assert all(e2.start_t == pytest.approx(e1.end_t) for e1, e2 in itertools.pairwise(fights))


def test_separate_episodes_after_a_gap():
    one = load_fixture("scfd_fight")
    frames = one + load_fixture("scfd_fight", dt=30.0, id_offset=100)
    fights = [e for e in run(frames) if e.pattern is Pattern.FIGHT]
    assert len(fights) == 2 and fights[1].start_t >= 30.0


# --------------------------------------------------------------------------- memory, input checks


def test_history_is_bounded_under_track_churn():
    base = load_fixture("walking")
    person = next(f.persons[0] for f in base if f.persons)
    # The per-track histories are what this bounds; the fight classifier's frame window (its own
    # bound) is checked in test_behaviour_fight_model.py and would only slow this loop down.
    cfg = BehaviourConfig(max_tracks=16, history_s=2.0, fight_model="")
    analyzer = BehaviourAnalyzer(cfg)
    most_tracks = most_samples = 0
    for i in range(3000):
        # Each frame: 5 persons, 3 of them brand-new ids (a crowd with a flickering detector).
        persons = tuple(dataclasses.replace(person, track_id=(i * 3 + j) if j < 3 else j - 3) for j in range(5))
        analyzer.update(TrackedFrame(i, i * 0.1, persons, (768, 432)))
        most_tracks = max(most_tracks, analyzer.tracked_histories)
        most_samples = max(most_samples, analyzer.history_samples)
    assert most_tracks <= cfg.max_tracks
    assert most_samples <= cfg.max_tracks * (cfg.history_s * 10 + 2)
    # Tracks that leave are forgotten once their history is older than history_s.
    analyzer.update(TrackedFrame(3000, 3000 * 0.1 + cfg.history_s + 0.5, (), (768, 432)))
    assert analyzer.tracked_histories == 0 and analyzer.history_samples == 0


def test_frames_must_come_in_time_order():
    frames = load_fixture("scfd_fight")
    analyzer = BehaviourAnalyzer()
    analyzer.update(frames[5])
    with pytest.raises(ValueError):
        analyzer.update(frames[2])


def test_empty_frames_and_missing_keypoints_are_harmless():
    analyzer = BehaviourAnalyzer()
    blank = TrackedPerson(1, np.array([10, 10, 50, 150], np.float32), 0.9, np.zeros((17, 3), np.float32), 0, 0)
    for i in range(30):
        assert analyzer.update(TrackedFrame(i, i * 0.1, (blank,) if i % 2 else (), (640, 360))) == []


def test_config_section_validates_like_the_others():
    cfg = BehaviourConfig()
    assert cfg.fight_window_s > 0 and 0 < cfg.fight_min_fraction <= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.strike_reach = 3.0   # type: ignore[misc]
    # Through appliance.toml's validator, once [behaviour] is wired into AppConfig.
    try:
        parse_config({"behaviour": {"lying_min_s": 0}})
    except ConfigError as exc:
        if "unknown key" in str(exc):
            pytest.skip("[behaviour] not yet wired into AppConfig")
        assert "behaviour.lying_min_s" in str(exc) and "fix:" in str(exc)
    else:
        pytest.fail("lying_min_s = 0 was accepted")
