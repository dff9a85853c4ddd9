#!/usr/bin/env python3
"""Caches pose Detections for every frame of a set of videos, for behaviour research.

Mirrors the runtime's pose path (frames wider than 960 px are downscaled to 960 wide with
INTER_AREA, then the manifest-verified pose model at input width 640) but keeps *every*
frame at the clip's own rate, so analysis rates can be chosen later by subsampling on the
timestamps. One ``.npz`` per clip goes to the cache directory (default
``/tmp/skeleton-cache``; never the repository: the clips' licences do not allow shipping
anything derived from most of them).

    .venv/bin/python scripts/extract_skeletons.py                    # the default set
    .venv/bin/python scripts/extract_skeletons.py --data ../shared/data --out /tmp/skeleton-cache
    .venv/bin/python scripts/extract_skeletons.py --out /tmp/skeleton-cache-v2 --score-threshold 0.05 \
        --threads 1 --only scfd-,mot-,normal-,samples-       # the fight classifier's training cache

Each npz holds: ``t`` float64[F] (seconds), ``frame_index`` int64[F], ``count`` int32[F],
``boxes`` float32[F, M, 4], ``scores`` float32[F, M], ``keypoints`` float32[F, M, 17, 3]
(padded with zeros to the largest person count M), ``frame_size`` int32[2] (w, h of the
analysed image), ``fps`` float64, ``source`` str.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

MAX_WIDTH = 960  # the ring's default max_width: pose sees what the ring holds


def default_sources(data: Path, repo: Path) -> list[tuple[str, Path]]:
    """(cache name, video path) for the research set, most useful first."""
    out: list[tuple[str, Path]] = []
    for cls in ("fight", "nofight"):
        for p in sorted((data / "scfd-dev" / cls).glob("*.mp4")):
            out.append((f"scfd-{cls}-{p.stem}", p))
    for p in sorted((data / "falls").glob("*.mp4")):
        out.append((f"falls-{p.stem}", p))
    for p in sorted((data / "mot").glob("TUD-*/video.mp4")):
        out.append((f"mot-{p.parent.name}", p))
    pets = data / "mot" / "PETS09-S2L1" / "img1"
    if pets.is_dir():
        out.append(("mot-PETS09-S2L1", pets / "%06d.jpg"))
    for p in sorted((repo / "samples").glob("*.mp4")):
        out.append((f"samples-{p.stem}", p))
    for p in sorted((data / "normal").glob("*.mp4")):
        if not (repo / "samples" / p.name).exists():
            out.append((f"normal-{p.stem}", p))
    return out


def read_frames(path: Path, fps_hint: float | None = None):
    """Yields (frame_index, t_seconds, bgr image downscaled to MAX_WIDTH)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or fps_hint or 25.0
    if fps_hint:
        fps = fps_hint
    index = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            # Index/fps rather than CAP_PROP_POS_MSEC: image sequences have no timestamps,
            # and for these constant-rate files the two agree.
            t = index / fps
            h, w = image.shape[:2]
            if w > MAX_WIDTH:
                image = cv2.resize(image, (MAX_WIDTH, round(h * MAX_WIDTH / w)), interpolation=cv2.INTER_AREA)
            yield index, t, image, fps
            index += 1
    finally:
        cap.release()


def extract(est, name: str, path: Path, out_dir: Path) -> Path:
    target = out_dir / f"{name}.npz"
    if target.exists():
        return target
    fps_hint = 7.0 if "PETS09" in name else None
    ts, idxs, dets_list = [], [], []
    frame_size = (0, 0)
    fps = 0.0
    for index, t, image, clip_fps in read_frames(path, fps_hint):
        fps = clip_fps
        frame_size = (image.shape[1], image.shape[0])
        dets = est(image)
        ts.append(t)
        idxs.append(index)
        dets_list.append(dets)
    n = len(dets_list)
    m = max([len(d) for d in dets_list] + [1])
    boxes = np.zeros((n, m, 4), np.float32)
    scores = np.zeros((n, m), np.float32)
    kpts = np.zeros((n, m, 17, 3), np.float32)
    count = np.zeros((n,), np.int32)
    for i, d in enumerate(dets_list):
        k = len(d)
        count[i] = k
        boxes[i, :k] = d.boxes
        scores[i, :k] = d.scores
        kpts[i, :k] = d.keypoints
    tmp = out_dir / f".{name}.tmp.npz"
    np.savez_compressed(tmp, t=np.asarray(ts, np.float64), frame_index=np.asarray(idxs, np.int64),
                        count=count, boxes=boxes, scores=scores, keypoints=kpts,
                        frame_size=np.asarray(frame_size, np.int32), fps=np.float64(fps),
                        source=str(path))
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=repo.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/skeleton-cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-width", type=int, default=640, help="pose model input width (runtime default 640)")
    # Extracting at a low threshold keeps every choice >= it open: greedy NMS visits boxes in
    # score order, so filtering the output at a higher score equals running at that score.
    ap.add_argument("--score-threshold", type=float, default=0.35,
                    help="minimum person score (runtime default 0.35); 0.05 keeps higher choices open")
    ap.add_argument("--nms-iou", type=float, default=0.5,
                    help="box IoU above which NMS merges persons (runtime default 0.5); 0.95 keeps nearly every "
                         "candidate, so other suppression rules can be tried on the cache")
    ap.add_argument("--max-persons", type=int, default=50, help="most detections kept per frame")
    ap.add_argument("--only", default="", help="comma-separated cache-name prefixes, e.g. scfd-,mot-")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(repo))
    from appliance.box.pose import PoseEstimator

    est = PoseEstimator(input_width=args.input_width, threads=args.threads,
                        score_threshold=args.score_threshold, nms_iou=args.nms_iou, max_persons=args.max_persons)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = default_sources(args.data, repo)
    if args.only:
        prefixes = tuple(p for p in args.only.split(",") if p)
        sources = [(n, p) for n, p in sources if n.startswith(prefixes)]
    start = time.monotonic()
    for i, (name, path) in enumerate(sources):
        t0 = time.monotonic()
        extract(est, name, path, args.out)
        print(f"[{i + 1}/{len(sources)}] {name}: {time.monotonic() - t0:.1f} s "
              f"(total {time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
