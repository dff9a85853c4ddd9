import pytest

from appliance.box.config import ConfigError, default_config, load_config, parse_config


def problems(data) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "t.toml")
    return exc.value.problems


def test_defaults_are_valid():
    cfg = default_config("clip.mp4")
    assert cfg.camera.source == "clip.mp4"
    assert cfg.analysis.fps == 10 and cfg.policy.profile == "bw-polg-44-4"


def test_unknown_keys_are_errors_that_list_the_allowed_ones():
    (p,) = problems({"analysis": {"fsp": 10}})
    assert p.startswith("analysis.fsp: unknown key") and "fps" in p


def test_unknown_section_is_an_error():
    (p,) = problems({"camra": {"source": "x"}})
    assert "camra: unknown key" in p and "camera" in p


def test_bad_values_name_key_and_fix():
    ps = problems({"analysis": {"fps": 0}, "pose": {"threads": "two"}, "seal": {"kem": "RSA"}})
    joined = "\n".join(ps)
    assert "analysis.fps = 0.0: must be >= 0.5 (fix: frames per second" in joined
    assert "pose.threads = 'two': must be an integer" in joined
    assert "seal.kem = 'RSA': must be one of 'MLKEM768_X25519', 'X25519'" in joined


def test_booleans_are_not_numbers_and_missing_required_keys_are_reported():
    ps = problems({"camera": {"loop": 1}})
    assert any("camera.source: missing" in p for p in ps)
    assert any("camera.loop = 1: must be true or false" in p for p in ps)


def test_polygons_are_checked():
    ps = problems({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0]]}],
                   "privacy_masks": [{"name": "w", "polygon": [[0, 0], [1.5, 0], [1, 1]]},
                                     {"name": "w", "polygon": [[0, 0], [1, 0], [1, 1]]}]})
    joined = "\n".join(ps)
    assert "zones[0].polygon: must be a list of at least 3" in joined
    assert "privacy_masks[0].polygon[1] = [1.5, 0]: coordinates must lie in 0..1" in joined


def test_duplicate_names_and_cross_field_rules():
    ps = problems({"privacy_masks": [{"name": "w", "polygon": [[0, 0], [1, 0], [1, 1]]}] * 2,
                   "tracking": {"low_score": 0.6, "high_score": 0.5}, "pose": {"input_width": 650}})
    joined = "\n".join(ps)
    assert "name 'w' is used twice" in joined
    assert "tracking.low_score = 0.6: must be below tracking.high_score" in joined
    assert "pose.input_width = 650: must be a multiple of 32" in joined


def test_files_that_are_missing_or_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera\nsource = 'x'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_a_full_file_loads(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text("""
[device]
id = "cam-7"
[camera]
source = "rtsp://10.1.2.3/stream"
[[zones]]
name = "square"
polygon = [[0, 0.2], [1, 0.2], [1, 1], [0, 1]]
[[privacy_masks]]
name = "windows"
polygon = [[0, 0], [0.3, 0], [0.3, 0.2]]
""")
    cfg = load_config(f)
    assert cfg.device.id == "cam-7" and cfg.zones[0].polygon[0] == (0.0, 0.2)
    assert str(cfg.spool_dir) == "/var/lib/appliance/spool"
