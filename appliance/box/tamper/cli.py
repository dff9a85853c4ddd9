"""`appliance tamper eval DIR`: camera tamper detection measured on real footage (evaluate.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from appliance.box.config import default_config, load_config


def register(sub) -> None:
    p = sub.add_parser("tamper", help="camera tamper detection: measure it on footage")
    tsub = p.add_subparsers(dest="tamper_command", metavar="TAMPER_COMMAND", required=True)
    e = tsub.add_parser(
        "eval", help="detection rate, delay, false alarms per hour and cost on DIR",
        description="Applies tampering (black and partial cover, Gaussian blur of rising sigma, translation "
                    "and rotation, saturation, frozen frames, an infrared night switch) in memory to the "
                    "fixed-camera footage under DIR (normal/, mot/) and measures detection rate and delay per "
                    "kind; runs every ordinary clip (normal/, scfd-dev/nofight/, mot/, hard-negative/, samples/) "
                    "untampered for false tamper alarms per hour. Nothing is written.")
    e.add_argument("dir", type=Path, help="data root, e.g. ../shared/data")
    e.add_argument("--config", type=Path, help="appliance.toml whose [tamper] and [pose] settings to use")
    e.add_argument("--no-pose", action="store_true",
                   help="do not mask person boxes (no pose inference: faster, harder for the detector)")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="at most N clips of each list")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.add_argument("--quiet", action="store_true", help="no per-case progress lines on stderr")
    e.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from appliance.box.tamper.evaluate import evaluate, format_report

    cfg = load_config(args.config) if args.config else default_config()
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = evaluate(args.dir, cfg, pose=not args.no_pose, limit=args.limit, progress=progress)
    print(json.dumps(report.to_json(), sort_keys=True) if args.json else format_report(report))
    return 3 if report.unreadable else 0
