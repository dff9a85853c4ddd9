"""Bystander pixelation (appliance/box/clip/bystanders.py, docs/clip.md): the redacted rendition.

On real footage with the real pose model and tracker: a bystander's pixels in the redacted
rendition lose their detail (few high-frequency edges left, far from the full rendition), the
event's persons are untouched wherever no bystander overlaps them, both renditions carry their own decoded-frame hashes, and the
involved persons' boxes come out for the console. Plus the timing rules (union across a gap,
hold across missed detections, untracked detections) on hand-made boxes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.box.clip import build_clip, decode_frame_hashes, decode_frames
from appliance.box.clip.bystanders import SeenPersons, dilate, pixelate, plan_redaction
from appliance.box.config import AppConfig, RedactionConfig, Region, package_root
from appliance.box.policy.masks import MaskSet
from appliance.box.runtime import Pipeline, analyse_video
from appliance.contracts.types import Decision, Event, Frame, Pattern, ProfileRef, Trigger

FIGHT = package_root() / "samples" / "scfd_fight_fi023.mp4"   # CC BY 4.0 (samples/README), 4-5 persons
SETTINGS = RedactionConfig()


def _frames(path):
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    try:
        for i in range(10_000):
            ok, image = cap.read()
            if not ok:
                return
            yield i, i / fps, 1_767_225_600.0 + i / fps, image
    finally:
        cap.release()


def _trigger(track_ids: tuple[int, ...], start: float, end: float) -> Trigger:
    event = Event(Pattern.STRIKE, start, end, track_ids, 0.9, {"test": 1.0})
    return Trigger(Decision(event, True, ProfileRef("bw-polg-44-4", "1", "ab" * 32), "patterns.strike", "test"),
                   start, end)


def _detail(image: np.ndarray) -> float:
    """Fraction of pixels whose grey level differs from the right neighbour's by more than 4:
    detail (edges, texture, faces). A mosaic keeps only its block edges."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.int16)
    return float((np.abs(np.diff(grey, axis=1)) > 4).mean())


@pytest.fixture(scope="module")
def fight_run(pose_estimator):
    """The real pipeline on the fight clip, remembering every frame and who it saw."""
    cfg = AppConfig()
    pipeline = Pipeline(cfg, estimator=pose_estimator, redaction=cfg.redaction)
    ring: list[Frame] = []

    def keep(masked):
        ring.append(Frame(len(ring), len(ring) / 25.0, 1_767_225_600.0 + len(ring) / 25.0, masked))

    analyse_video(pipeline, _frames(FIGHT), on_ingest=keep)
    return pipeline, ring


def test_privacy_masks_stay_black_in_the_redacted_rendition_too(fight_run):
    # A mosaic block that straddles a mask's edge averages the visible pixels beside it; painted
    # back, that colour would cover part of the masked area. The mask is burned in after the mosaic.
    pipeline, ring = fight_run
    band = Region("top-band", ((0.0, 0.0), (1.0, 0.0), (1.0, 0.35), (0.0, 0.35)))
    masks = MaskSet.from_regions((band,))
    masked_ring = [Frame(f.index, f.t, f.wall, masks.apply(f.image)) for f in ring]
    clip = build_clip(_trigger((1,), ring[0].t, ring[-1].t), masked_ring, {}, "cd" * 32, masks, 25.0,
                      redaction=SETTINGS, seen=pipeline.seen_history)
    assert clip.redacted is not None and clip.redacted.pixelated_tracks
    inside = masks.masked_pixels(clip.width, clip.height).astype(bool)
    inside = cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)   # VP8 bleed at the edge
    for name, video in (("full", clip.video), ("redacted", clip.redacted.video)):
        for index, image in enumerate(decode_frames(video)):
            assert image[inside].max() <= 12, (name, index, int(image[inside].max()))


def test_bystanders_are_pixelated_and_involved_persons_untouched_on_real_video(fight_run):
    pipeline, ring = fight_run
    seen = pipeline.seen_history
    counts: dict[int, int] = {}
    for s in seen:
        for tid in s.tracked:
            counts[tid] = counts.get(tid, 0) + 1
    assert len(counts) >= 3, counts           # the clip shows several persons
    involved, bystander = (1,), 2              # the bearded man on the left; the man in the middle
    assert counts[1] >= 10 and counts[2] >= 5
    trigger = _trigger(involved, ring[0].t, ring[-1].t)
    clip = build_clip(trigger, ring, {}, "cd" * 32, None, 25.0, redaction=SETTINGS, seen=seen)

    assert clip.redacted is not None and "2" in clip.redacted.pixelated_tracks
    assert "1" not in clip.redacted.pixelated_tracks
    assert decode_frame_hashes(clip.video) == list(clip.frame_sha256)              # per rendition
    assert decode_frame_hashes(clip.redacted.video) == list(clip.redacted.frame_sha256)
    assert set(clip.frame_sha256).isdisjoint(clip.redacted.frame_sha256)
    full, red = decode_frames(clip.video), decode_frames(clip.redacted.video)
    assert len(full) == len(red) == len(ring)
    assert set(clip.involved_boxes) == {"1"} and len(clip.involved_boxes["1"]) == len(ring)

    plan = plan_redaction(clip.frame_times, seen, involved, SETTINGS, (clip.width, clip.height))
    noise = np.random.default_rng(0).integers(0, 255, (clip.height, clip.width, 3), np.uint8)
    by_t = {round(s.t, 3): s for s in seen}
    checked = 0
    for index, frame in enumerate(ring):
        s = by_t.get(round(frame.t, 3))
        if s is None or bystander not in s.tracked or involved[0] not in s.tracked:
            continue
        # The bystander's head (from the face keypoints), also where it lies inside the involved
        # person's box: pixelated (detail gone, far from the full rendition).
        hx1, hy1, hx2, hy2 = (int(v) for v in s.tracked[bystander][1])
        head_full, head_red = full[index][hy1:hy2, hx1:hx2], red[index][hy1:hy2, hx1:hx2]
        assert head_full.size > 400
        assert _detail(head_red) < 0.4 * _detail(head_full), index
        assert np.abs(head_red.astype(int) - head_full.astype(int)).mean() > 15, index
        # Their body outside the involved person's box: pixelated as well.
        bx1, by1, bx2, by2 = (int(v) for v in s.tracked[bystander][0])
        ix2 = int(s.tracked[involved[0]][0][2])
        bx1 = max(bx1, ix2 + 1)
        body_full, body_red = full[index][by1:by2, bx1:bx2], red[index][by1:by2, bx1:bx2]
        assert _detail(body_red) < 0.4 * _detail(body_full), index
        assert np.median(np.abs(cv2.Laplacian(cv2.cvtColor(body_red, cv2.COLOR_BGR2GRAY), cv2.CV_32F))) <= 1
        # The involved person, wherever no bystander's head reaches: the same pixels in both
        # renditions, VP8 noise only. Changed pixels: what pixelate changes on a noise image.
        covered = (pixelate(noise, *plan.frame(index), SETTINGS) != noise).any(axis=2)
        covered = cv2.dilate(covered.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)  # VP8 bleed
        x, y, w, h = clip.involved_boxes["1"][index][1:]
        inside = np.zeros_like(covered)
        inside[y:y + h, x:x + w] = True
        free = inside & ~covered
        assert free.sum() > 0.25 * w * h, index         # a good part of the involved person stays visible
        diff = np.abs(red[index].astype(int) - full[index].astype(int)).max(axis=2)
        assert diff[free].mean() < 3.0, index
        checked += 1
    assert checked >= 4


def test_the_real_pipeline_seals_what_it_saw(fight_run):
    """The clip the pipeline itself builds for its own trigger: the event's tracks outlined, the
    others pixelated, nothing for the event's persons burned in."""
    pipeline, _ = fight_run
    cfg = AppConfig()
    fresh = Pipeline(cfg, estimator=pipeline.pose, redaction=cfg.redaction)
    clips = []
    analyse_video(fresh, _frames(FIGHT), on_clip=clips.append)
    assert clips, "the fight sample must trigger (the demo relies on it)"
    clip = clips[0]
    involved = {str(t) for t in clip.trigger.event.track_ids}
    assert set(clip.involved_boxes) <= involved and clip.involved_boxes
    assert clip.redacted is not None and clip.redacted.pixelated_tracks
    assert not involved & set(clip.redacted.pixelated_tracks)
    for boxes in clip.involved_boxes.values():
        assert all(len(b) == 5 and all(isinstance(v, int) for v in b) for b in boxes)
        assert all(0 <= b[0] < len(clip.frame_times) and b[3] > 0 and b[4] > 0 for b in boxes)


# -- timing rules on hand-made boxes ------------------------------------------------------------


def _pair(box) -> np.ndarray:
    """(body box, head box = its top quarter) as SeenPersons holds them."""
    x1, y1, x2, y2 = box
    return np.float32([box, [x1, y1, x2, y1 + (y2 - y1) / 4]])


def _seen(t: float, tracked: dict[int, list[float]], untracked=()) -> SeenPersons:
    return SeenPersons(t, {k: _pair(v) for k, v in tracked.items()},
                       np.float32([_pair(b) for b in untracked]).reshape(-1, 2, 4))


def test_a_missed_detection_does_not_unmask_a_bystander():
    settings = RedactionConfig(margin=0.0, hold_s=0.5)
    seen = [_seen(0.0, {1: [10, 10, 20, 40], 2: [100, 10, 120, 60]}),
            _seen(0.2, {1: [10, 10, 20, 40]}),                        # bystander 2 missed here
            _seen(0.4, {1: [10, 10, 20, 40], 2: [140, 10, 160, 60]})]
    plan = plan_redaction([0.0, 0.1, 0.2, 0.3, 0.4, 0.85, 1.0], seen, [1], settings, (320, 180))
    # between two sightings: the union of both bodies (the path walked), also at 0.2 where it was
    # missed; the head at its interpolated place
    for i in (1, 2, 3):
        (box,) = plan.body[i]
        assert box[0] <= 100 and box[2] >= 160
    (head,) = plan.heads[2]
    assert head[0] == pytest.approx(120 - 2 - 0.3 * 20) and head[2] == pytest.approx(140 + 2 + 0.3 * 20)
    assert plan.body[5].shape == (1, 4) and plan.body[5][0][0] <= 140    # held 0.45 s after the last sighting
    assert plan.body[6].shape == (0, 4) and plan.heads[6].shape == (0, 4)  # 0.6 s: beyond hold_s
    assert all(np.array_equal(k, [[10, 10, 20, 40]]) for k in plan.keep[:6])
    assert plan.pixelated_tracks == ("2",)
    assert [b[0] for b in plan.involved["1"]] == [0, 1, 2, 3, 4, 5]        # outlines within hold_s


def test_untracked_detections_are_covered_unless_they_are_the_involved_person():
    settings = RedactionConfig(margin=0.0, hold_s=0.3)
    seen = [_seen(0.0, {1: [10, 10, 50, 90]}, untracked=[[12, 12, 48, 88], [200, 10, 240, 90]])]
    plan = plan_redaction([0.0, 0.2, 0.5], seen, [1], settings, (320, 180))
    assert plan.body[0].shape == (1, 4) and plan.body[0][0][0] == pytest.approx(198)  # the stranger (+2 px)
    assert plan.body[1].shape == (1, 4) and plan.body[2].shape == (0, 4)
    assert plan.untracked_boxes == 2


def test_pixelate_covers_bodies_outside_the_event_persons_and_heads_everywhere():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (120, 160, 3), np.uint8)
    settings = RedactionConfig(block_px=8, blocks_per_height=4)
    none = np.zeros((0, 4), np.float32)
    out = pixelate(image, np.float32([[40, 20, 120, 100]]), none, none, settings)
    assert np.array_equal(out[:, :40], image[:, :40]) and np.array_equal(out[100:], image[100:])
    assert np.array_equal(out[:, 120:], image[:, 120:]) and np.array_equal(out[:20], image[:20])
    blocks = out[20:100, 40:120]            # block = max(8, 80 / 4) = 20 px, on the frame's grid
    assert all(len(np.unique(blocks[y:y + 20, x:x + 20].reshape(-1, 3), axis=0)) == 1
               for y in range(0, 80, 20) for x in range(0, 80, 20))
    assert np.abs(blocks[0, 0].astype(float) - image[20:40, 40:60].reshape(-1, 3).mean(0)).max() <= 1
    # An involved person's box stays as it was, except where a bystander's head is.
    keep, head = np.float32([[100, 20, 140, 100]]), np.float32([[104, 24, 120, 40]])
    out = pixelate(image, np.float32([[40, 20, 120, 100]]), keep, head, settings)
    assert np.array_equal(out[40:100, 100:140], image[40:100, 100:140])
    assert not np.array_equal(out[24:40, 104:120], image[24:40, 104:120])
    assert not np.array_equal(out[20:100, 40:100], image[20:100, 40:100])
    assert np.array_equal(dilate(np.float32([10, 10, 20, 30]), 0.5, (25, 100)), np.float32([3, -0.0, 25, 42]))


def test_head_box_from_face_keypoints_or_the_top_of_the_body():
    from appliance.box.clip.bystanders import head_box

    box = np.float32([100, 50, 160, 250])
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:5] = [[130, 70, 0.9], [126, 66, 0.9], [134, 66, 0.9], [122, 68, 0.8], [138, 68, 0.8]]
    head = head_box(box, keypoints)
    assert head[0] <= 122 and head[2] >= 138 and head[1] <= 66 and head[3] >= 70 and head[3] < 100
    keypoints[:5, 2] = 0.1                                  # seen from behind: no confident face point
    assert np.array_equal(head_box(box, keypoints), np.float32([100, 50, 160, 100]))


def test_an_empty_frame_is_remembered_with_nobody_and_only_when_sealing_v2(pose_estimator):
    cfg = AppConfig()
    for redaction, expected in ((cfg.redaction, 1), (None, 0)):
        pipeline = Pipeline(cfg, estimator=pose_estimator, redaction=redaction)
        masked = pipeline.ingest(0, 0.0, 1_767_225_600.0, np.zeros((180, 320, 3), np.uint8))
        pipeline.analyse(Frame(0, 0.0, 1_767_225_600.0, masked))
        assert len(pipeline.seen_history) == expected
        if expected:
            (seen,) = pipeline.seen_history
            assert seen.tracked == {} and seen.untracked.shape == (0, 2, 4)
