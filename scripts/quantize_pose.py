"""Static INT8 quantisation of the pose model, calibrated on real frames of the bundled samples.

    .venv/bin/python scripts/quantize_pose.py        (needs `pip install onnx`; run by `make models`)

FACTS.md: quantising the whole graph broke the outputs (person-score error 0.63, keypoints
≈ 8 px off), because the head concatenates boxes, scores and keypoints of very different
ranges into one tensor. So the detection head's decode part (every node of the last module,
/model.23/, except the convolutions of its branches) stays in float; only the backbone, neck
and the head's branch convolutions are quantised (QDQ, per-channel weights).

The result is written as models/yolo11n-pose-int8.onnx and must then be listed in
models/manifest.toml; `make bench` reports its speed and its agreement (OKS) with fp32, and
it becomes the default only if the agreement holds (see README).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.box.capture import downscale  # noqa: E402
from appliance.box.pose.estimator import PoseEstimator  # noqa: E402

SOURCE = ROOT / "models" / "yolo11n-pose.onnx"
TARGET = ROOT / "models" / "yolo11n-pose-int8.onnx"
CALIBRATION_VIDEOS = [ROOT / "samples" / "demo_skeleton.mp4", ROOT / "samples" / "one-by-one-person-detection.mp4"]
FRAMES_PER_VIDEO = 24


def calibration_frames() -> list[np.ndarray]:
    est = PoseEstimator("yolo11n-pose")  # the fp32 source model (the INT8 one is being made)
    blobs = []
    for video in CALIBRATION_VIDEOS:
        cap = cv2.VideoCapture(str(video))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for i in np.linspace(0, total - 1, FRAMES_PER_VIDEO).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, img = cap.read()
            if ok:
                blob, _ = est.preprocess(downscale(img, 960))
                blobs.append(blob)
        cap.release()
    return blobs


class Reader(CalibrationDataReader):
    def __init__(self, blobs):
        self.it = iter({"images": b} for b in blobs)

    def get_next(self):
        return next(self.it, None)


def float_head_nodes(model: onnx.ModelProto) -> list[str]:
    keep_float = []
    for node in model.graph.node:
        if not node.name.startswith("/model.23/"):
            continue
        branch_conv = node.op_type == "Conv" and any(f"/cv{k}." in node.name for k in (2, 3, 4))
        if not branch_conv:
            keep_float.append(node.name)
    # The final 1x1 conv of each branch emits raw box/score/keypoint values: keep them float too.
    keep_float += [n.name for n in model.graph.node
                   if n.op_type == "Conv" and any(f"/cv{k}.{s}/cv{k}.{s}.2/" in n.name
                                                  for k in (2, 3, 4) for s in (0, 1, 2))]
    return keep_float


def main() -> None:
    pre = TARGET.with_suffix(".pre.onnx")
    quant_pre_process(str(SOURCE), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    exclude = float_head_nodes(model)
    quantize_static(
        str(pre), str(TARGET), Reader(calibration_frames()),
        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
    )
    pre.unlink()
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1e6:.1f} MB), {len(exclude)} head nodes kept in float")


if __name__ == "__main__":
    main()
