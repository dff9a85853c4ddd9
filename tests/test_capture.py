import threading
import time

import pytest

from appliance.box.capture import FileSource, LiveSource, classify_source, open_source, redact
from appliance.box.config import default_config
from appliance.common.errors import InputError
from tests.conftest import DEMO_CLIP, WALK_CLIP


def test_file_source_yields_downscaled_frames_with_presentation_times():
    src = FileSource(str(DEMO_CLIP), max_width=960)
    frames = list(src.frames())
    assert len(frames) == 72
    index, t, wall, image = frames[10]
    assert index == 10 and image.shape == (540, 960, 3)
    assert t == pytest.approx(10 / src.fps)
    ts = [f[1] for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:]))      # monotonic


def test_file_source_stops_when_asked():
    stop = threading.Event()
    src = FileSource(str(WALK_CLIP), max_width=320, loop=True)
    n = 0
    for _ in src.frames(stop):
        n += 1
        if n == 5:
            stop.set()
    assert n == 5


@pytest.mark.parametrize("bad, message", [
    ("/nonexistent/clip.mp4", "no such file"),
    ("/etc", "not a readable file"),
])
def test_unreadable_inputs_give_one_line_errors(bad, message):
    with pytest.raises(InputError, match=message):
        FileSource(bad)


def test_garbage_file_is_not_a_video(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(InputError, match="decod|no decodable"):
        list(FileSource(str(junk)).frames())


def test_source_kinds_and_password_redaction():
    assert classify_source("rtsp://user:pw@10.0.0.5/stream") == "stream"
    assert classify_source("/dev/video0") == "device"
    assert classify_source("0") == "device"
    assert classify_source("clip.mp4") == "file"
    assert redact("rtsp://user:secret@cam/stream") == "rtsp://***@cam/stream"
    cfg = default_config(str(DEMO_CLIP))
    assert isinstance(open_source(cfg.camera, 960), FileSource)


def test_live_source_reconnects_with_backoff_and_never_raises():
    # A closed port on loopback: every open fails; the source must back off, not crash.
    src = LiveSource("http://127.0.0.1:9/none.mjpg", reconnect_initial_s=0.02, reconnect_max_s=0.08,
                     read_timeout_s=0.5)
    stop = threading.Event()
    got = []
    th = threading.Thread(target=lambda: got.extend(src.frames(stop)), daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while src.health.reconnects < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join(timeout=20)
    assert not th.is_alive()
    assert got == []
    assert src.health.reconnects >= 4 and not src.health.connected
    assert "cannot open" in src.health.last_error
