"""Privacy masks: rasterisation, apply() semantics, and masked regions black in the clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.box.clip import build_clip, decode_frames
from appliance.box.config import Region, package_root, parse_config
from appliance.box.policy import MaskSet, PolicyGate, ZoneSet, load_profile
from appliance.contracts.types import Event, Frame, Pattern

SAMPLE = package_root() / "samples" / "demo_skeleton.mp4"
WINDOW = Region("shop-window", ((0.10, 0.15), (0.45, 0.10), (0.50, 0.70), (0.12, 0.65)))
DOOR = Region("house-door", ((0.70, 0.20), (0.90, 0.20), (0.90, 0.95), (0.70, 0.95)))


def real_frames(width: int = 480, height: int = 270, limit: int = 30) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(SAMPLE))
    images = []
    try:
        while len(images) < limit:
            ok, image = cap.read()
            if not ok:
                break
            images.append(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    assert images, f"cannot decode {SAMPLE}"
    return images


def test_mask_blacks_out_only_the_polygons():
    image = real_frames(limit=1)[0]
    masks = MaskSet.from_regions((WINDOW, DOOR), 480, 270)
    out = masks.apply(image)
    hidden = masks.masked_pixels(480, 270)
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    assert not out[hidden].any()
    np.testing.assert_array_equal(out[~hidden], image[~hidden])
    # the input is untouched
    assert image[hidden].any()
    # the area matches the polygons' area (plus the one-pixel conservative margin)
    area = 0.0
    for r in (WINDOW, DOOR):
        pts = np.asarray(r.polygon, np.float32) * np.array([480, 270], np.float32)
        area += cv2.contourArea(pts)
    assert area <= hidden.sum() <= area * 1.15


def test_mask_is_conservative_at_pixel_edges():
    """A polygon covering exactly the left quarter hides every pixel whose area it touches."""
    masks = MaskSet.from_regions((Region("q", ((0.0, 0.0), (0.25, 0.0), (0.25, 1.0), (0.0, 1.0))),))
    hidden = masks.masked_pixels(400, 100)
    assert hidden[:, :100].all()                   # the whole quarter
    assert not hidden[:, 102:].any()               # and at most a pixel or two beyond
    full = MaskSet.from_regions((Region("all", ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))),))
    assert full.masked_pixels(64, 36).all()


def test_mask_cached_per_frame_size_and_read_only():
    masks = MaskSet.from_regions((WINDOW,), 480, 270)
    first = masks.keep_mask(480, 270)
    assert masks.keep_mask(480, 270) is first
    assert not first.flags.writeable
    other = masks.keep_mask(960, 540)
    assert other.shape == (540, 960, 3)
    # same normalised polygon → same relative area at another size
    ratio_small = masks.masked_pixels(480, 270).mean()
    ratio_big = masks.masked_pixels(960, 540).mean()
    assert ratio_small == pytest.approx(ratio_big, rel=0.05)


def test_apply_inplace_and_empty_maskset():
    image = real_frames(limit=1)[0]
    masks = MaskSet.from_regions((DOOR,))
    copy = image.copy()
    assert masks.apply_inplace(copy) is copy
    np.testing.assert_array_equal(copy, masks.apply(image))
    empty = MaskSet.from_regions(())
    assert not empty and empty.apply(image) is image
    assert not empty.masked_pixels(480, 270).any()


def test_masks_from_the_appliance_config():
    cfg = parse_config({"privacy_masks": [{"name": "door", "polygon": [[0.7, 0.2], [0.9, 0.2], [0.9, 0.95]]}]})
    masks = MaskSet.from_regions(cfg.privacy_masks, 320, 180)
    assert masks.regions[0].name == "door" and masks.masked_pixels(320, 180).any()


def test_masked_regions_are_black_in_the_clip():
    """Unmasked frames in, masks passed to the builder: the decoded clip is black under the
    masks (interior eroded by a few pixels, allowing VP8 ringing at the edge), and not black
    elsewhere."""
    images = real_frames(480, 270, limit=25)
    frames = [Frame(i, i * 0.08, 1.7e9 + i * 0.08, im) for i, im in enumerate(images)]
    gate = PolicyGate(load_profile("bw-polg-44-4"), ZoneSet())
    trigger = gate.trigger_for(gate.decide(Event(Pattern.PUSH, 0.5, 1.0, (1, 2), 0.9)))
    masks = MaskSet.from_regions((WINDOW, DOOR), 480, 270)
    clip = build_clip(trigger, frames, {}, "0" * 64, masks, 12.5)

    decoded = decode_frames(clip.video)
    assert len(decoded) == len(frames)
    hidden = masks.masked_pixels(480, 270).astype(np.uint8)
    interior = cv2.erode(hidden, np.ones((9, 9), np.uint8)).astype(bool)   # 4 px inside the edge
    outside = ~cv2.dilate(hidden, np.ones((9, 9), np.uint8)).astype(bool)
    assert interior.sum() > 5000
    for image in decoded:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        assert gray[interior].max() <= 8, "masked pixels visible in the clip"
        assert gray[outside].mean() > 30    # the scene itself is still there


def test_premasked_ring_frames_stay_black_without_masks_in_the_builder():
    """The runtime masks before the ring; a clip built from those frames is black there too."""
    images = real_frames(480, 270, limit=12)
    masks = MaskSet.from_regions((WINDOW,), 480, 270)
    frames = [Frame(i, i * 0.08, 0.0, masks.apply(im)) for i, im in enumerate(images)]
    gate = PolicyGate(load_profile("bw-polg-44-4"), ZoneSet())
    trigger = gate.trigger_for(gate.decide(Event(Pattern.KICK, 0.2, 0.4, (1,), 0.9)))
    clip = build_clip(trigger, frames, {}, "0" * 64, None, 12.5)
    interior = cv2.erode(masks.masked_pixels(480, 270).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    for image in decode_frames(clip.video):
        assert cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[interior].max() <= 8


def test_masked_person_is_not_analysed():
    """Nobody inside a mask is analysed: the pose model finds no person in a frame whose
    persons are all masked, but finds them in the unmasked frame."""
    from appliance.box.pose import PoseEstimator

    image = real_frames(960, 540, limit=1)[0]
    estimator = PoseEstimator("yolo11n-pose", input_width=640, threads=2)
    found = estimator(Frame(0, 0.0, 0.0, image))
    assert len(found) >= 1
    # mask every detected person's box (normalised, with a margin)
    regions = []
    for i, (x1, y1, x2, y2) in enumerate(found.boxes):
        x1, x2 = max(0.0, x1 / 960 - 0.03), min(1.0, x2 / 960 + 0.03)
        y1, y2 = max(0.0, y1 / 540 - 0.03), min(1.0, y2 / 540 + 0.03)
        regions.append(Region(f"p{i}", ((x1, y1), (x2, y1), (x2, y2), (x1, y2))))
    masked = MaskSet.from_regions(tuple(regions), 960, 540).apply(image)
    assert len(estimator(Frame(0, 0.0, 0.0, masked))) == 0
