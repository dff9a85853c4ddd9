"""Finding 8 on the box: the camera password never sits in appliance.toml or its .bak (issue 12).

Before: the RTSP password was stored in appliance.toml and appliance.toml.bak (both 0644) and
the uplink process read that file.
"""

from __future__ import annotations

import os
import stat

import pytest

from appliance.box.capture.credentials import redact_passwords, split_password
from appliance.box.capture.source import camera_target
from appliance.box.config import ConfigError, load_config, parse_config
from appliance.box.provision.enrolment import init_device
from appliance.common.errors import InputError

URL = "rtsp://viewer:s3cr%40t!@192.0.2.10:554/stream1"


def test_init_moves_the_camera_password_into_a_private_file(tmp_path):
    cfg_path = tmp_path / "appliance.toml"
    cfg_path.write_text('[device]\nid = "old"\n[camera]\nsource = "rtsp://viewer:old-secret@192.0.2.10/s"\n')
    init_device(cfg_path, device_id="cam-1", state_dir=str(tmp_path / "state"), camera=URL)
    text = cfg_path.read_text()
    assert "s3cr" not in text and 'source = "rtsp://viewer@192.0.2.10:554/stream1"' in text
    bak = cfg_path.with_name("appliance.toml.bak").read_text()
    assert "old-secret" not in bak and "rtsp://viewer@192.0.2.10/s" in bak   # an old config's copy
    cfg = load_config(cfg_path)
    secret = tmp_path / "state" / "pixel" / "camera-password"
    assert cfg.camera.password_file == str(secret)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == "s3cr@t!\n"
    # only the pixel process puts it back, when it opens the stream (percent-encoded again)
    assert camera_target(cfg.camera) == "rtsp://viewer:s3cr%40t%21@192.0.2.10:554/stream1"
    os.chmod(secret, 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        camera_target(cfg.camera)


def test_a_config_with_a_password_in_the_url_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="camera.source holds a password.*provision init"):
        parse_config({"camera": {"source": URL}})
    parse_config({"camera": {"source": "rtsp://viewer@192.0.2.10/stream1"}})   # user only: fine
    parse_config({"camera": {"source": "rtsp://192.0.2.10:554/stream1"}})        # a port is not a password


def test_split_and_redact():
    assert split_password(URL) == ("rtsp://viewer@192.0.2.10:554/stream1", "s3cr@t!")
    assert split_password("/dev/video0") == ("/dev/video0", None)
    assert redact_passwords('source = "rtsp://u:p@h/s"\nx = "http://a:b@c"') == 'source = "rtsp://u@h/s"\nx = "http://a@c"'
