#!/usr/bin/env python3
"""Extracts the tracker's test fixtures: real pose Detections from the bundled sample clips.

Writes tests/fixtures/tracking/<name>.npz holding, per analysed frame, the persons the
pose model found (boxes, scores, COCO-17 keypoints in frame pixels) and the frame's time.
No pixels are stored. Run from the repository root:

    .venv/bin/python scripts/extract_tracking_fixtures.py

The sources are shipped in samples/ under licences that allow it (see NOTICE):
demo_skeleton.mp4 (Apache-2.0, OpenMMLab) and one-by-one-person-detection.mp4 (CC BY 4.0, Intel).
The pose score threshold is lowered to 0.1 so the fixtures also hold the low-score
detections that ByteTrack's second association stage uses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from appliance.box.pose import PoseEstimator

ROOT = Path(__file__).resolve().parent.parent

# name → (video, licence line, first frame, frame count, keep every n-th frame)
SOURCES = {
    "demo_skeleton": ("samples/demo_skeleton.mp4", "Apache-2.0, Copyright OpenMMLab (MMAction2 demo)", 0, 72, 1),
    "one_by_one": ("samples/one-by-one-person-detection.mp4",
                   "CC BY 4.0, Intel sample-videos (one-by-one-person-detection.mp4)", 0, 600, 1),
}


def extract(name: str, est: PoseEstimator) -> Path:
    video, licence, first, count, step = SOURCES[name]
    cap = cv2.VideoCapture(str(ROOT / video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {video}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.set(cv2.CAP_PROP_POS_FRAMES, first)
    frame_index, t, counts, boxes, scores, kpts = [], [], [], [], [], []
    for i in range(first, first + count):
        ok, image = cap.read()
        if not ok:
            break
        if (i - first) % step:
            continue
        dets = est(image)
        frame_index.append(i)
        t.append(i / fps)
        counts.append(len(dets))
        boxes.append(dets.boxes)
        scores.append(dets.scores)
        kpts.append(dets.keypoints)
    cap.release()
    out = ROOT / "tests" / "fixtures" / "tracking" / f"{name}.npz"
    np.savez_compressed(
        out,
        frame_index=np.asarray(frame_index, np.int32),
        t=np.asarray(t, np.float64),
        counts=np.asarray(counts, np.int32),
        boxes=np.concatenate(boxes).astype(np.float32),
        scores=np.concatenate(scores).astype(np.float32),
        keypoints=np.concatenate(kpts).astype(np.float32),
        frame_size=np.asarray(size, np.int32),
        source=np.asarray(video),
        licence=np.asarray(licence),
        model_sha256=np.asarray(est.model_sha256),
    )
    print(f"{out.relative_to(ROOT)}: {len(counts)} frames, {sum(counts)} detections, "
          f"persons/frame {np.bincount(counts).tolist()}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of: {', '.join(SOURCES)} (default: all)")
    args = parser.parse_args()
    est = PoseEstimator(score_threshold=0.1)
    for name in args.names or list(SOURCES):
        extract(name, est)


if __name__ == "__main__":
    main()
