"""Two-stage fight detection cost (docs/behaviour.md, "Cost"): what stage 1 adds on ordinary
scenes, and what a frame costs while a candidate is open (stage 2: motion energy and a zoomed
re-pose per region), against the 10 fps budget (100 ms per analysed frame on this machine).

Real pipeline (runtime.Pipeline, INT8 pose, 10 fps analysis) on the bundled samples: one person
walking (no candidate), the hug (a candidate for most of the clip) and the demo's CCTV fight
(a crowd: one or two regions a frame).
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WALKING = ROOT / "samples" / "one-by-one-person-detection.mp4"
HUG = ROOT / "samples" / "demo_skeleton.mp4"
FIGHT = ROOT / "samples" / "scfd_fight_fi023.mp4"


def _run(video: Path, seconds: float, repeats: int = 1):
    from appliance.box.capture import FileSource
    from appliance.box.config import default_config
    from appliance.box.runtime import Pipeline, analyse_video

    # (analysis ms, stage 2 ran, stage-1 ms, regions measured, re-poses run)
    per_frame: list[tuple[float, bool, float, int, int]] = []
    for _ in range(repeats):
        pipe = Pipeline(default_config(str(video)))
        gate_update = pipe.candidates.update
        gate_ms = [0.0]

        def timed_gate(tracked, _update=gate_update, _acc=gate_ms):
            t0 = time.perf_counter()
            out = _update(tracked)
            _acc[0] += (time.perf_counter() - t0) * 1000
            return out

        pipe.candidates.update = timed_gate
        analyse = pipe.analyse

        def timed(frame, _analyse=analyse, _pipe=pipe, _acc=gate_ms):
            before, g0 = _pipe.stats.stage2_frames, _acc[0]
            r0, p0 = _pipe.stage2.regions_measured, _pipe.stage2.repose_runs
            t0 = time.perf_counter()
            result = _analyse(frame)
            per_frame.append(((time.perf_counter() - t0) * 1000, _pipe.stats.stage2_frames > before, _acc[0] - g0,
                              _pipe.stage2.regions_measured - r0, _pipe.stage2.repose_runs - p0))
            return result

        pipe.analyse = timed
        src = FileSource(str(video), max_width=pipe.cfg.ring.max_width)
        analyse_video(pipe, (f for f in src.frames() if f[1] <= seconds))
    return per_frame


def run():
    import numpy as np

    rows = []
    walk = _run(WALKING, 40.0)
    ms = np.array([m for m, *_ in walk])
    gate = np.array([g for _, _, g, *_ in walk])
    rows += [
        ("ordinary scene (one person walking, 40 s at 10 fps): analysed frames", len(walk), ""),
        ("  frames with stage 2 (a candidate open)", sum(1 for _, s, *_ in walk if s), ""),
        ("  analysis per frame (pose + tracking + stage 1 + behaviour + gate), mean", round(float(ms.mean()), 2), "ms"),
        ("  stage 1 (candidate gate) per frame, mean", round(float(gate.mean()), 3), "ms"),
        ("  stage 1 share of the frame's analysis (target < 5 %)", round(100 * float(gate.sum() / ms.sum()), 2), "%"),
    ]
    hug = _run(HUG, 10.0, repeats=2)
    open_ms = np.array([m for m, s, *_ in hug if s])
    closed_ms = np.array([m for m, s, *_ in hug if not s])
    rows += [
        ("candidate open (the hug, 1080p source downscaled to 960): frames with stage 2", len(open_ms), ""),
        ("  analysis per frame with stage 2, mean / p95", f"{open_ms.mean():.1f} / {np.percentile(open_ms, 95):.1f}",
         "ms"),
        ("  analysis per frame without (same clip), mean", round(float(closed_ms.mean()), 1) if len(closed_ms) else "-",
         "ms"),
    ]
    # A crowded real fight opens two regions at once in some frames; overlapping ones share one
    # re-pose, so a frame pays for two only when the two scuffles are apart.
    fight = _run(FIGHT, 10.0, repeats=3)
    for regions in (1, 2):
        sel = [(m, p) for m, s, _, r, p in fight if s and r == regions]
        if sel:
            ms_r = np.array([m for m, _ in sel])
            rows.append((f"crowded fight (the demo's CCTV clip): frames with {regions} region(s), re-poses per frame, "
                         "analysis mean / p95", f"{len(sel)}, {np.mean([p for _, p in sel]):.2f}, "
                         f"{ms_r.mean():.1f} / {np.percentile(ms_r, 95):.1f}", "ms"))
    no_stage2 = np.array([m for m, s, *_ in fight if not s])
    if len(no_stage2):
        rows.append(("  frames without stage 2 (same clip), analysis mean", round(float(no_stage2.mean()), 1), "ms"))
    rows.append(("10 fps budget per analysed frame", 100, "ms"))
    return rows
