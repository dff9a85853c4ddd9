"""MoveNet MultiPose Lightning behind the pose interface: real ONNX inference on real frames.

Tracking and behaviour must not be able to tell which model produced the keypoints: same
Detections type, COCO-17 order, frame pixels, scores on YOLO11n-pose's scale (calibrated).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from appliance.box.config import default_config
from appliance.box.pose import estimator_from_config, load_manifest
from appliance.box.pose.movenet import MoveNetEstimator
from appliance.common.errors import ModelError
from appliance.contracts.types import KP, Detections
from tests.conftest import DEMO_CLIP, ROOT
from tests.test_pose import read_frame

MODEL = "movenet-multipose-lightning"


@pytest.fixture(scope="module")
def movenet():
    return estimator_from_config(default_config(pose={"model": MODEL}).pose)


@pytest.fixture(scope="module")
def yolo():
    return estimator_from_config(default_config().pose)


def test_config_selects_movenet_at_its_own_width(movenet):
    assert isinstance(movenet, MoveNetEstimator) and movenet.input_width == 256
    entry = load_manifest()[MODEL]
    assert entry.architecture == "movenet-multipose" and entry.licence.startswith("Apache-2.0")
    assert not entry.agpl and load_manifest()["yolo11n-pose-int8"].agpl
    blob, lb = movenet.preprocess(read_frame(DEMO_CLIP, 5))
    assert blob.dtype == np.uint8 and blob.shape == (1, 160, 256, 3)      # 16:9 → 256x160, not 256x256


def test_same_persons_and_keypoints_as_yolo_on_a_real_frame(movenet, yolo):
    from bench.pose import agreement

    frame = read_frame(DEMO_CLIP, 5)
    a, b = movenet(frame), yolo(frame)
    assert isinstance(a, Detections) and len(a) == 2
    assert a.boxes.shape == (2, 4) and a.keypoints.shape == (2, 17, 3) and a.scores.dtype == np.float32
    for kp in a.keypoints:   # COCO-17 order: shoulders above hips above ankles, in frame pixels
        sh = kp[[KP["left_shoulder"], KP["right_shoulder"]], 1].mean()
        hip = kp[[KP["left_hip"], KP["right_hip"]], 1].mean()
        ank = kp[[KP["left_ankle"], KP["right_ankle"]], 1].mean()
        assert kp[KP["nose"], 1] < sh < hip < ank
    oks, recall = agreement([b], [a])
    assert recall == 1.0 and oks > 0.6
    # calibrated onto YOLO's scale: clearly seen persons start tracks (tracking.high_score 0.5)
    assert (a.scores >= 0.5).all()


def test_empty_scene_and_at_most_six_persons(movenet):
    assert len(movenet(np.full((540, 960, 3), 114, np.uint8))) == 0
    tiled = np.tile(read_frame(DEMO_CLIP, 5, max_width=480), (2, 3, 1))   # 12 persons
    assert len(movenet(tiled)) <= 6


def test_movenet_whose_hash_differs_is_refused(tmp_path):
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    blob = bytearray((ROOT / "models" / f"{MODEL}.onnx").read_bytes())
    blob[-200] ^= 0x01
    (tmp_path / f"{MODEL}.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="refusing to load"):
        estimator_from_config(default_config(pose={"model": MODEL, "models_dir": str(tmp_path)}).pose)


def test_a_detector_is_not_accepted_as_pose_model():
    with pytest.raises(ModelError, match="pose.model = 'yolox-nano' is a yolox model, not a pose model"):
        estimator_from_config(default_config(pose={"model": "yolox-nano"}).pose)


def test_analyze_runs_the_whole_pipeline_with_movenet(tmp_path):
    cfg = tmp_path / "movenet.toml"
    cfg.write_text(f'[camera]\nsource = "{DEMO_CLIP}"\n\n[pose]\nmodel = "{MODEL}"\n')
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "analyze", str(DEMO_CLIP), "--config",
                          str(cfg), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["persons_max"] == 2 and summary["tracks"] >= 2
    frames = [line for line in lines if line["type"] == "frame"]
    assert all(len(p["keypoints"]) == 17 for f in frames for p in f["persons"])
