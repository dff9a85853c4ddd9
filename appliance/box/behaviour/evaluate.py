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
from appliance.box.behaviour.stage2 import AnalysedFrame
from appliance.box.config import AppConfig
from appliance.common.errors import InputError
from appliance.contracts.types import KP, NUM_KEYPOINTS, Event, Pattern, TrackedFrame, TrackedPerson

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
URFD_CSV = "urfd_pose_3classes.csv"
#: UR Fall was recorded at 30 fps, 640×480; the CSV's coordinates are normalised to that frame.
URFD_FPS, URFD_SIZE = 30.0, (640, 480)
#: The CSV's 13 keypoints (COCO indices 0 and 5..16), in its column order.
URFD_KEYPOINTS = (KP["nose"], *range(5, 17))


# ---------------------------------------------------------------------------------------
# Running the pipeline


class AnalysisGrid:
    """Which source frames are analysed: the same grid as the runtime's offline driver — a frame
    is taken when its time reaches the next tick of ``period`` seconds; a gap in the source
    restarts the grid at the next frame."""

    def __init__(self, period: float):
        self.period = period
        self._next_t: float | None = None

    def take(self, t: float) -> bool:
        if self._next_t is not None and t < self._next_t - 1e-6:
            return False
        nxt = self._next_t
        self._next_t = t + self.period if nxt is None or nxt + self.period <= t else nxt + self.period
        return True


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


#: Bump when what a cached frame holds changes (pose, tracking, stage 1 or stage 2 code).
CACHE_VERSION = "stage2-v3"   # v2: relative motion (optical flow) in the evidence; v3: shared re-pose


class SkeletonPipeline:
    """Pose → tracker → stage 1 → stage 2 for one video at a time (the estimator is loaded once).

    What the runtime's pixel process does per analysed frame (appliance/box/runtime.py), offline:
    the previous analysed frame stands in for the ring's frame one analysis period earlier.
    ``cache_dir``: keep each video's analysed frames (skeletons and stage-2 numbers, never
    pixels) in a pickle keyed by the video and every setting that shapes them, so a second run
    costs no pose inference. Off by default.
    """

    def __init__(self, app_cfg: AppConfig, cache_dir: Path | None = None, *, with_objects: bool = False):
        from appliance.box.behaviour.stage2 import Stage2
        from appliance.box.pose import estimator_from_config

        self.cfg = app_cfg
        self.estimator = estimator_from_config(app_cfg.pose)
        # The object stage (weapon pattern) runs when ``with_objects``, on the budget and crops of
        # ``[objects]``; offline it scans without the behaviour stage's focus (no feedback loop).
        self.objects = None
        if with_objects:
            from appliance.box.objects import ObjectStage

            self.objects = ObjectStage(app_cfg.objects, models_dir=app_cfg.pose.models_dir or None)
        self.object_crops = 0          # detector runs, for the cost line of the report
        self.object_seconds = 0.0
        b = app_cfg.behaviour
        self.stage2 = Stage2(self.estimator, max_regions=b.stage2_max_regions, zoom=b.stage2_zoom)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def _cache_path(self, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        import hashlib

        b = self.cfg.behaviour
        key = repr((CACHE_VERSION, str(path.resolve()), path.stat().st_mtime_ns, self.cfg.pose, self.cfg.tracking,
                    self.cfg.ring.max_width, self.cfg.analysis.fps, b.stage2_max_regions, b.stage2_zoom))
        if self.objects is not None:   # the scans are cached too
            key += repr(self.cfg.objects)
        return self.cache_dir / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl"

    def analysed_frames(self, path: Path) -> list[AnalysedFrame]:
        import pickle

        cached = self._cache_path(path)
        if cached is not None and cached.is_file():
            with open(cached, "rb") as f:
                return pickle.load(f)
        frames = list(self._analyse(path))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(frames, f, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(cached)
        return frames

    def tracked_frames(self, path: Path) -> Iterator[TrackedFrame]:
        for af in self.analysed_frames(path):
            yield af.tracked

    def _analyse(self, path: Path) -> Iterator[AnalysedFrame]:
        from appliance.box.behaviour.stage2 import CandidateGate
        from appliance.box.tracking import Tracker

        tracker = Tracker(self.cfg.tracking)
        gate = CandidateGate()
        grid = AnalysisGrid(1.0 / self.cfg.analysis.fps)
        prev_image, prev_t = None, 0.0
        for index, (t, image) in enumerate(video_frames(path, self.cfg.ring.max_width)):
            if not grid.take(t):
                continue
            tracker.frame_size = (image.shape[1], image.shape[0])
            dets = self.estimator(image)
            dets = type(dets)(index, t, dets.boxes, dets.scores, dets.keypoints)
            tracked = tracker.update(dets)
            evidence = self.stage2.measure(image, prev_image, gate.update(tracked), tracked, t - prev_t)
            prev_image, prev_t = image, t
            scan = None
            if self.objects is not None:
                started = time.perf_counter()
                scan = self.objects.update(image, tracked, set())
                self.object_seconds += time.perf_counter() - started
                self.object_crops += len(scan.scanned)
            yield AnalysedFrame(tracked, evidence, scan)


def run_analyzer(frames: Iterable[TrackedFrame | AnalysedFrame], cfg: BehaviourConfig | None = None) -> list[Event]:
    """Events of one stream; frames are tracked frames (skeletons only: no violent pattern can
    be confirmed) or analysed frames (skeletons and stage-2 evidence)."""
    analyzer = BehaviourAnalyzer(cfg)
    events: list[Event] = []
    for frame in frames:
        if isinstance(frame, AnalysedFrame):
            events += analyzer.update(frame.tracked, frame.evidence)
        else:
            events += analyzer.update(frame)
    return events + analyzer.flush()


# ---------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class ClipResult:
    name: str
    label: str              # fight, nofight, fall, ordinary
    events: tuple[Event, ...]
    frames: int             # analysed frames
    seconds: float          # stream time covered (analysed frames x analysis period)
    #: (t, highest stage-2 fight probability among regions with two-person evidence, 0 if none)
    #: per analysed frame: what the DET curve sweeps its threshold over.
    fight_trace: tuple[tuple[float, float], ...] = ()

    @property
    def violent(self) -> bool:
        return any(e.pattern.violent for e in self.events)

    @property
    def weapons(self) -> list[Event]:
        return [e for e in self.events if e.pattern is Pattern.WEAPON]

    def patterns(self) -> list[str]:
        return sorted({e.pattern.value for e in self.events})


def _firing(clip: ClipResult, e: Event) -> dict[str, Any]:
    return {"clip": clip.name, "t_s": round(e.end_t, 2), "pattern": e.pattern.value,
            "tracks": list(e.track_ids), "confidence": round(float(e.confidence), 3),
            "explanation": dict(e.explanation)}


def alarms_at(trace: tuple[tuple[float, float], ...], threshold: float, consecutive: int,
              gap_s: float, repeat_s: float) -> int:
    """How many fight alarms a probability trace raises at ``threshold``: runs of
    ``consecutive`` frames at or above it open an episode, reported again every ``repeat_s``
    while it lasts; it ends after ``gap_s`` without evidence (the analyzer's episode rule,
    one region at a time)."""
    alarms, run, last_hit, reported = 0, 0, None, None
    for t, p in trace:
        run = run + 1 if p >= threshold else 0
        if last_hit is not None and t - last_hit > gap_s:
            reported = None
        if run >= consecutive:
            if reported is None or t - reported >= repeat_s:
                alarms += 1
                reported = t
            last_hit = t
    return alarms


@dataclass
class EvalReport:
    fight: list[ClipResult] = field(default_factory=list)
    nofight: list[ClipResult] = field(default_factory=list)
    fall_videos: list[ClipResult] = field(default_factory=list)
    ordinary: list[ClipResult] = field(default_factory=list)
    urfd: dict[str, Any] | None = None
    seconds: float = 0.0
    profile: str = ""
    #: The fight classifier's operating point: (threshold, consecutive windows, gap, repeat).
    operating_point: tuple[float, int, float, float] | None = None
    #: Which events the profile permits: pattern -> permitted (filled by evaluate()).
    permitted: Callable[[Event], bool] | None = None
    #: Clips that could not be decoded: (name, label, reason). Left out of every figure, listed.
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    #: Object stage cost: detector runs and their seconds (None: the stage did not run).
    object_crops: int | None = None
    object_seconds: float = 0.0

    def weapon_summary(self) -> dict[str, Any] | None:
        """Weapon events: per hour on the ordinary footage (where nobody holds a knife or bat:
        every one is a false alarm), and where else they fired."""
        if self.object_crops is None:
            return None
        ordinary = self.ordinary_clips()
        hours = sum(c.seconds for c in ordinary) / 3600.0
        false = [e for c in ordinary for e in c.weapons]

        def listing(clips: list[ClipResult]) -> dict[str, list[str]]:
            return {c.name: [f"{e.explanation.get('object')} {e.explanation.get('score')} "
                             f"{e.explanation.get('hand')} hand, {e.explanation.get('frames')} frames"
                             for e in c.weapons] for c in clips if c.weapons}

        analysed = sum(c.frames for c in self.fight + self.nofight + self.fall_videos + self.ordinary)
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

    def _permitted_violent(self, clip: ClipResult) -> list[Event]:
        ok = self.permitted or (lambda e: True)
        return [e for e in clip.events if e.pattern.violent and ok(e)]

    def fight_summary(self) -> dict[str, Any] | None:
        if not self.fight and not self.nofight:
            return None
        fight_recall = float(np.mean([c.violent for c in self.fight])) if self.fight else math.nan
        nofight_recall = float(np.mean([not c.violent for c in self.nofight])) if self.nofight else math.nan
        return {
            "fight_clips": len(self.fight), "nofight_clips": len(self.nofight),
            "fight_recall": round(fight_recall, 4), "nofight_recall": round(nofight_recall, 4),
            "nofight_false_alarm_rate": round(1.0 - nofight_recall, 4),
            "balanced_accuracy": round(0.5 * (fight_recall + nofight_recall), 4),
            "patterns_in_fight": dict(Counter(p for c in self.fight for p in c.patterns())),
            "patterns_in_nofight": dict(Counter(p for c in self.nofight for p in c.patterns())),
            "triggered_fights": [c.name for c in self.fight if self._permitted_violent(c)],
            "missed_fights": [c.name for c in self.fight if not c.violent],
            "false_fights": [c.name for c in self.nofight if c.violent],
        }

    def ordinary_clips(self) -> list[ClipResult]:
        """All ordinary footage: the no-fight clips and every ordinary scene."""
        return [*self.nofight, *self.ordinary]

    def false_alarm_summary(self) -> dict[str, Any] | None:
        clips = self.ordinary_clips()
        if not clips:
            return None
        hours = sum(c.seconds for c in clips) / 3600.0
        firings = [_firing(c, e) for c in clips for e in self._permitted_violent(c)]
        return {
            "profile": self.profile,
            "clips": len(clips),
            "camera_hours": round(hours, 4),
            "permitted_violent_triggers": len(firings),
            "false_alarms_per_camera_hour": round(len(firings) / hours, 2) if hours else math.nan,
            "violent_events_any_profile": sum(1 for c in clips for e in c.events if e.pattern.violent),
            "fall_or_lying_events": sum(1 for c in clips for e in c.events if e.pattern in (Pattern.FALL, Pattern.LYING)),
            "firings": firings,
            "per_clip": {c.name: c.patterns() for c in self.ordinary},
        }

    def falls_summary(self) -> dict[str, Any] | None:
        if not self.fall_videos:
            return None
        return {
            "videos": len(self.fall_videos),
            "fall_detected": sum(1 for c in self.fall_videos if any(e.pattern is Pattern.FALL for e in c.events)),
            "violent_events_permitted": sum(len(self._permitted_violent(c)) for c in self.fall_videos),
            "violent_events_any_profile": sum(1 for c in self.fall_videos for e in c.events if e.pattern.violent),
            "firings": [_firing(c, e) for c in self.fall_videos for e in c.events if e.pattern.violent],
            "per_clip": {c.name: c.patterns() for c in self.fall_videos},
        }

    def _permitted_rules(self, clip: ClipResult) -> list[Event]:
        """Permitted violent events that are not the classifier's ``fight`` (strike, kick, push,
        strangle): they do not depend on the classifier's threshold."""
        return [e for e in self._permitted_violent(clip) if e.pattern is not Pattern.FIGHT]

    def det_curve(self, thresholds: Iterable[float] | None = None) -> list[dict[str, float]]:
        """Fight recall (scfd fight clips) against false alarms per camera-hour (all ordinary
        footage) when the fight classifier's threshold is swept; the other settings as configured.

        Two pairs of columns: the classifier alone, and ``with_rules_*`` — what an operator gets
        at that threshold: a fight clip counts as found when the classifier or a permitted
        strike/kick/push/strangle fires in it, and the rules' permitted alarms on ordinary
        footage are added (an upper bound: a rule and a fight of one region are one episode)."""
        if self.operating_point is None or not self.fight:
            return []
        _, consecutive, gap, repeat = self.operating_point
        clips = self.ordinary_clips()
        hours = sum(c.seconds for c in clips) / 3600.0
        rule_found = [bool(self._permitted_rules(c)) for c in self.fight]
        rule_alarms = sum(len(self._permitted_rules(c)) for c in clips)
        rows = []
        if thresholds is None:   # a grid, plus the default operating point itself
            thresholds = sorted({*np.round(np.arange(0.02, 1.0, 0.02), 2).tolist(), self.operating_point[0]})
        for thr in thresholds:
            found = [alarms_at(c.fight_trace, thr, consecutive, gap, repeat) > 0 for c in self.fight]
            alarms = sum(alarms_at(c.fight_trace, thr, consecutive, gap, repeat) for c in clips)
            both = [a or r for a, r in zip(found, rule_found, strict=True)]
            rows.append({"threshold": float(thr), "fight_recall": round(float(np.mean(found)), 4),
                         "false_alarms_per_camera_hour": round(alarms / hours, 2) if hours else math.nan,
                         "with_rules_fight_recall": round(float(np.mean(both)), 4),
                         "with_rules_false_alarms_per_camera_hour":
                             round((alarms + rule_alarms) / hours, 2) if hours else math.nan})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "weapon": self.weapon_summary(),
            "fight": self.fight_summary(),
            "false_alarms": self.false_alarm_summary(),
            "falls": self.falls_summary(),
            "urfd_csv": self.urfd,
            "operating_point": None if self.operating_point is None else {
                "threshold": self.operating_point[0], "consecutive_windows": self.operating_point[1]},
            "unreadable": [{"clip": n, "folder": lab, "reason": why} for n, lab, why in self.unreadable],
            "seconds": round(self.seconds, 1),
        }


def write_det(report: EvalReport, csv_path: Path, png_path: Path | None = None) -> list[dict[str, float]]:
    """The DET trade-off as CSV and (drawn with OpenCV) PNG, the default operating point marked."""
    rows = report.det_curve()
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["threshold", "fight_recall", "false_alarms_per_camera_hour", "with_rules_fight_recall",
                               "with_rules_false_alarms_per_camera_hour", "default"])
        w.writeheader()
        thr0 = report.operating_point[0] if report.operating_point else None
        for r in rows:
            w.writerow({**r, "default": int(thr0 is not None and abs(r["threshold"] - thr0) < 1e-9)})
    if png_path is not None and rows:
        _draw_det(rows, report, png_path)
    return rows


def _draw_det(rows: list[dict[str, float]], report: EvalReport, path: Path) -> None:
    W, H, L, B, T, R = 720, 480, 70, 60, 40, 20
    img = np.full((H, W, 3), 255, np.uint8)
    fa = np.array([r["false_alarms_per_camera_hour"] for r in rows], float)
    rec = np.array([r["fight_recall"] for r in rows], float)
    fa_all = np.array([r["with_rules_false_alarms_per_camera_hour"] for r in rows], float)
    rec_all = np.array([r["with_rules_fight_recall"] for r in rows], float)
    fmax = max(1.0, float(np.nanmax(fa_all)) * 1.05)
    xlog = lambda v: L + (W - L - R) * math.log10(1 + v) / math.log10(1 + fmax)  # noqa: E731
    ylin = lambda v: H - B - (H - B - T) * v  # noqa: E731
    cv2.rectangle(img, (L, T), (W - R, H - B), (0, 0, 0), 1)
    for tick in [0, 1, 3, 10, 30, 100, 300, 1000, 3000]:
        if tick <= fmax:
            x = int(xlog(tick))
            cv2.line(img, (x, H - B), (x, H - B + 5), (0, 0, 0), 1)
            cv2.putText(img, str(tick), (x - 8, H - B + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for frac in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        y = int(ylin(frac))
        cv2.line(img, (L - 5, y), (L, y), (0, 0, 0), 1)
        cv2.putText(img, f"{frac:.1f}", (L - 40, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    x1 = int(xlog(1.0))
    cv2.line(img, (x1, T), (x1, H - B), (180, 180, 180), 1)
    pts = np.array([[int(xlog(f)), int(ylin(r))] for f, r in zip(fa, rec, strict=True)], np.int32)
    cv2.polylines(img, [pts], False, (200, 80, 0), 2)
    pts_all = np.array([[int(xlog(f)), int(ylin(r))] for f, r in zip(fa_all, rec_all, strict=True)], np.int32)
    cv2.polylines(img, [pts_all], False, (0, 140, 0), 1)
    cv2.putText(img, "blue: classifier alone; green: with the strike/kick/push/strangle rules", (L + 5, T + 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    if report.operating_point is not None:
        thr = report.operating_point[0]
        r0 = min(rows, key=lambda r: abs(r["threshold"] - thr))
        for fa_key, rec_key in (("false_alarms_per_camera_hour", "fight_recall"),
                                ("with_rules_false_alarms_per_camera_hour", "with_rules_fight_recall")):
            p0 = (int(xlog(r0[fa_key])), int(ylin(r0[rec_key])))
            cv2.circle(img, p0, 7, (0, 0, 220), 2)
        cv2.putText(img, f"default p>={thr:.2f}", (p0[0] + 10, p0[1] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 220), 1)
    cv2.putText(img, "false alarms per camera-hour (all ordinary footage, log scale)", (L, H - 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(img, "fight recall (scfd-dev fight clips) vs threshold of the stage-2 classifier", (L, 25),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def format_report(report: EvalReport) -> str:
    lines: list[str] = []
    fs = report.fight_summary()
    if fs:
        lines += [
            f"fight/no-fight ({fs['fight_clips']} + {fs['nofight_clips']} clips; a clip is 'fight' "
            "if any violent pattern fires)",
            f"  fight recall      {fs['fight_recall']:.1%}",
            f"  no-fight false alarm rate {fs['nofight_false_alarm_rate']:.1%}",
            f"  balanced accuracy {fs['balanced_accuracy']:.1%}",
            f"  patterns fired in fight clips:    {fs['patterns_in_fight'] or '-'}",
            f"  patterns fired in no-fight clips: {fs['patterns_in_nofight'] or '-'}",
            f"  fight clips that trigger under {report.profile}: {', '.join(fs['triggered_fights']) or '-'}",
        ]
    fa = report.false_alarm_summary()
    if fa:
        lines += [
            f"FALSE ALARMS on all ordinary footage ({fa['clips']} clips, {fa['camera_hours'] * 60:.1f} camera-minutes): "
            f"{fa['permitted_violent_triggers']} permitted violent triggers under {fa['profile']} = "
            f"{fa['false_alarms_per_camera_hour']} per camera-hour "
            f"(violent events under any profile {fa['violent_events_any_profile']}; fall/lying {fa['fall_or_lying_events']})",
        ] + [f"    {f['clip']} t={f['t_s']} s {f['pattern']} tracks {f['tracks']} conf {f['confidence']}: "
             f"{f['explanation']}" for f in fa["firings"]]
        lines += [f"    {name}: {pats or '-'}" for name, pats in fa["per_clip"].items()]
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
    fl = report.falls_summary()
    if fl:
        lines += [
            f"FALL-ONLY footage ({fl['videos']} videos): fall found in {fl['fall_detected']}; violent patterns "
            f"permitted under {report.profile}: {fl['violent_events_permitted']} (must be 0; under any profile "
            f"{fl['violent_events_any_profile']})",
        ] + [f"    {f['clip']} t={f['t_s']} s {f['pattern']}: {f['explanation']}" for f in fl["firings"]] \
          + [f"    {name}: {pats or '-'}" for name, pats in fl["per_clip"].items()]
    ws = report.weapon_summary()
    if ws:
        lines += [
            f"weapon (object near a wrist in >= objects.min_frames consecutive scans; "
            f"{ws['crops_per_analysed_frame']} crops per analysed frame, {ws['ms_per_crop']} ms per crop)",
            f"  ordinary footage ({ws['ordinary_hours'] * 3600:.0f} s): "
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
    grid = AnalysisGrid(1.0 / fps)
    for age, (number, kp, label) in enumerate(frames):
        t = number / URFD_FPS
        if not grid.take(t):
            continue
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
    ordinary: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fight or self.nofight or self.fall_videos or self.urfd_csv or self.ordinary)


#: Folders of ordinary footage (every violent trigger there is a false alarm) under a data root.
ORDINARY_FOLDERS = ("normal", "hard-negative", "samples")
#: Folders of single-person falls (a violent pattern there records a helpless person as a crime).
FALL_FOLDERS = ("falls", "falls-extra")


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
    fall_videos: list[Path] = []
    for name in FALL_FOLDERS:
        if (root / name).is_dir():
            fall_videos += cut(_videos(root / name))
    urfd = root / "falls" / URFD_CSV if (root / "falls" / URFD_CSV).is_file() else None
    ordinary: list[Path] = []
    for name in ORDINARY_FOLDERS:
        if (root / name).is_dir():
            ordinary += cut(_videos(root / name))
    if (root / "mot").is_dir():
        for seq in sorted(p for p in (root / "mot").iterdir() if p.is_dir()):
            if (seq / "video.mp4").is_file():
                ordinary.append(seq / "video.mp4")
            elif (seq / "img1").is_dir():
                ordinary.append(seq / "img1")
    plan = Plan(fight, nofight, tuple(fall_videos), urfd, tuple(ordinary))
    if not plan:
        raise InputError(f"{root}: nothing to evaluate (expected fight/ and nofight/ video folders, or "
                         "scfd-dev/, falls/, falls-extra/, normal/, hard-negative/, samples/, mot/)")
    return plan


def _clip_name(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}" if path.name == "img1" else \
        (f"{path.parent.name}/{path.name}")


def clip_result(name: str, label: str, frames: list[AnalysedFrame], cfg: BehaviourConfig,
                period: float, objects=None) -> ClipResult:
    analyzer = BehaviourAnalyzer(cfg, objects=objects)
    events: list[Event] = []
    trace: list[tuple[float, float]] = []
    for af in frames:
        events += analyzer.update(af.tracked, af.evidence, getattr(af, "scan", None))
        trace.append((af.tracked.t, analyzer.fight_probability))
    events += analyzer.flush()
    return ClipResult(name, label, tuple(events), len(frames), len(frames) * period, tuple(trace))


def evaluate(root: Path, app_cfg: AppConfig, cfg: BehaviourConfig | None = None, *, limit: int | None = None,
             progress: Callable[[str], None] | None = None, cache_dir: Path | None = None,
             profile: str | None = None, with_objects: bool = True) -> EvalReport:
    """``with_objects``: also run the object stage and report the weapon pattern."""
    from appliance.box.policy import PolicyGate, ZoneSet, load_profile

    cfg = cfg or getattr(app_cfg, "behaviour", None) or BehaviourConfig()
    plan = plan_for(root, limit)
    start = time.monotonic()
    prof = load_profile(profile or app_cfg.policy.profile, app_cfg.policy.profiles_dir or None)
    gate = PolicyGate(prof, ZoneSet.from_regions((), 1, 1))
    report = EvalReport(profile=prof.id, permitted=lambda e: gate.decide(e, {}).permitted)
    probe = BehaviourAnalyzer(cfg)
    if probe.fight_model is not None:
        report.operating_point = (probe.fight_threshold, probe.fight_model.consecutive_windows,
                                  cfg.episode_gap_s, cfg.repeat_s)
    pipeline = SkeletonPipeline(app_cfg, cache_dir, with_objects=with_objects) if (
        plan.fight or plan.nofight or plan.fall_videos or plan.ordinary) else None
    period = 1.0 / app_cfg.analysis.fps
    groups = (("fight", plan.fight, report.fight), ("nofight", plan.nofight, report.nofight),
              ("fall", plan.fall_videos, report.fall_videos), ("ordinary", plan.ordinary, report.ordinary))
    for label, paths, out in groups:
        for path in paths:
            assert pipeline is not None   # made whenever any group has paths
            try:
                frames = pipeline.analysed_frames(path)
            except InputError as exc:
                # One broken file must not throw away an hour of evaluation: it is listed and
                # left out of the figures, and the command's exit status says so.
                report.unreadable.append((_clip_name(path), label, str(exc)))
                if progress:
                    progress(f"{label:8s} {_clip_name(path)}: UNREADABLE ({exc})")
                continue
            result = clip_result(_clip_name(path), label, frames, cfg, period, app_cfg.objects)
            out.append(result)
            if progress:
                progress(f"{label:8s} {result.name}: {', '.join(result.patterns()) or '-'}")
    if pipeline is not None and pipeline.objects is not None:
        report.object_crops, report.object_seconds = pipeline.object_crops, pipeline.object_seconds
    if plan.urfd_csv is not None:
        report.urfd = evaluate_urfd(plan.urfd_csv, cfg, app_cfg.analysis.fps)
    report.seconds = time.monotonic() - start
    return report
