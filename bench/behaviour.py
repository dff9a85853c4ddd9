"""Behaviour stage cost: milliseconds per analysed frame on recorded skeletons.

Uses the committed fixtures (tests/fixtures/behaviour), so it needs no video and no model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "behaviour"


def _frames(name: str):
    from appliance.contracts.types import TrackedFrame, TrackedPerson

    z = np.load(FIXTURES / f"{name}.npz")
    frames, k = [], 0
    for i, t in enumerate(z["t"]):
        persons = []
        for _ in range(int(z["count"][i])):
            persons.append(TrackedPerson(int(z["track_id"][k]), z["box"][k], float(z["score"][k]),
                                         z["keypoints"][k], 0, 0))
            k += 1
        frames.append(TrackedFrame(i, float(t), tuple(persons), tuple(int(v) for v in z["frame_size"])))
    return frames


def _ms_per_frame(frames, repeats: int) -> float:
    from appliance.box.behaviour import BehaviourAnalyzer

    span = frames[-1].t + 0.1
    start = time.perf_counter()
    n = 0
    for r in range(repeats):
        analyzer = BehaviourAnalyzer()
        for f in frames:
            analyzer.update(type(f)(f.frame_index, f.t + r * span, f.persons, f.frame_size))
            n += 1
    return (time.perf_counter() - start) / n * 1000.0


def run() -> list[tuple[str, float, str]]:
    rows = []
    for name, label in (("walking", "1 person walking"), ("scfd_nofight_crowd", "crowd (up to 7 persons)"),
                        ("scfd_strike", "fight (2-3 persons)")):
        frames = _frames(name)
        persons = sum(len(f.persons) for f in frames) / max(len(frames), 1)
        rows.append((f"behaviour update, {label}, {persons:.1f} persons/frame",
                     round(_ms_per_frame(frames, 20 if len(frames) < 100 else 2), 3), "ms/frame"))
    return rows
