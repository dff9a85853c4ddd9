import numpy as np
import pytest

from appliance.box.capture import RingBuffer


def img(v: int, shape=(4, 6, 3)) -> np.ndarray:
    return np.full(shape, v, np.uint8)


def test_ring_is_bounded_and_overwrites_oldest_first():
    ring = RingBuffer(seconds=1.0, max_fps=5)      # capacity 5
    assert ring.capacity == 5
    for i in range(12):
        assert ring.push(img(i), i, t=i * 0.2, wall=1000 + i)
    assert len(ring) == 5
    frames = ring.frames()
    assert [f.index for f in frames] == [7, 8, 9, 10, 11]        # oldest first
    assert [int(f.image[0, 0, 0]) for f in frames] == [7, 8, 9, 10, 11]
    assert ring.nbytes == 5 * 4 * 6 * 3                           # preallocated once, never grows


def test_ring_returns_copies_not_views():
    ring = RingBuffer(seconds=1.0, max_fps=2)
    ring.push(img(1), 0, 0.0, 0.0)
    frame = ring.latest()
    for i in range(1, 5):
        ring.push(img(100 + i), i, i * 0.5, 0.0)
    assert int(frame.image[0, 0, 0]) == 1


def test_ring_drops_frames_faster_than_max_fps():
    ring = RingBuffer(seconds=2.0, max_fps=12.5)
    stored = [ring.push(img(i), i, i / 25.0, 0.0) for i in range(50)]   # a 25 fps camera
    assert sum(stored) == 25                                              # every other frame
    assert ring.time_span() == pytest.approx((0.0, 1.92))


def test_window_selects_by_time_and_clips_at_the_edges():
    ring = RingBuffer(seconds=1.0, max_fps=10)  # 10 frames
    for i in range(30):
        ring.push(img(i), i, i * 0.1, 0.0)
    assert ring.time_span() == pytest.approx((2.0, 2.9))
    win = ring.window(2.45, 2.75)
    assert [f.index for f in win] == [25, 26, 27]
    # A window reaching before the oldest frame gets only what the ring still holds.
    assert [f.index for f in ring.window(0.0, 2.15)] == [20, 21]
    assert ring.window(5.0, 6.0) == []


def test_frame_size_change_resets_and_clear_zeroes_pixels():
    ring = RingBuffer(seconds=1.0, max_fps=4)
    ring.push(img(9), 0, 0.0, 0.0)
    ring.push(img(9, (8, 8, 3)), 1, 1.0, 0.0)
    assert len(ring) == 1 and ring.latest().image.shape == (8, 8, 3)
    ring.clear()
    assert len(ring) == 0 and ring.latest() is None
    assert not ring._pixels.any()


def test_rejects_non_bgr_frames():
    ring = RingBuffer(seconds=1.0, max_fps=4)
    with pytest.raises(ValueError, match="uint8"):
        ring.push(np.zeros((4, 4), np.uint8), 0, 0.0, 0.0)


def test_pinned_window_is_zero_copy_read_only_and_never_overwritten():
    ring = RingBuffer(seconds=1.0, max_fps=4)      # capacity 4
    for i in range(4):
        ring.push(img(i), i, i * 0.25, 0.0)
    with ring.pinned_window(0.25, 0.75) as frames:
        assert [f.index for f in frames] == [1, 2, 3]
        assert not frames[0].image.flags.writeable
        assert np.shares_memory(frames[0].image, ring._pixels)
        # Slot 0 (frame 0) is free to overwrite; the next push would hit pinned frame 1.
        assert ring.push(img(40), 4, 1.0, 0.0)
        assert not ring.push(img(50), 5, 1.25, 0.0)
        assert ring.dropped_pinned == 1
        assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 3]
    assert ring.push(img(60), 6, 1.5, 0.0)          # unpinned: overwriting resumes
    assert [f.index for f in ring.frames()] == [2, 3, 4, 6]
