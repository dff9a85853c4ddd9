"""Lists where YOLOX-Nano sees given COCO classes anywhere in the footage of a data root (whole
frames, no wrist rule): the search for real footage with knives or bats.

    .venv/bin/python scripts/find_objects.py ../shared/data [--classes knife "baseball bat"]
        [--fps 2] [--min-score 0.2]

Prints one line per hit (video, time, class, score, box) and a count per video and class.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.box.behaviour.evaluate import VIDEO_SUFFIXES, video_frames
from appliance.box.objects import ObjectDetector


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--classes", nargs="+", default=["knife", "baseball bat"])
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--min-score", type=float, default=0.2)
    args = ap.parse_args(argv)
    det = ObjectDetector()
    videos = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    videos += sorted(p for p in args.root.rglob("img1") if p.is_dir())
    counts: Counter = Counter()
    frames = 0
    for video in videos:
        next_t = 0.0
        for t, image in video_frames(video, 960):
            if t < next_t - 1e-6:
                continue
            next_t += 1.0 / args.fps
            frames += 1
            found = det(image, classes=tuple(args.classes), min_score=args.min_score)
            for box, score, label in zip(found.boxes, found.scores, found.labels()):
                counts[(str(video.relative_to(args.root)), label)] += 1
                print(f"{video.relative_to(args.root)}\tt={t:.1f}\t{label}\t{score:.2f}\t{box.round().tolist()}",
                      flush=True)
    print(f"# {len(videos)} videos, {frames} frames at {args.fps} fps, classes {args.classes}, "
          f"score >= {args.min_score}")
    for (video, label), n in counts.most_common():
        print(f"# {n:4d}  {label:14s} {video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
