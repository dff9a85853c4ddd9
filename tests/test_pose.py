import shutil

import cv2
import numpy as np
import pytest

from appliance.box.capture import downscale
from appliance.box.pose import PoseEstimator, letterbox_geometry, load_manifest, verified_model
from appliance.common.errors import ModelError
from appliance.contracts.types import KP
from tests.conftest import DEMO_CLIP, ROOT, WALK_CLIP


def read_frame(path, index, max_width=960):
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, img = cap.read()
    cap.release()
    assert ok
    return downscale(img, max_width)


def test_letterbox_runs_16_9_at_640x384():
    lb = letterbox_geometry(960, 540, 640)
    assert (lb.input_w, lb.input_h) == (640, 384)
    assert lb.pad_x == 0 and lb.pad_y == 12


def test_two_standing_people_found_with_plausible_keypoints(pose_estimator):
    dets = pose_estimator(read_frame(DEMO_CLIP, 5))
    assert len(dets) == 2
    assert dets.boxes.shape == (2, 4) and dets.keypoints.shape == (2, 17, 3)
    assert (dets.scores > 0.6).all()
    for kp, box in zip(dets.keypoints, dets.boxes):
        # Standing people: shoulders above hips above ankles (y grows downwards).
        sh = kp[[KP["left_shoulder"], KP["right_shoulder"]], 1].mean()
        hip = kp[[KP["left_hip"], KP["right_hip"]], 1].mean()
        ank = kp[[KP["left_ankle"], KP["right_ankle"]], 1].mean()
        assert sh < hip < ank
        assert kp[KP["nose"], 1] < sh
        # Keypoints lie in (or very near) their person's box, in frame pixels.
        assert (kp[:, 0] > box[0] - 20).all() and (kp[:, 0] < box[2] + 20).all()
    # The two men stand side by side: their boxes do not coincide.
    assert abs(dets.boxes[0, 0] - dets.boxes[1, 0]) > 100


def test_keypoints_scale_with_the_frame(pose_estimator):
    full = read_frame(DEMO_CLIP, 5, max_width=960)
    half = cv2.resize(full, (480, 270), interpolation=cv2.INTER_AREA)
    a, b = pose_estimator(full), pose_estimator(half)
    assert len(a) == len(b) == 2
    order_a, order_b = np.argsort(a.boxes[:, 0]), np.argsort(b.boxes[:, 0])
    err = np.abs(a.keypoints[order_a, :, :2] / 2 - b.keypoints[order_b, :, :2])
    assert np.median(err) < 6


def test_empty_scene_gives_no_persons(pose_estimator):
    dets = pose_estimator(np.full((540, 960, 3), 114, np.uint8))
    assert len(dets) == 0 and dets.keypoints.shape == (0, 17, 3)


def test_walking_person_found(pose_estimator):
    cap = cv2.VideoCapture(str(WALK_CLIP))
    found = 0
    for i in range(0, 400, 40):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, img = cap.read()
        found += len(pose_estimator(img)) > 0
    cap.release()
    assert found >= 3


def test_manifest_lists_hash_licence_and_layout():
    entries = load_manifest()
    e = entries["yolo11n-pose"]
    assert len(e.sha256) == 64 and "AGPL" in e.licence
    assert e.keypoint_order == "coco17" and "NCHW" in e.input_layout and "56" in e.output_layout


def test_model_whose_hash_differs_is_refused(tmp_path):
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    blob = bytearray((ROOT / "models" / "yolo11n-pose.onnx").read_bytes())
    blob[-100] ^= 0x01                      # one flipped bit
    (tmp_path / "yolo11n-pose.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="refusing to load"):
        PoseEstimator("yolo11n-pose", models_dir=str(tmp_path))


def test_unknown_or_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not in the manifest"):
        verified_model("no-such-model")
    shutil.copy(ROOT / "models" / "manifest.toml", tmp_path / "manifest.toml")
    with pytest.raises(ModelError, match="cannot be read"):
        verified_model("yolo11n-pose", tmp_path)
