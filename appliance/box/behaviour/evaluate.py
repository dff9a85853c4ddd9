"""`appliance eval DIR`: measures the behaviour detectors on real footage with the real pipeline.

Every video goes through what the appliance runs (downscale to ``ring.max_width`` → pose at
``analysis.fps`` on the presentation-time grid → :class:`~appliance.box.tracking.Tracker` →
:class:`~appliance.box.behaviour.BehaviourAnalyzer`); nothing is cached. Layouts understood:

* a folder with ``fight/`` and ``nofight/`` (the Surveillance Camera Fight Dataset layout):
  a clip counts as *fight* when any violent pattern fires; prints per-class recall and
  balanced accuracy;
* a data root holding some of ``scfd-dev/`` (as above), ``falls/`` (videos, and the UR Fall
  skeleton CSV ``urfd_pose_3classes.csv``: fall and lying measured on its 30 sequences),
  ``normal/`` and ``mot/`` (ordinary walking and standing: every violent event there is a
  false trigger, every fall or lying event a false alarm).
"""

from __future__ import annotations

import configparser
import csv
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.box.behaviour.analyzer import BehaviourAnalyzer
from appliance.box.behaviour.config import BehaviourConfig
from appliance.box.behaviour.features import is_down
from appliance.box.config import AppConfig
from appliance.common.errors import InputError
from appliance.contracts.types import KP, NUM_KEYPOINTS, Event, HandScan, Pattern, TrackedFrame, TrackedPerson

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
URFD_CSV = "urfd_pose_3classes.csv"
#: UR Fall was recorded at 30 fps, 640×480; the CSV's coordinates are normalised to that frame.
URFD_FPS, URFD_SIZE = 30.0, (640, 480)
#: The CSV's 13 keypoints (COCO indices 0 and 5..16), in its column order.
URFD_KEYPOINTS = (KP["nose"], *range(5, 17))


# ---------------------------------------------------------------------------------------
# Running the pipeline


def video_frames(path: Path, max_width: int) -> Iterator[tuple[float, np.ndarray]]:
    """(t seconds, downscaled BGR image) of a video file or a MOT ``img1/`` image sequence."""
    from appliance.box.capture.source import FileSource, downscale

    if path.is_dir():   # MOTChallenge: img1/000001.jpg ..., frame rate in ../seqinfo.ini
        info = configparser.ConfigParser()
        info.read(path.parent / "seqinfo.ini")
        fps = float(info.get("Sequence", "frameRate", fallback="25"))
        ext = info.get("Sequence", "imExt", fallback=".jpg")
        cap = cv2.VideoCapture(str(path / f"%06d{ext}"))
        index = 0
        try:
            while True:
                ok, image = cap.read()
                if not ok or image is None:
                    break
                yield index / fps, downscale(image, max_width)
                index += 1
        finally:
            cap.release()
        if index == 0:
            raise InputError(f"{path}: no decodable images")
        return
    for _, t, _, image in FileSource(str(path), max_width=max_width).frames():
        yield t, image


class SkeletonPipeline:
    """Pose → tracker (→ object stage) for one video at a time (the models are loaded once).

    The object stage runs when ``with_objects`` (eval always measures the weapon pattern, on
    the budget and crops of ``[objects]``, whether or not a box enables it)."""

    def __init__(self, app_cfg: AppConfig, *, with_objects: bool = False):
        from appliance.box.pose import estimator_from_config

        self.cfg = app_cfg
        self.estimator = estimator_from_config(app_cfg.pose)
        self.objects = None
        if with_objects:
            from appliance.box.objects import ObjectStage

            self.objects = ObjectStage(app_cfg.objects, models_dir=app_cfg.pose.models_dir or None)
        self.object_crops = 0          # detector runs, for the cost line of the report
        self.object_seconds = 0.0

    def tracked_frames(self, path: Path) -> Iterator[TrackedFrame]:
        for tracked, _ in self.analysed_frames(path):
            yield tracked

    def analysed_frames(self, path: Path, focus: Callable[[], set[int]] | None = None
                        ) -> Iterator[tuple[TrackedFrame, HandScan | None]]:
        """(tracked frame, the object stage's scan or None) on the analysis grid; ``focus``
        gives the tracks the behaviour stage wants scanned (open candidates)."""
        from appliance.box.tracking import Tracker

        tracker = Tracker(self.cfg.tracking)
        period = 1.0 / self.cfg.analysis.fps
        next_t: float | None = None
        for index, (t, image) in enumerate(video_frames(path, self.cfg.ring.max_width)):
            # The same grid as the runtime's offline driver: analyse when t reaches the tick.
            if next_t is not None and t < next_t - 1e-6:
                continue
            next_t = t + period if next_t is None or next_t + period <= t else next_t + period
            tracker.frame_size = (image.shape[1], image.shape[0])
            dets = self.estimator(image)
            dets = type(dets)(index, t, dets.boxes, dets.scores, dets.keypoints)
            tracked = tracker.update(dets)
            scan = None
            if self.objects is not None:
                started = time.perf_counter()
                scan = self.objects.update(image, tracked, focus() if focus else set())
                self.object_seconds += time.perf_counter() - started
                self.object_crops += len(scan.scanned)
            yield tracked, scan


def run_analyzer(frames: Iterable[TrackedFrame], cfg: BehaviourConfig | None = None) -> list[Event]:
    analyzer = BehaviourAnalyzer(cfg)
    events: list[Event] = []
    for frame in frames:
        events += analyzer.update(frame)
    return events + analyzer.flush()


def analyse_clip(pipeline: SkeletonPipeline, path: Path, cfg: BehaviourConfig) -> tuple[list[Event], int, float]:
    """(events, analysed frames, seconds covered) of one video through pose → tracking →
    object stage → behaviour, the behaviour stage steering the object stage's focus."""
    analyzer = BehaviourAnalyzer(cfg, objects=pipeline.cfg.objects)
    events: list[Event] = []
    n, first, last = 0, None, 0.0
    for tracked, scan in pipeline.analysed_frames(path, analyzer.focus_tracks):
        events += analyzer.update(tracked, scan)
        n += 1
        first = tracked.t if first is None else first
        last = tracked.t
    return events + analyzer.flush(), n, (last - first if first is not None else 0.0)


# ---------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class ClipResult:
    name: str
    label: str              # fight, nofight, fall, normal
    events: tuple[Event, ...]
    frames: int             # analysed frames
    seconds: float          # stream time covered

    @property
    def violent(self) -> bool:
        return any(e.pattern.violent for e in self.events)

    @property
    def weapons(self) -> list[Event]:
        return [e for e in self.events if e.pattern is Pattern.WEAPON]

    def patterns(self) -> list[str]:
        return sorted({e.pattern.value for e in self.events})


@dataclass
class EvalReport:
    fight: list[ClipResult] = field(default_factory=list)
    nofight: list[ClipResult] = field(default_factory=list)
    fall_videos: list[ClipResult] = field(default_factory=list)
    normal: list[ClipResult] = field(default_factory=list)
    urfd: dict[str, Any] | None = None
    seconds: float = 0.0
    #: Clips that could not be decoded: (name, label, reason). Left out of every figure, listed.
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    #: Object stage cost: detector runs and their seconds (None: the stage did not run).
    object_crops: int | None = None
    object_seconds: float = 0.0

    def fight_summary(self) -> dict[str, Any] | None:
        if not self.fight and not self.nofight:
            return None
        fight_recall = float(np.mean([c.violent for c in self.fight])) if self.fight else math.nan
        nofight_recall = float(np.mean([not c.violent for c in self.nofight])) if self.nofight else math.nan
        return {
            "fight_clips": len(self.fight), "nofight_clips": len(self.nofight),
            "fight_recall": round(fight_recall, 4), "nofight_recall": round(nofight_recall, 4),
            "balanced_accuracy": round(0.5 * (fight_recall + nofight_recall), 4),
            "patterns_in_fight": dict(Counter(p for c in self.fight for p in c.patterns())),
            "patterns_in_nofight": dict(Counter(p for c in self.nofight for p in c.patterns())),
            "missed_fights": [c.name for c in self.fight if not c.violent],
            "false_fights": [c.name for c in self.nofight if c.violent],
        }

    def normal_summary(self) -> dict[str, Any] | None:
        clips = self.normal
        if not clips:
            return None
        return {
            "clips": len(clips),
            "analysed_seconds": round(sum(c.seconds for c in clips), 1),
            "violent_events": sum(1 for c in clips for e in c.events if e.pattern.violent),
            "fall_or_lying_events": sum(1 for c in clips for e in c.events if e.pattern in (Pattern.FALL, Pattern.LYING)),
            "per_clip": {c.name: c.patterns() for c in clips},
        }

    def weapon_summary(self) -> dict[str, Any] | None:
        """Weapon events: per hour on the ordinary footage (no-fight clips and normal/MOT, where
        nobody holds a knife or bat: every one is a false alarm), and where else they fired."""
        if self.object_crops is None:
            return None
        ordinary = self.nofight + self.normal
        hours = sum(c.seconds for c in ordinary) / 3600.0
        false = [e for c in ordinary for e in c.weapons]

        def listing(clips: list[ClipResult]) -> dict[str, list[str]]:
            return {c.name: [f"{e.explanation.get('object')} {e.explanation.get('score')} "
                             f"{e.explanation.get('hand')} hand, {e.explanation.get('frames')} frames"
                             for e in c.weapons] for c in clips if c.weapons}

        analysed = sum(c.frames for c in self.fight + self.nofight + self.fall_videos + self.normal)
        return {
            "ordinary_hours": round(hours, 4),
            "ordinary_false_alarms": len(false),
            "false_alarms_per_hour": round(len(false) / hours, 2) if hours else math.nan,
            "objects_in_false_alarms": dict(Counter(str(e.explanation.get("object")) for e in false)),
            "in_ordinary": listing(ordinary),
            "in_fight_clips": listing(self.fight),
            "in_fall_videos": listing(self.fall_videos),
            "crops_per_analysed_frame": round(self.object_crops / analysed, 3) if analysed else math.nan,
            "ms_per_crop": round(1e3 * self.object_seconds / self.object_crops, 1) if self.object_crops else math.nan,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "weapon": self.weapon_summary(),
            "fight": self.fight_summary(),
            "fall_videos": {c.name: c.patterns() for c in self.fall_videos} or None,
            "urfd_csv": self.urfd,
            "normal": self.normal_summary(),
            "unreadable": [{"clip": n, "folder": lab, "reason": why} for n, lab, why in self.unreadable],
            "seconds": round(self.seconds, 1),
        }


def format_report(report: EvalReport) -> str:
    lines: list[str] = []
    fs = report.fight_summary()
    if fs:
        lines += [
            f"fight/no-fight ({fs['fight_clips']} + {fs['nofight_clips']} clips; a clip is 'fight' "
            "if any violent pattern fires)",
            f"  fight recall      {fs['fight_recall']:.1%}",
            f"  no-fight recall   {fs['nofight_recall']:.1%}",
            f"  balanced accuracy {fs['balanced_accuracy']:.1%}",
            f"  patterns fired in fight clips:    {fs['patterns_in_fight'] or '-'}",
            f"  patterns fired in no-fight clips: {fs['patterns_in_nofight'] or '-'}",
        ]
    if report.urfd:
        u = report.urfd
        lines += [
            f"UR Fall skeleton CSV ({u['sequences']} fall sequences)",
            f"  fall detected     {u['fall_detected']}/{u['sequences']} ({u['fall_recall']:.1%}); "
            f"median delay after the first 'falling' frame {u['fall_delay_median_s']} s",
            f"  lying detected    {u['lying_detected']}/{u['lying_expected']} sequences whose lying span "
            f"lasts >= lying_min_s ({u['lying_min_s']} s)",
            f"  posture per frame: 'down' on {u['down_on_lying_frames']:.1%} of lying frames, "
            f"on {u['down_on_upright_frames']:.1%} of not-fallen frames",
        ]
    if report.fall_videos:
        lines.append("fall videos: " + ", ".join(f"{c.name}: {c.patterns() or '-'}" for c in report.fall_videos))
    ns = report.normal_summary()
    if ns:
        lines += [
            f"ordinary walking/standing ({ns['clips']} clips, {ns['analysed_seconds']} s analysed)",
            f"  violent events (false triggers) {ns['violent_events']}; fall/lying events {ns['fall_or_lying_events']}",
        ] + [f"    {name}: {pats or '-'}" for name, pats in ns["per_clip"].items()]
    ws = report.weapon_summary()
    if ws:
        lines += [
            f"weapon (object near a wrist in >= objects.min_frames consecutive scans; "
            f"{ws['crops_per_analysed_frame']} crops per analysed frame, {ws['ms_per_crop']} ms per crop)",
            f"  ordinary footage ({ws['ordinary_hours'] * 3600:.0f} s: no-fight clips, normal/, mot/): "
            f"{ws['ordinary_false_alarms']} false alarms = {ws['false_alarms_per_hour']} per camera-hour "
            f"{ws['objects_in_false_alarms'] or ''}",
        ]
        for title, key in (("ordinary", "in_ordinary"), ("fight clips", "in_fight_clips"),
                           ("fall videos", "in_fall_videos")):
            for name, found in ws[key].items():
                lines.append(f"    {title}: {name}: {'; '.join(found)}")
    if report.unreadable:
        lines.append(f"UNREADABLE, left out of every figure above ({len(report.unreadable)} clips):")
        lines += [f"    {lab}: {name}: {why}" for name, lab, why in report.unreadable]
    lines.append(f"({report.seconds:.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# UR Fall skeleton CSV


def urfd_sequences(path: Path) -> dict[str, list[tuple[int, np.ndarray, int]]]:
    """video -> [(frame number, keypoints float32[17, 3] in 640×480 pixels, label)]."""
    seqs: dict[str, list[tuple[int, np.ndarray, int]]] = defaultdict(list)
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            if len(header) != 2 + 3 * len(URFD_KEYPOINTS) + 1:
                raise InputError(f"{path}: not the UR Fall skeleton CSV layout "
                                 "(video, frame, 13 x (x, y, score), label)")
            for row in reader:
                values = np.asarray(row[2:-1], np.float32).reshape(len(URFD_KEYPOINTS), 3)
                kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
                kp[list(URFD_KEYPOINTS)] = values
                kp[:, 0] *= URFD_SIZE[0]
                kp[:, 1] *= URFD_SIZE[1]
                seqs[row[0]].append((int(row[1]), kp, int(row[-1])))
    except (OSError, ValueError, StopIteration) as exc:
        raise InputError(f"{path}: cannot read the UR Fall skeleton CSV: {exc}") from None
    for frames in seqs.values():
        frames.sort(key=lambda r: r[0])
    return seqs


def _box_of(kp: np.ndarray) -> np.ndarray:
    pts = kp[kp[:, 2] > 0.05, :2]
    if len(pts) == 0:
        return np.zeros(4, np.float32)
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    pad = 0.1 * max(x2 - x1, y2 - y1)
    return np.array([x1 - pad, y1 - pad, x2 + pad, y2 + pad], np.float32)


def urfd_tracked_frames(frames: list[tuple[int, np.ndarray, int]], fps: float) -> Iterator[tuple[TrackedFrame, int]]:
    """One track per sequence, sampled on the analysis grid (the CSV's pose is AlphaPose's)."""
    next_t = None
    for age, (number, kp, label) in enumerate(frames):
        t = number / URFD_FPS
        if next_t is not None and t < next_t - 1e-6:
            continue
        next_t = t + 1.0 / fps if next_t is None or next_t + 1.0 / fps <= t else next_t + 1.0 / fps
        person = TrackedPerson(1, _box_of(kp), 1.0, kp, age, 0)
        yield TrackedFrame(number, t, (person,), URFD_SIZE), label


def evaluate_urfd(path: Path, cfg: BehaviourConfig, fps: float) -> dict[str, Any]:
    seqs = urfd_sequences(path)
    detected = lying_expected = lying_detected = 0
    delays: list[float] = []
    down_lying: list[bool] = []
    down_upright: list[bool] = []
    per_seq: dict[str, list[str]] = {}
    for name, frames in sorted(seqs.items()):
        analyzer = BehaviourAnalyzer(cfg)
        events: list[Event] = []
        first_falling = next((n / URFD_FPS for n, _, lab in frames if lab == 1), None)
        lying_frames = [n for n, _, lab in frames if lab == 2]
        lying_span = (lying_frames[-1] - lying_frames[0]) / URFD_FPS if lying_frames else 0.0
        for tracked, label in urfd_tracked_frames(frames, fps):
            events += analyzer.update(tracked)
            p = tracked.persons[0]
            down = is_down(p.keypoints, p.box, cfg.lying_angle_deg)
            (down_lying if label == 2 else down_upright if label == 0 else []).append(down)
        events += analyzer.flush()
        falls = [e for e in events if e.pattern is Pattern.FALL]
        if falls:
            detected += 1
            if first_falling is not None:
                delays.append(falls[0].end_t - first_falling)
        if lying_span >= cfg.lying_min_s:
            lying_expected += 1
            lying_detected += any(e.pattern is Pattern.LYING for e in events)
        per_seq[name] = sorted({e.pattern.value for e in events})
    n = len(seqs)
    return {
        "sequences": n,
        "fall_detected": detected,
        "fall_recall": round(detected / n, 4) if n else math.nan,
        "fall_delay_median_s": round(float(np.median(delays)), 2) if delays else None,
        "lying_min_s": cfg.lying_min_s,
        "lying_expected": lying_expected,
        "lying_detected": lying_detected,
        "down_on_lying_frames": round(float(np.mean(down_lying)), 4) if down_lying else math.nan,
        "down_on_upright_frames": round(float(np.mean(down_upright)), 4) if down_upright else math.nan,
        "violent_events": sum(1 for pats in per_seq.values() for p in pats if Pattern(p).violent),
        "per_sequence": per_seq,
    }


# ---------------------------------------------------------------------------------------
# Layout discovery and the whole run


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


@dataclass(frozen=True)
class Plan:
    fight: tuple[Path, ...] = ()
    nofight: tuple[Path, ...] = ()
    fall_videos: tuple[Path, ...] = ()
    urfd_csv: Path | None = None
    normal: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fight or self.nofight or self.fall_videos or self.urfd_csv or self.normal)


def plan_for(root: Path, limit: int | None = None) -> Plan:
    """What to evaluate under ``root`` (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected fight/ and nofight/, or a data root "
                         "with scfd-dev/, falls/, normal/, mot/)")
    scfd = root if (root / "fight").is_dir() or (root / "nofight").is_dir() else root / "scfd-dev"
    cut = (lambda xs: tuple(xs[:limit])) if limit else tuple
    fight = cut(_videos(scfd / "fight")) if (scfd / "fight").is_dir() else ()
    nofight = cut(_videos(scfd / "nofight")) if (scfd / "nofight").is_dir() else ()
    falls = root / "falls"
    fall_videos = cut(_videos(falls)) if falls.is_dir() else ()
    urfd = falls / URFD_CSV if (falls / URFD_CSV).is_file() else None
    normal: list[Path] = []
    if (root / "normal").is_dir():
        normal += _videos(root / "normal")
    if (root / "mot").is_dir():
        for seq in sorted(p for p in (root / "mot").iterdir() if p.is_dir()):
            if (seq / "video.mp4").is_file():
                normal.append(seq / "video.mp4")
            elif (seq / "img1").is_dir():
                normal.append(seq / "img1")
    plan = Plan(fight, nofight, fall_videos, urfd, cut(normal))
    if not plan:
        raise InputError(f"{root}: nothing to evaluate (expected fight/ and nofight/ video folders, or "
                         "scfd-dev/, falls/, normal/, mot/)")
    return plan


def _clip_name(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}" if path.name == "img1" else \
        (f"{path.parent.name}/{path.name}")


def evaluate(root: Path, app_cfg: AppConfig, cfg: BehaviourConfig | None = None, *, limit: int | None = None,
             progress: Callable[[str], None] | None = None, with_objects: bool = True) -> EvalReport:
    """``with_objects``: also run the object stage and report the weapon pattern."""
    cfg = cfg or getattr(app_cfg, "behaviour", None) or BehaviourConfig()
    plan = plan_for(root, limit)
    start = time.monotonic()
    report = EvalReport()
    videos = bool(plan.fight or plan.nofight or plan.fall_videos or plan.normal)
    pipeline = SkeletonPipeline(app_cfg, with_objects=with_objects) if videos else None
    groups = (("fight", plan.fight, report.fight), ("nofight", plan.nofight, report.nofight),
              ("fall", plan.fall_videos, report.fall_videos), ("normal", plan.normal, report.normal))
    for label, paths, out in groups:
        for path in paths:
            assert pipeline is not None     # there are videos
            try:
                events, n_frames, span = analyse_clip(pipeline, path, cfg)
            except InputError as exc:
                # One broken file must not throw away an hour of evaluation: it is listed and
                # left out of the figures, and the command's exit status says so.
                report.unreadable.append((_clip_name(path), label, str(exc)))
                if progress:
                    progress(f"{label:8s} {_clip_name(path)}: UNREADABLE ({exc})")
                continue
            result = ClipResult(_clip_name(path), label, tuple(events), n_frames, span)
            out.append(result)
            if progress:
                progress(f"{label:8s} {result.name}: {', '.join(result.patterns()) or '-'}")
    if pipeline is not None and pipeline.objects is not None:
        report.object_crops, report.object_seconds = pipeline.object_crops, pipeline.object_seconds
    if plan.urfd_csv is not None:
        report.urfd = evaluate_urfd(plan.urfd_csv, cfg, app_cfg.analysis.fps)
    report.seconds = time.monotonic() - start
    return report
