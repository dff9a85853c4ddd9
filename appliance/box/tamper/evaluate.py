"""`appliance tamper eval DIR`: tamper detection measured on real footage with tampering applied.

Nothing here is stored: the tampering (black and partial cover, Gaussian blur of rising sigma,
translation and rotation of the view, saturation, frozen frames, an infrared night switch) is
applied in memory to real frames, and only figures are printed.

A *case* is one fixed-camera video and one tamper: the reference is learnt from the first
seconds as `provision check` would, the clean view runs for ``clean_s``, then the tamper is
applied for ``persist_s + 20 s``. Videos shorter than a case are played forwards and backwards
(the motion stays real and continuous). Detection = the expected kind is raised while the
tamper lasts; delay = from the tamper's onset (it includes persist_s). False alarms = any
tamper raised on the untampered footage (every ordinary clip as it is, and the clean part of
every case), per hour of footage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.box.config import AppConfig
from appliance.box.tamper.detector import TamperDetector, TamperKind
from appliance.box.tamper.reference import ReferenceError, TamperReference, learn_from_images
from appliance.common.errors import InputError

#: The reference is learnt from this many frames spread over the first REFERENCE_S seconds.
REFERENCE_FRAMES = 10
REFERENCE_S = 5.0
CLEAN_S = 15.0
AFTER_PERSIST_S = 10.0

Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]   # (frame, frame at onset) -> tampered


def _black(f: np.ndarray, _: np.ndarray) -> np.ndarray:
    return np.zeros_like(f)


def _partial(share: float) -> Transform:
    def apply(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        out = f.copy()
        w = round(f.shape[1] * share)
        # A dark cloth or hand over the lens: nearly flat, a little sensor noise.
        rng = np.random.default_rng(int(f[0, 0, 0]))
        out[:, :w] = np.clip(35 + rng.normal(0, 1.5, (f.shape[0], w, 1)), 0, 255).astype(np.uint8)
        return out
    return apply


def _blur(sigma: float) -> Transform:
    def apply(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        # Optical blur happens before the sensor: its noise is added after (sigma 1.5 levels).
        blurred = cv2.GaussianBlur(f, (0, 0), sigma).astype(np.float32)
        noise = np.random.default_rng(int(f[0, 0, 0])).normal(0, 1.5, (*f.shape[:2], 1))
        return np.clip(blurred + noise, 0, 255).astype(np.uint8)
    return apply


def _shift(share: float) -> Transform:
    def apply(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        h, w = f.shape[:2]
        m = np.array([[1, 0, share * w], [0, 1, 0]], np.float32)
        return cv2.warpAffine(f, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return apply


def _rotate(degrees: float) -> Transform:
    def apply(f: np.ndarray, _: np.ndarray) -> np.ndarray:
        h, w = f.shape[:2]
        return cv2.warpAffine(f, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                              borderMode=cv2.BORDER_REFLECT)
    return apply


def _saturate(gain: float, offset: float) -> Transform:
    return lambda f, _: np.clip(f.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _frozen(_: np.ndarray, onset: np.ndarray) -> np.ndarray:
    return onset


def infrared(f: np.ndarray, _: np.ndarray | None = None) -> np.ndarray:
    """A camera's night mode: monochrome, flatter and noisier (simulated on a day frame)."""
    grey = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32)
    rng = np.random.default_rng(int(grey[0, 0]))
    grey = np.clip(0.7 * grey + 20 + rng.normal(0, 2.0, grey.shape), 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


@dataclass(frozen=True)
class Tamper:
    name: str
    kind: TamperKind
    transform: Transform


TAMPERS: tuple[Tamper, ...] = (
    Tamper("black cover", TamperKind.COVERED, _black),
    Tamper("partial cover 60%", TamperKind.COVERED, _partial(0.6)),
    Tamper("partial cover 80%", TamperKind.COVERED, _partial(0.8)),
    Tamper("blur sigma 1", TamperKind.DEFOCUSED, _blur(1.0)),
    Tamper("blur sigma 2", TamperKind.DEFOCUSED, _blur(2.0)),
    Tamper("blur sigma 4", TamperKind.DEFOCUSED, _blur(4.0)),
    Tamper("blur sigma 8", TamperKind.DEFOCUSED, _blur(8.0)),
    Tamper("shift 2%", TamperKind.MOVED, _shift(0.02)),
    Tamper("shift 5%", TamperKind.MOVED, _shift(0.05)),
    Tamper("shift 10%", TamperKind.MOVED, _shift(0.10)),
    Tamper("rotate 3deg", TamperKind.MOVED, _rotate(3.0)),
    Tamper("rotate 8deg", TamperKind.MOVED, _rotate(8.0)),
    Tamper("saturation x3", TamperKind.BLINDED, _saturate(3.0, 60.0)),
    Tamper("white-out (torch)", TamperKind.BLINDED, _saturate(0.1, 240.0)),
    Tamper("frozen frames", TamperKind.FROZEN, _frozen),
)


# -- footage ----------------------------------------------------------------------------


class Footage:
    """The frames of one video at the times a run needs, decoded once (RAM only)."""

    def __init__(self, path: Path, max_width: int, wanted: Callable[[float], Sequence[float]]):
        """Decodes ``path``; keeps the frames nearest to ``wanted(duration)`` (source times)."""
        from appliance.box.behaviour.evaluate import video_frames

        self.path = path
        self.times = np.asarray([t for t, _ in video_frames_times(path)], float)
        if not len(self.times):
            raise InputError(f"{path}: no decodable frames")
        self.duration = float(self.times[-1] + (self.times[1] - self.times[0] if len(self.times) > 1 else 0.1))
        keep = set(self._index(np.asarray(wanted(self.duration), float)).tolist())
        self.keep = {i: image for i, (_t, image) in enumerate(video_frames(path, max_width)) if i in keep}

    def _index(self, t: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.times, t - 1e-6).clip(0, len(self.times) - 1)

    def at(self, t: float) -> np.ndarray:
        return self.keep[int(self._index(np.asarray([t]))[0])]


def video_frames_times(path: Path) -> Iterable[tuple[float, None]]:
    """Presentation times of every frame, without keeping pixels."""
    from appliance.box.behaviour.evaluate import video_frames

    for t, _ in video_frames(path, 160):
        yield t, None


def ping_pong(t: float, duration: float) -> float:
    """Source time for a play-forwards-then-backwards loop of a ``duration`` clip."""
    period = 2 * duration
    x = t % period
    return x if x < duration else period - x


def reference_times(duration: float) -> list[float]:
    span = min(REFERENCE_S, duration / 2)
    return [span * i / REFERENCE_FRAMES for i in range(REFERENCE_FRAMES)]


# -- running a detector over a timeline ----------------------------------------------------


@dataclass
class RunResult:
    samples: int = 0
    condition_samples: int = 0                    # samples where any condition held
    raised: list[tuple[float, str]] = field(default_factory=list)   # (t, kind)
    seconds: float = 0.0
    cost_s: float = 0.0


class Persons:
    """Person boxes per frame from the bundled pose model (or none). Untampered frames are
    decoded once and shared by every case, so their boxes are remembered (by identity)."""

    def __init__(self, cfg: AppConfig | None):
        self.estimator = None
        self.threshold = 0.5
        self._memo: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        if cfg is not None:
            from appliance.box.pose import estimator_from_config

            self.estimator = estimator_from_config(cfg.pose)
            self.threshold = cfg.tracking.high_score

    def __call__(self, image: np.ndarray, *, shared: bool = False) -> np.ndarray | None:
        if self.estimator is None:
            return None
        if shared:
            hit = self._memo.get(id(image))
            if hit is not None and hit[0] is image:
                return hit[1]
        dets = self.estimator(image)
        boxes = dets.boxes[dets.scores >= self.threshold] if len(dets.boxes) else None
        if shared:
            self._memo[id(image)] = (image, boxes)
        return boxes

    def forget(self) -> None:
        """Drops the remembered boxes (and the frames they pin) before the next video."""
        self._memo.clear()


def learn_reference(images: Sequence[np.ndarray], persons: Persons, cfg: AppConfig) -> TamperReference:
    mode, ref = learn_from_images(images, [persons(im, shared=True) for im in images], source="provision",
                                  night_max_chroma=cfg.tamper.night_max_chroma)
    return TamperReference({mode: ref})


def run_timeline(detector: TamperDetector, frames: Iterable[tuple[float, np.ndarray, bool]], persons: Persons,
                 result: RunResult) -> RunResult:
    """``frames``: (t, image, shared) — shared = an untampered frame of the decoded footage."""
    t0 = None
    for t, image, shared in frames:
        boxes = persons(image, shared=shared)
        c0 = time.perf_counter()
        events = detector.update(image, t, wall=t, person_boxes=boxes)
        result.cost_s += time.perf_counter() - c0
        result.samples += 1
        t0 = t if t0 is None else t0
        result.seconds = max(result.seconds, t - t0)
        last = detector.last
        assert last is not None
        if last.condition is not None or last.frozen:
            result.condition_samples += 1
        result.raised += [(e.t, e.kind.value) for e in events if e.state == "raised"]
    return result


# -- the evaluation -----------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    video: str
    tamper: str
    kind: str
    detected: bool
    delay_s: float | None
    false_raised: int         # raised before the onset, or of another kind
    other_kinds: tuple[str, ...]


@dataclass
class TamperEvalReport:
    cases: list[CaseResult] = field(default_factory=list)
    ordinary: list[dict[str, Any]] = field(default_factory=list)
    night: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    no_reference: list[str] = field(default_factory=list)   # views too bare to provision: no cases
    samples: int = 0
    cost_s: float = 0.0
    persist_s: float = 0.0

    def by_tamper(self) -> list[dict[str, Any]]:
        rows = []
        for t in TAMPERS:
            cs = [c for c in self.cases if c.tamper == t.name]
            if not cs:
                continue
            delays = [c.delay_s for c in cs if c.delay_s is not None]
            rows.append({"tamper": t.name, "kind": t.kind.value, "cases": len(cs),
                         "detected": sum(c.detected for c in cs),
                         "rate": round(sum(c.detected for c in cs) / len(cs), 3),
                         "delay_median_s": round(float(np.median(delays)), 1) if delays else None,
                         "delay_max_s": round(max(delays), 1) if delays else None,
                         "missed": [c.video for c in cs if not c.detected],
                         "also_raised": sorted({k for c in cs for k in c.other_kinds})})
        return rows

    def false_alarms(self) -> dict[str, Any]:
        ordinary = [o for o in self.ordinary if o["group"] == "ordinary"]
        ordinary_s = sum(o["seconds"] for o in ordinary)
        untampered_s = sum(o["seconds"] for o in self.ordinary) + len(self.cases) * CLEAN_S \
            + sum(n["clean_s"] for n in self.night)
        raised = sum(o["raised"] for o in self.ordinary) + sum(c.false_raised for c in self.cases) \
            + sum(n["false_raised"] for n in self.night)
        ordinary_raised = sum(o["raised"] for o in ordinary)
        return {"ordinary_raised": ordinary_raised, "ordinary_clips": len(ordinary),
                "ordinary_hours": round(ordinary_s / 3600, 3),
                "ordinary_per_hour": round(ordinary_raised * 3600 / ordinary_s, 2) if ordinary_s else None,
                "raised": raised, "hours": round(untampered_s / 3600, 3),
                "per_hour": round(raised * 3600 / untampered_s, 2) if untampered_s else None,
                "condition_share": round(sum(o["condition_samples"] for o in ordinary)
                                         / max(1, sum(o["samples"] for o in ordinary)), 4)}

    def to_json(self) -> dict[str, Any]:
        return {"persist_s": self.persist_s, "by_tamper": self.by_tamper(), "false_alarms": self.false_alarms(),
                "ordinary": self.ordinary, "night": self.night, "unreadable": self.unreadable,
                "no_reference": self.no_reference,
                "cost_ms_per_sample": round(1000 * self.cost_s / max(1, self.samples), 2),
                "cases": [vars(c) | {"other_kinds": list(c.other_kinds)} for c in self.cases]}


#: Untampered footage that is not ordinary street life, run for false tamper alarms too.
OTHER_UNTAMPERED = ("falls", "falls-extra")


def ordinary_videos(root: Path, *, other: bool = False) -> list[Path]:
    """Every clip of ordinary footage: normal/, scfd-dev/nofight/, mot/, hard-negative/, samples/
    (``other``: the untampered fall footage instead)."""
    from appliance.box.behaviour.evaluate import _videos

    out: list[Path] = []
    if other:
        return [v for sub in OTHER_UNTAMPERED if (root / sub).is_dir() for v in _videos(root / sub)]
    for sub in ("normal", "scfd-dev/nofight", "hard-negative", "samples"):
        if (root / sub).is_dir():
            out += _videos(root / sub)
    if (root / "mot").is_dir():
        for seq in sorted(p for p in (root / "mot").iterdir() if p.is_dir()):
            out.append(seq / "video.mp4" if (seq / "video.mp4").is_file() else seq / "img1")
    return out


def case_videos(root: Path) -> list[Path]:
    """Fixed-camera footage long enough to learn a reference: normal/ and mot/."""
    return [p for p in ordinary_videos(root) if p.parent.name != "nofight"
            and (p.parent.name == "normal" or p.parent.parent.name == "mot" or p.parent.name in ("TUD-Campus",))]


def _name(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}" if path.name in ("img1", "video.mp4") else \
        f"{path.parent.name}/{path.name}"


def evaluate_ordinary(path: Path, cfg: AppConfig, persons: Persons) -> dict[str, Any]:
    """False alarms: the clip as it is, reference from its first seconds, sampled at tamper.fps."""
    step = 1.0 / cfg.tamper.fps
    persons.forget()
    footage = Footage(path, cfg.ring.max_width, lambda d: reference_times(d) + list(np.arange(0.0, d, step)))
    refs = [footage.at(t) for t in reference_times(footage.duration)]
    result = RunResult()
    try:
        reference = learn_reference(refs, persons, cfg)
    except ReferenceError as exc:
        reference = None
        note = str(exc)
    else:
        note = ""
    detector = TamperDetector(cfg.tamper, reference)
    run_timeline(detector, ((t, footage.at(t), False) for t in np.arange(0.0, footage.duration, step)), persons,
                 result)
    return {"clip": _name(path), "seconds": round(footage.duration, 1), "samples": result.samples,
            "condition_samples": result.condition_samples, "raised": len(result.raised),
            "raised_kinds": sorted({k for _, k in result.raised}), "reference": note or "learnt",
            "cost_s": result.cost_s}


def evaluate_cases(path: Path, cfg: AppConfig, persons: Persons, tampers: Sequence[Tamper] = TAMPERS,
                   progress: Callable[[str], None] | None = None) -> tuple[list[CaseResult], RunResult]:
    step = 1.0 / cfg.tamper.fps
    tamper_s = cfg.tamper.persist_s + AFTER_PERSIST_S
    total = CLEAN_S + tamper_s
    times = np.arange(0.0, total, step) + step / 2   # off the ping-pong turning points
    persons.forget()
    footage = Footage(path, cfg.ring.max_width,
                           lambda d: reference_times(d) + [ping_pong(t, d) for t in times])
    reference = learn_reference([footage.at(t) for t in reference_times(footage.duration)], persons, cfg)
    results, cost = [], RunResult()
    for tamper in tampers:
        onset = footage.at(ping_pong(float(times[times >= CLEAN_S][0]), footage.duration))

        def frames(tamper=tamper, onset=onset):
            for t in times:
                image = footage.at(ping_pong(t, footage.duration))
                yield (t, tamper.transform(image, onset), False) if t >= CLEAN_S else (t, image, True)

        run = run_timeline(TamperDetector(cfg.tamper, reference), frames(), persons, RunResult())
        cost.samples += run.samples
        cost.cost_s += run.cost_s
        hits = [t for t, k in run.raised if k == tamper.kind.value and t >= CLEAN_S]
        early = [k for t, k in run.raised if t < CLEAN_S]
        others = tuple(sorted({k for t, k in run.raised if t >= CLEAN_S and k != tamper.kind.value}))
        case = CaseResult(_name(path), tamper.name, tamper.kind.value, bool(hits),
                          round(hits[0] - CLEAN_S, 1) if hits else None, len(early), others)
        results.append(case)
        if progress:
            progress(f"  {case.video:<40} {tamper.name:<20} "
                     + (f"raised after {case.delay_s:.0f} s" if case.detected else "MISSED")
                     + (f"; also {', '.join(others)}" if others else "")
                     + (f"; {len(early)} false before onset" if early else ""))
    return results, cost


def evaluate_night(path: Path, cfg: AppConfig, persons: Persons) -> dict[str, Any]:
    """Day → infrared switch (no tamper expected; the night reference is learnt after relearn_s),
    then a blur in night mode (expected: defocused)."""
    step = 1.0 / cfg.tamper.fps
    switch, learn_until = CLEAN_S, CLEAN_S + cfg.tamper.relearn_s + 3 * step + 10.0
    blur_until = learn_until + cfg.tamper.persist_s + AFTER_PERSIST_S
    times = np.arange(0.0, blur_until, step) + step / 2
    persons.forget()
    footage = Footage(path, cfg.ring.max_width,
                           lambda d: reference_times(d) + [ping_pong(t, d) for t in times])
    reference = learn_reference([footage.at(t) for t in reference_times(footage.duration)], persons, cfg)
    learnt: list[str] = []
    detector = TamperDetector(cfg.tamper, reference, on_reference=lambda mode, ref: learnt.append(mode))
    blur = _blur(4.0)

    def frames():
        for t in times:
            image = footage.at(ping_pong(t, footage.duration))
            if t >= switch:
                image = infrared(image)
            if t >= learn_until:
                image = blur(image, image)
            yield t, image, t < switch

    run = run_timeline(detector, frames(), persons, RunResult())
    false_raised = [k for t, k in run.raised if t < learn_until]
    hits = [t for t, k in run.raised if t >= learn_until and k == TamperKind.DEFOCUSED.value]
    return {"video": _name(path), "night_reference_learnt": "night" in learnt, "false_raised": len(false_raised),
            "false_kinds": sorted(set(false_raised)), "clean_s": round(learn_until, 1),
            "night_blur_detected": bool(hits), "night_blur_delay_s": round(hits[0] - learn_until, 1) if hits else None,
            "samples": run.samples, "cost_s": run.cost_s}


def evaluate(root: Path, cfg: AppConfig, *, pose: bool = True, limit: int | None = None,
             progress: Callable[[str], None] | None = None) -> TamperEvalReport:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (fix: give the data root, e.g. ../shared/data)")
    persons = Persons(cfg if pose else None)
    report = TamperEvalReport(persist_s=cfg.tamper.persist_s)
    ordinary = ordinary_videos(root)[:limit] if limit else ordinary_videos(root)
    cases = case_videos(root)[:limit] if limit else case_videos(root)
    if not ordinary:
        raise InputError(f"{root}: no ordinary footage found (fix: a data root holding normal/, mot/, scfd-dev/)")
    others = ordinary_videos(root, other=True)[:limit] if limit else ordinary_videos(root, other=True)
    for path in ordinary + others:
        try:
            row = evaluate_ordinary(path, cfg, persons) | {"group": "ordinary" if path in ordinary else "other"}
        except (InputError, cv2.error) as exc:
            report.unreadable.append(f"{_name(path)}: {exc}")
            continue
        report.samples += row["samples"]
        report.cost_s += row.pop("cost_s")
        report.ordinary.append(row)
        if progress:
            progress(f"{row['group']:<8} {row['clip']:<44} {row['seconds']:>6.1f} s  raised {row['raised']}  "
                     f"condition samples {row['condition_samples']}/{row['samples']}")
    for path in cases:
        if progress:
            progress(f"cases on {_name(path)}")
        try:
            results, cost = evaluate_cases(path, cfg, persons, progress=progress)
        except ReferenceError as exc:
            report.no_reference.append(f"{_name(path)}: {exc}")
            continue
        except (InputError, cv2.error) as exc:
            report.unreadable.append(f"{_name(path)} (cases): {exc}")
            continue
        report.cases += results
        report.samples += cost.samples
        report.cost_s += cost.cost_s
    for path in cases[:2]:
        try:
            row = evaluate_night(path, cfg, persons)
        except ReferenceError:
            continue   # already listed under no_reference
        except (InputError, cv2.error) as exc:
            report.unreadable.append(f"{_name(path)} (night): {exc}")
            continue
        report.samples += row["samples"]
        report.cost_s += row.pop("cost_s")
        report.night.append(row)
        if progress:
            progress(f"night {row}")
    return report


def format_report(report: TamperEvalReport) -> str:
    lines = [f"Camera tamper detection (persist_s = {report.persist_s:g} s; delay counts from the tamper's onset)",
             f"{'tamper':<20} {'kind':<10} {'detected':>9} {'rate':>6} {'delay med/max s':>16}  missed on"]
    for r in report.by_tamper():
        delay = "-" if r["delay_median_s"] is None else f"{r['delay_median_s']:.0f} / {r['delay_max_s']:.0f}"
        lines.append(f"{r['tamper']:<20} {r['kind']:<10} {r['detected']:>4}/{r['cases']:<4} {r['rate']:>6.2f} "
                     f"{delay:>16}  {', '.join(r['missed']) or '-'}"
                     + (f" (also raised: {', '.join(r['also_raised'])})" if r["also_raised"] else ""))
    fa = report.false_alarms()
    lines.append(f"false tamper alarms on ordinary footage: {fa['ordinary_raised']} in {fa['ordinary_hours']:.3f} h "
                 f"({fa['ordinary_clips']} clips; {fa['ordinary_per_hour']} per hour); samples with any condition "
                 f"(before persistence): {fa['condition_share']:.2%}")
    lines.append(f"false tamper alarms on all untampered footage (ordinary, falls, the clean part of every case, "
                 f"the infrared switch): {fa['raised']} in {fa['hours']:.3f} h ({fa['per_hour']} per hour)")
    for n in report.night:
        lines.append(f"infrared switch on {n['video']}: night reference learnt {n['night_reference_learnt']}, "
                     f"false tampers {n['false_raised']}, blur sigma 4 at night "
                     + (f"detected after {n['night_blur_delay_s']:.0f} s" if n["night_blur_detected"] else "MISSED"))
    lines.append(f"cost: {1000 * report.cost_s / max(1, report.samples):.1f} ms per sample "
                 f"({report.samples} samples; at tamper.fps the stage runs once per 1/fps s)")
    if report.no_reference:
        lines.append("no tamper cases (the view has too little static structure to provision a reference; its "
                     "untampered run above still counts): " + "; ".join(report.no_reference))
    if report.unreadable:
        lines.append("left out (cannot be decoded): " + "; ".join(report.unreadable))
    return "\n".join(lines)
