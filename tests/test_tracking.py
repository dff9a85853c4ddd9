"""Tracker tests on real pose detections (tests/fixtures/tracking/*.npz, extracted by
scripts/extract_tracking_fixtures.py from the bundled sample clips) and on real inference."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.box.config import TrackingConfig, default_config
from appliance.box.tracking import Tracker, linear_assignment
from appliance.box.tracking.similarity import iou_matrix
from appliance.contracts.types import Detections, TrackedFrame

FIXTURES = Path(__file__).parent / "fixtures" / "tracking"
ROOT = Path(__file__).resolve().parent.parent


class Clip:
    """Per-frame real detections from a fixture."""

    def __init__(self, name: str):
        data = np.load(FIXTURES / f"{name}.npz")
        self.frame_index = data["frame_index"]
        self.t = data["t"]
        self.frame_size = tuple(int(v) for v in data["frame_size"])
        offsets = np.concatenate([[0], np.cumsum(data["counts"])])
        self.frames = [
            (data["boxes"][a:b], data["scores"][a:b], data["keypoints"][a:b])
            for a, b in itertools.pairwise(offsets)
        ]

    def __len__(self) -> int:
        return len(self.frames)

    def detections(self, i: int, keep: np.ndarray | None = None) -> Detections:
        boxes, scores, kpts = self.frames[i]
        if keep is not None:
            boxes, scores, kpts = boxes[keep], scores[keep], kpts[keep]
        return Detections(int(self.frame_index[i]), float(self.t[i]), boxes.copy(), scores.copy(), kpts.copy())


@pytest.fixture(scope="module")
def demo() -> Clip:
    return Clip("demo_skeleton")


@pytest.fixture(scope="module")
def one_by_one() -> Clip:
    return Clip("one_by_one")


def _is_left_man(boxes: np.ndarray) -> np.ndarray:
    """Ground truth for demo_skeleton: the left man's box always starts left of x = 780 px,
    the right man's right of it (checked on all 72 frames of the fixture)."""
    return boxes[:, 0] < 780


def _owner_changes(owners: dict[int, list[str]]) -> int:
    return sum(sum(a != b for a, b in itertools.pairwise(seq)) for seq in owners.values())


# ---------------------------------------------------------------------------------------
# Linear assignment


def _brute_force(cost: np.ndarray, limit: float) -> float:
    """Least total cost over all partial matchings; an unmatched row or column costs limit/2."""
    n, m = cost.shape
    best = (n + m) * limit / 2
    for k in range(1, min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                pairs = cost[list(rows), list(cols)]
                if np.all(pairs <= limit):
                    best = min(best, pairs.sum() + (n + m - 2 * k) * limit / 2)
    return best


def test_assignment_is_optimal_against_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n, m = rng.integers(1, 5), rng.integers(1, 5)
        cost = rng.random((n, m))
        cost[rng.random((n, m)) < 0.3] = np.inf
        limit = float(rng.uniform(0.3, 1.0))
        matches, free_rows, free_cols = linear_assignment(cost, limit)
        assert len(set(matches[:, 0])) == len(matches) and len(set(matches[:, 1])) == len(matches)
        assert sorted([*matches[:, 0], *free_rows]) == list(range(n))
        assert sorted([*matches[:, 1], *free_cols]) == list(range(m))
        assert np.all(cost[matches[:, 0], matches[:, 1]] <= limit)
        total = cost[matches[:, 0], matches[:, 1]].sum() + (len(free_rows) + len(free_cols)) * limit / 2
        assert total == pytest.approx(_brute_force(cost, limit))


def test_assignment_beats_greedy_in_a_crowd():
    # Greedy takes the best pair (0, 0) first and leaves row 1 with nothing it may take;
    # the optimum matches both rows.
    cost = np.array([[0.10, 0.30], [0.20, 0.95]])
    matches, free_rows, free_cols = linear_assignment(cost, 0.8)
    assert matches.tolist() == [[0, 1], [1, 0]]
    assert free_rows.size == 0 and free_cols.size == 0


def test_assignment_of_larger_blocks_matches_every_row():
    rng = np.random.default_rng(3)
    cost = rng.random((40, 60)) * 0.5
    matches, free_rows, _ = linear_assignment(cost, 0.8)
    assert len(matches) == 40 and free_rows.size == 0


# ---------------------------------------------------------------------------------------
# Real detections


def test_two_men_keep_their_ids_through_the_push(demo):
    tracker = Tracker(frame_size=demo.frame_size)
    owners: dict[int, list[str]] = {}
    for i in range(len(demo)):
        dets = demo.detections(i)
        out = tracker.update(dets)
        assert isinstance(out, TrackedFrame) and out.frame_size == demo.frame_size
        assert out.frame_index == dets.frame_index and out.t == dets.t
        assert len(out.persons) == 2, f"frame {i}: {len(out.persons)} persons"
        for p in out.persons:
            assert p.lost_frames == 0 and p.age == i
            owners.setdefault(p.track_id, []).append("L" if _is_left_man(p.box[None])[0] else "R")
    assert sorted(owners) == [1, 2]
    assert _owner_changes(owners) == 0


def test_one_person_at_a_time_gets_one_id_per_visit(one_by_one):
    tracker = Tracker(frame_size=one_by_one.frame_size)
    ids_by_frame = [tuple(p.track_id for p in tracker.update(one_by_one.detections(i)).persons)
                    for i in range(len(one_by_one))]
    # Three visits in the first 60 s; the walker is alone, so every emitted frame has one id.
    assert all(len(ids) <= 1 for ids in ids_by_frame)
    ids_in_order = [ids[0] for ids in ids_by_frame if ids]
    runs = [k for k, _ in itertools.groupby(ids_in_order)]
    assert runs == [1, 2, 3]
    assert tracker.ids_issued == 3
    # Visits are separated by seconds without anyone; no id may span two of them.
    first_seen = {i: ids_by_frame.index((i,)) for i in runs}
    assert one_by_one.t[first_seen[2]] - one_by_one.t[first_seen[1]] > 10


def _run_with_gap(clip: Clip, frames: range, gap: range, drop):
    tracker = Tracker(TrackingConfig(), frame_size=clip.frame_size)
    seen: list[tuple[int, tuple[int, ...]]] = []
    for i in frames:
        boxes = clip.frames[i][0]
        keep = ~drop(boxes) if i in gap else None
        out = tracker.update(clip.detections(i, keep))
        seen.append((i, tuple(sorted((p.track_id, bool(drop(p.box[None])[0])) for p in out.persons))))
    return tracker, seen


def test_id_survives_a_short_gap_of_a_walking_person(one_by_one):
    # Frames 425-449: the person turns and walks out at 150-360 px/s; drop 4 frames (0.4 s).
    gap = range(436, 440)
    assert one_by_one.t[gap[-1]] - one_by_one.t[gap[0] - 1] == pytest.approx(0.4)
    def everyone(boxes):
        return np.ones(len(boxes), bool)

    _, seen = _run_with_gap(one_by_one, range(400, 449), gap, everyone)
    ids = {tid for _, persons in seen for tid, _ in persons}
    assert ids == {1}
    assert [i for i, persons in seen if not persons] == list(gap)
    assert seen[-1][1] == ((1, True),)


def test_id_survives_a_short_gap_next_to_another_person(demo):
    # At ~9.3 fps (every 3rd frame) the left man vanishes for 4 analysed frames (0.43 s)
    # while the right man stays; both come back with their own ids.
    frames = range(0, 72, 3)
    gap = range(30, 42)          # source frames 30, 33, 36, 39 of the range above
    tracker, seen = _run_with_gap(demo, frames, gap, _is_left_man)
    before = {left: tid for tid, left in seen[0][1]}
    assert len(before) == 2
    for i, persons in seen:
        expected = [(before[False], False)] if i in gap else sorted([(before[False], False), (before[True], True)])
        assert list(persons) == sorted(expected), f"frame {i}"
    assert tracker.ids_issued == 2


def test_lost_track_is_dropped_after_max_lost_s(demo):
    cfg = TrackingConfig(max_lost_s=0.5)
    # The left man is absent for 0.46 s (kept) and then for 0.57 s (dropped: new id).
    frames = range(0, 72, 1)
    short_gap = range(10, 23)    # last seen at 9, back at 23: 14 / 28.05 fps = 0.499 s
    long_gap = range(40, 56)     # last seen at 39, back at 56: 0.606 s
    tracker = Tracker(cfg, frame_size=demo.frame_size)
    left_ids, live = [], []
    for i in frames:
        keep = ~_is_left_man(demo.frames[i][0]) if i in short_gap or i in long_gap else None
        out = tracker.update(demo.detections(i, keep))
        left_ids += [p.track_id for p in out.persons if _is_left_man(p.box[None])[0]]
        live.append(tracker.live_tracks)
    assert demo.t[23] - demo.t[9] <= cfg.max_lost_s < demo.t[56] - demo.t[39]
    first, *rest = [k for k, _ in itertools.groupby(left_ids)]
    assert rest == [3], "a new id after the long gap, the old one after the short gap"
    assert first in (1, 2)
    # The lost track left memory once its time was up (before the left man came back).
    expired_at = next(i for i in long_gap if demo.t[i] - demo.t[39] > cfg.max_lost_s)
    assert live[expired_at] == 1 and live[expired_at - 1] == 2


def _grapple(clip: Clip, cfg: TrackingConfig, seed: int) -> tuple[int, int]:
    """Moves the right man's real skeleton onto the left man's (same box centre ± 20 px of
    jitter, random detection order) at the analysis rate: boxes overlap with IoU 0.4-0.8.
    Returns (identity changes, ids issued)."""
    rng = np.random.default_rng(seed)
    tracker = Tracker(cfg, frame_size=clip.frame_size)
    owners: dict[int, list[str]] = {}
    overlaps = []
    for i in range(0, len(clip), 3):
        boxes, scores, kpts = (a.astype(np.float32, copy=True) for a in clip.frames[i])
        right = ~_is_left_man(boxes)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        dx, dy = centre[~right][0] - centre[right][0] + rng.uniform(-20, 20, 2)
        boxes[right, 0::2] += dx
        boxes[right, 1::2] += dy
        kpts[right, :, 0] += dx
        kpts[right, :, 1] += dy
        order = rng.permutation(len(boxes))
        boxes, scores, kpts, right = boxes[order], scores[order], kpts[order], right[order]
        overlaps.append(iou_matrix(boxes[:1], boxes[1:])[0, 0])
        out = tracker.update(Detections(i, float(clip.t[i]), boxes, scores, kpts))
        assert len(out.persons) == 2
        for p in out.persons:
            who = "R" if np.array_equal(p.box, boxes[right][0]) else "L"
            owners.setdefault(p.track_id, []).append(who)
    assert min(overlaps) > 0.4 and np.mean(overlaps) > 0.6
    return _owner_changes(owners), tracker.ids_issued


def test_grappling_persons_keep_distinct_ids(demo):
    for seed in range(6):
        assert _grapple(demo, TrackingConfig(), seed) == (0, 2), f"seed {seed}"


def test_grapple_scene_is_hard_for_boxes_alone(demo):
    # Without the keypoint cue the same scenes swap identities: the cue is what keeps them.
    boxes_only = TrackingConfig(keypoint_weight=0.0)
    assert sum(_grapple(demo, boxes_only, seed)[0] for seed in range(6)) > 0


def test_motion_model_uses_real_time_steps(one_by_one):
    # A real standing skeleton slides right at 400 px/s, analysed at 10 fps, then the analysis
    # stalls for 0.5 s (slow inference): the box has moved 200 px (more than its own width),
    # so only a prediction over the real 0.5 s still overlaps it.
    boxes, scores, kpts = one_by_one.frames[300]
    assert len(boxes) == 1 and boxes[0, 2] - boxes[0, 0] < 200
    tracker = Tracker()
    times = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 1.1]
    ids = []
    for n, t in enumerate(times):
        shift = np.float32(400 * t)
        moved_boxes = boxes + np.array([shift, 0, shift, 0], np.float32)
        moved_kpts = kpts.copy()
        moved_kpts[:, :, 0] += shift
        out = tracker.update(Detections(n, t, moved_boxes, scores.copy(), moved_kpts))
        ids.append([p.track_id for p in out.persons])
    assert ids == [[1]] * len(times)


def test_ids_are_never_reused_and_memory_stays_bounded_under_churn():
    cfg = TrackingConfig(max_tracks=25, max_lost_s=0.3)
    tracker = Tracker(cfg, frame_size=(1280, 720))
    rng = np.random.default_rng(11)
    walkers = rng.uniform([0, 0], [1200, 600], (8, 2))      # a few persons moving steadily
    velocity = rng.uniform(-80, 80, (8, 2))
    last_seen: dict[int, int] = {}
    max_live = 0
    for frame in range(2000):
        t = frame * 0.1
        walkers = (walkers + velocity * 0.1) % [1200, 600]
        clutter = rng.uniform([0, 0], [1200, 600], (rng.integers(0, 40), 2))
        centres = np.vstack([walkers, clutter])
        size = rng.uniform([30, 60], [90, 200], (len(centres), 2))
        boxes = np.hstack([centres - size / 2, centres + size / 2]).astype(np.float32)
        scores = rng.uniform(0.1, 1.0, len(centres)).astype(np.float32)
        kpts = np.zeros((len(centres), 17, 3), np.float32)
        kpts[:, :, :2] = centres[:, None, :] + rng.normal(0, 10, (len(centres), 17, 2))
        kpts[:, :, 2] = rng.uniform(0, 1, (len(centres), 17))
        out = tracker.update(Detections(frame, t, boxes, scores, kpts))
        max_live = max(max_live, tracker.live_tracks)
        assert tracker.live_tracks <= cfg.max_tracks
        ids = [p.track_id for p in out.persons]
        assert len(ids) == len(set(ids))
        for tid in ids:
            # an id that was absent longer than max_lost_s has been dropped: it must not return
            if tid in last_seen:
                assert t - last_seen[tid] * 0.1 <= cfg.max_lost_s + 1e-9, f"id {tid} reused"
            last_seen[tid] = frame
    assert max_live == cfg.max_tracks          # the bound was reached, and held
    assert tracker.ids_issued > 1000            # churn really happened
    assert max(last_seen) == tracker.ids_issued


def test_reset_forgets_tracks_but_keeps_counting_ids(demo):
    tracker = Tracker()
    for i in range(3):
        tracker.update(demo.detections(i))
    tracker.reset()
    assert tracker.live_tracks == 0
    out = tracker.update(demo.detections(3))
    assert sorted(p.track_id for p in out.persons) == [3, 4]


def test_a_new_person_needs_two_hits_except_on_the_first_frame(demo):
    tracker = Tracker()
    left_only = _is_left_man(demo.frames[0][0])
    assert [p.track_id for p in tracker.update(demo.detections(0, left_only)).persons] == [1]
    assert [p.track_id for p in tracker.update(demo.detections(1)).persons] == [1]     # right: tentative
    assert [p.track_id for p in tracker.update(demo.detections(2)).persons] == [1, 2]  # right confirmed
    # A single detection that never repeats gets no id.
    tracker.update(Detections(3, demo.t[3], np.array([[10, 10, 60, 150]], np.float32),
                              np.array([0.9], np.float32), np.zeros((1, 17, 3), np.float32)))
    assert [p.track_id for p in tracker.update(demo.detections(4)).persons] == [1, 2]
    assert tracker.ids_issued == 2


def test_low_score_detections_extend_tracks_but_never_start_them(demo):
    tracker = Tracker()
    tracker.update(demo.detections(0))
    for i in range(1, 6):
        dets = demo.detections(i)
        weak = Detections(dets.frame_index, dets.t, dets.boxes, np.full(2, 0.3, np.float32), dets.keypoints)
        assert sorted(p.track_id for p in tracker.update(weak).persons) == [1, 2]
    fresh = Tracker()
    for i in range(5):
        dets = demo.detections(i)
        weak = Detections(dets.frame_index, dets.t, dets.boxes, np.full(2, 0.3, np.float32), dets.keypoints)
        assert fresh.update(weak).persons == ()


def test_empty_degenerate_and_backwards_input_is_handled(demo):
    tracker = Tracker()
    assert tracker.update(Detections.empty(0, 0.0)).persons == ()
    # not the stream's first frame any more: two hits before an id
    assert tracker.update(demo.detections(0)).persons == ()
    assert sorted(p.track_id for p in tracker.update(demo.detections(1)).persons) == [1, 2]
    # zero-area and NaN boxes are ignored; slight backward jitter of the clock is no motion
    bad = Detections(2, float(demo.t[1]) - 0.01, np.array([[5, 5, 5, 50], [np.nan, 0, 10, 10]], np.float32),
                     np.array([0.9, 0.9], np.float32), np.zeros((2, 17, 3), np.float32))
    assert tracker.update(bad).persons == ()
    assert sorted(p.track_id for p in tracker.update(demo.detections(2)).persons) == [1, 2]
    # a clock jumping far back (a looped file) starts a new stream: new ids at once
    restart = demo.detections(0)
    assert restart.t < demo.t[2] - TrackingConfig().max_lost_s or restart.t == 0.0
    looped = Detections(0, -10.0, restart.boxes, restart.scores, restart.keypoints)
    assert sorted(p.track_id for p in tracker.update(looped).persons) == [3, 4]


def test_config_fields_validate():
    cfg = default_config(tracking={"keypoint_weight": 0.0, "confirm_hits": 3, "low_match_iou": 0.4})
    assert cfg.tracking.keypoint_weight == 0.0 and cfg.tracking.confirm_hits == 3
    with pytest.raises(ValueError, match="tracking.keypoint_weight"):
        default_config(tracking={"keypoint_weight": 1.5})
    with pytest.raises(ValueError, match="low_score"):
        Tracker(replace(TrackingConfig(), low_score=0.6, high_score=0.5))


# ---------------------------------------------------------------------------------------
# Real inference


def test_real_inference_on_demo_clip_gives_two_stable_ids():
    cv2 = pytest.importorskip("cv2")
    from appliance.box.pose import PoseEstimator

    est = PoseEstimator()
    cap = cv2.VideoCapture(str(ROOT / "samples" / "demo_skeleton.mp4"))
    assert cap.isOpened()
    fps = cap.get(cv2.CAP_PROP_FPS)
    tracker = Tracker(frame_size=(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))))
    owners: dict[int, list[str]] = {}
    try:
        for n in range(10):
            index = 20 + 3 * n                   # ~9.3 fps across the push (frames 20-47)
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, image = cap.read()
            assert ok
            raw = est(image)
            dets = Detections(index, index / fps, raw.boxes, raw.scores, raw.keypoints)
            out = tracker.update(dets)
            assert len(out.persons) == 2
            for p in out.persons:
                owners.setdefault(p.track_id, []).append("L" if _is_left_man(p.box[None])[0] else "R")
    finally:
        cap.release()
    assert sorted(owners) == [1, 2]
    assert _owner_changes(owners) == 0
    assert {seq[0] for seq in owners.values()} == {"L", "R"}
