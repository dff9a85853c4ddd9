"""`appliance station training-export`: the operators' verdicts as a skeleton-only training set.

One JSON line per closed alarm whose signed alarm message carried skeletons (docs/console.md,
"Training export"). Never pixels: the clip is not read, not decrypted, not even opened. The
behaviour training script takes the file as extra data
(``scripts/train_fight_classifier.py --extra-windows FILE``).

    {"format": "appliance-training-window", "version": 1, "alarm_id", "device_id", "pattern",
     "verdict": "true"|"false"|"unclear", "label": 1|0|null, "reason_code", "closed_unix_ms",
     "profile": {...}, "model_sha256", "features": {<the box's stage-1/2 quantities that fired>},
     "frame_size": [w, h], "keypoint_order": "coco17",
     "frames": [{"t_s": float, "persons": [{"track": int, "box": [4 x float px],
                 "keypoints": [17 x [x px, y px, confidence]]}]}]}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError
from appliance.station.console.station_view import StationView
from appliance.station.console.store import ConsoleStore

FORMAT = "appliance-training-window"
VERSION = 1
LABELS = {"true": 1, "false": 0, "unclear": None}


def _frames(skeletons: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"t_s": f["t_ms"] / 1000.0,
             "persons": [{"track": p["track"], "box": [v / 10.0 for v in p["box"]],
                          "keypoints": [[x / 10.0, y / 10.0, c / 1000.0] for x, y, c in p["kp"]]}
                         for p in f["persons"]]}
            for f in skeletons["frames"]]


def training_rows(station_dir: str | Path, console_dir: str | Path, since_unix_ms: int) -> Iterator[dict[str, Any]]:
    """The rows of closed alarms (verdicts given since ``since_unix_ms``) that carry skeletons."""
    store = ConsoleStore(console_dir)
    view = StationView(station_dir)
    try:
        for wf in store.closed_since(since_unix_ms):
            alarm = view.alarm(wf.alarm_id)
            if alarm is None or not alarm.has_message:
                continue   # a console alarm (stale device), or a clip without an alarm message
            body = alarm.body
            yield {"format": FORMAT, "version": VERSION, "alarm_id": alarm.alarm_id, "device_id": alarm.device_id,
                   "pattern": alarm.pattern, "verdict": wf.verdict, "label": LABELS[wf.verdict],
                   "reason_code": wf.reason_code, "closed_unix_ms": wf.closed_unix_ms, "profile": body["profile"],
                   "model_sha256": body["model_sha256"], "features": body["explanation"],
                   "confidence": body["confidence"] / 1000.0, "tracks": body["tracks"],
                   "frame_size": body["skeletons"]["frame_size"], "keypoint_order": body["skeletons"]["keypoint_order"],
                   "frames": _frames(body["skeletons"])}
    finally:
        store.close()
        view.close()


def write_training_export(station_dir: str | Path, console_dir: str | Path, out: str | Path, *,
                          since_unix_ms: int, audit: Any = None, user: str = "cli") -> dict[str, int]:
    """Writes the JSON Lines file (``-`` = stdout); returns counts by verdict."""
    counts: dict[str, int] = {}
    lines = []
    for row in training_rows(station_dir, console_dir, since_unix_ms):
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
        lines.append(json.dumps(row, sort_keys=True, separators=(",", ":")))
    text = "".join(line + "\n" for line in lines)
    if str(out) == "-":
        import sys

        sys.stdout.write(text)
    else:
        try:
            Path(out).write_text(text)
        except OSError as exc:
            raise InputError(f"{out}: cannot write: {exc.strerror or exc}") from None
    if audit is not None:
        audit.append("console.training_export", user=user, out=str(out), since_unix_ms=since_unix_ms,
                     rows=sum(counts.values()), **{f"verdict_{k}": v for k, v in counts.items()})
    return counts
