#!/usr/bin/env python3
"""Writes tests/fixtures/behaviour/*.npz: small skeleton sequences for the behaviour tests.

Needs the pose cache written by scripts/extract_skeletons.py (default /tmp/skeleton-cache).
Only footage whose licence allows it is used (docs/behaviour.md, "Fixtures"):

* ``scfd-*``: Surveillance Camera Fight Dataset clips (MIT, Ş. Aktı 2020) — keypoints only;
* ``walking``/``fall``/``strangle``/``kick``: Intel's one-by-one-person-detection.mp4
  (CC BY 4.0, shipped in samples/). Real skeletons; for fall, lying, strangle and kick (no
  licensable real footage of them was available) a *constructed* motion is applied to the
  real skeletons, as each builder below says. Nothing from UR Fall or MOTChallenge.

Each file holds the real tracker's output at 10 fps: ``t`` float64[F], ``count`` int32[F],
``track_id`` int32[P], ``box`` float32[P, 4], ``score`` float32[P], ``keypoints``
float32[P, 17, 3] (P = persons over all frames, frame by frame), ``frame_size`` int32[2] and
``note`` (provenance).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.box.config import TrackingConfig  # noqa: E402
from appliance.box.tracking import Tracker  # noqa: E402
from appliance.contracts.types import Detections, TrackedFrame, TrackedPerson  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "behaviour"
FPS = 10.0


def tracked_from_cache(cache: Path, name: str, t_max: float | None = None) -> list[TrackedFrame]:
    z = np.load(cache / f"{name}.npz")
    size = tuple(int(v) for v in z["frame_size"])
    tracker = Tracker(TrackingConfig(), frame_size=size)
    out, next_t = [], None
    for i, t in enumerate(z["t"]):
        if t_max is not None and t > t_max:
            break
        if next_t is not None and t < next_t - 1e-6:
            continue
        next_t = t + 1 / FPS if next_t is None or next_t + 1 / FPS <= t else next_t + 1 / FPS
        k = int(z["count"][i])
        dets = Detections(int(z["frame_index"][i]), float(t), z["boxes"][i, :k], z["scores"][i, :k],
                          z["keypoints"][i, :k])
        out.append(tracker.update(dets))
    return out


def save(name: str, frames: list[TrackedFrame], note: str) -> None:
    persons = [p for f in frames for p in f.persons]
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT / f"{name}.npz",
        t=np.array([f.t for f in frames], np.float64),
        count=np.array([len(f.persons) for f in frames], np.int32),
        track_id=np.array([p.track_id for p in persons], np.int32),
        box=np.array([p.box for p in persons], np.float32).reshape(-1, 4),
        score=np.array([p.score for p in persons], np.float32),
        keypoints=np.round(np.array([p.keypoints for p in persons], np.float32).reshape(-1, 17, 3), 2),
        frame_size=np.array(frames[0].frame_size if frames else (0, 0), np.int32),
        note=note,
    )
    print(f"{name}: {len(frames)} frames, {len(persons)} skeletons")


def _person(track_id: int, kp: np.ndarray, age: int) -> TrackedPerson:
    vis = kp[kp[:, 2] > 0.1, :2]
    box = np.array([*vis.min(0) - 5, *vis.max(0) + 5], np.float32)
    return TrackedPerson(track_id, box, 0.9, kp.astype(np.float32), age, 0)


def standing_sequence(cache: Path) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The longest run of the one walking/standing person with a fully visible torso."""
    frames = tracked_from_cache(cache, "samples-one-by-one-person-detection", t_max=60.0)
    best: list[np.ndarray] = []
    run: list[np.ndarray] = []
    for f in frames:
        ok = len(f.persons) == 1 and all(f.persons[0].keypoints[i, 2] > 0.5 for i in (5, 6, 11, 12, 15, 16))
        run = [*run, f.persons[0].keypoints.copy()] if ok else []
        if len(run) > len(best):
            best = run
    return best, frames[0].frame_size


def build_fall(kps: list[np.ndarray], size) -> list[TrackedFrame]:
    """Real standing skeletons; from t=2 s each is rotated about its feet to 85° over 0.6 s and
    lowered onto the ground, then stays down for 5 s (so fall, then lying after lying_min_s)."""
    frames = []
    for i in range(80):
        kp = kps[i % len(kps)].copy()
        t = i / FPS
        angle = np.radians(85.0 * min(max((t - 2.0) / 0.6, 0.0), 1.0))
        feet = (kp[15, :2] + kp[16, :2]) / 2
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        # Rotate about the feet (the body tips over sideways), image y pointing down.
        kp[:, :2] = (kp[:, :2] - feet) @ rot.T + feet
        frames.append(TrackedFrame(i, t, (_person(1, kp, i),), size))
    return frames


def build_pair(kps: list[np.ndarray], size, mode: str) -> list[TrackedFrame]:
    """Two copies of the real standing person, one torso length apart, 3 s. ``strangle``: the
    left one's hands move to the right one's neck from t=0.5 s and stay; ``kick``: at t=1.5 s the
    left one's right ankle swings up to the other's hip in one step and back; ``none``: as is."""
    frames = []
    for i in range(30):
        t = i / FPS
        b = kps[i % len(kps)].copy()
        a = kps[(i + 7) % len(kps)].copy()
        torso = float(np.hypot(*((b[5, :2] + b[6, :2]) / 2 - (b[11, :2] + b[12, :2]) / 2)))
        a[:, 0] += (((b[11, 0] + b[12, 0]) - (a[11, 0] + a[12, 0])) / 2) - 1.0 * torso
        a[:, 1] += ((b[11, 1] + b[12, 1]) - (a[11, 1] + a[12, 1])) / 2
        neck = (b[5, :2] + b[6, :2]) / 2 + 0.25 * (b[0, :2] - (b[5, :2] + b[6, :2]) / 2)
        if mode == "strangle":
            # The hands reach the neck over 0.5 s (from t=0.5 s), then hold on to it.
            w = min(max((t - 0.5) / 0.5, 0.0), 1.0)
            jitter = (a[9, :2] - a[10, :2]) * 0.02
            a[9, :2] = (1 - w) * a[9, :2] + w * (neck + np.array([-0.15 * torso, 0.05 * torso]) + jitter)
            a[10, :2] = (1 - w) * a[10, :2] + w * (neck + np.array([0.15 * torso, 0.05 * torso]) - jitter)
        if mode == "kick" and abs(t - 1.6) < 0.05:
            hip_b = (b[11, :2] + b[12, :2]) / 2
            a[16, :2] = hip_b + np.array([-0.1 * torso, 0.0])
            a[14, :2] = (a[12, :2] + a[16, :2]) / 2
        frames.append(TrackedFrame(i, t, (_person(1, a, i), _person(2, b, i)), size))
    return frames


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/skeleton-cache"))
    ap.add_argument("--classifier-cache", type=Path, default=Path("/tmp/skeleton-cache-v2"),
                    help="pose cache extracted at score 0.05 (scripts/extract_skeletons.py --score-threshold "
                         "0.05) for the fight classifier's fixtures; skipped when missing")
    args = ap.parse_args(argv)
    mit = "Surveillance Camera Fight Dataset (MIT, S. Akti 2020), clip {}: pose keypoints only, real tracker, 10 fps"
    for name, clip in (("scfd_strike", "fight/fi023"), ("scfd_push", "fight/fi042"), ("scfd_fight", "fight/fi017"),
                       ("scfd_nofight_crowd", "nofight/nofi044"), ("scfd_nofight_group", "nofight/nofi026")):
        cls, stem = clip.split("/")
        save(name, tracked_from_cache(args.cache, f"scfd-{cls}-{stem}"), mit.format(clip))
    if args.classifier_cache.is_dir():
        # The fight classifier's operating point: pose score >= 0.1, the default tracker.
        from scripts.train_fight_classifier import tracked_from_cache as tracked_low

        for name, clip in (("scfd_fight_lowthr", "fight/fi033"), ("scfd_nofight_lowthr", "nofight/nofi007")):
            cls, stem = clip.split("/")
            save(name, tracked_low(args.classifier_cache, f"scfd-{cls}-{stem}", 0.1),
                 mit.format(clip) + "; pose score >= 0.1, default tracker")
    cc = "samples/one-by-one-person-detection.mp4 (CC BY 4.0, Intel)"
    save("walking", tracked_from_cache(args.cache, "samples-one-by-one-person-detection", t_max=40.0),
         f"{cc}: first 40 s, real tracker, 10 fps")
    kps, size = standing_sequence(args.cache)
    save("fall_constructed", build_fall(kps, size),
         f"{cc}: real standing skeletons, constructed fall (rotated 85 deg about the feet over 0.6 s)")
    for mode in ("strangle", "kick", "none"):
        save(f"pair_{mode}_constructed", build_pair(kps, size, mode),
             f"{cc}: two copies of a real standing skeleton; constructed '{mode}' limb placement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
