"""`appliance eval DIR`: behaviour detection measured on real footage (see evaluate.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from appliance.box.config import default_config, load_config

#: The report is complete for every readable clip, but some clips were left out.
EXIT_SOME_UNREADABLE = 3


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="measure the behaviour detectors on labelled footage",
        description="Runs pose → tracking → behaviour on every video under DIR and prints per-class "
                    "recall and balanced accuracy (fight/ and nofight/ folders), fall and lying results "
                    "(falls/, with the UR Fall skeleton CSV) and false triggers on ordinary walking "
                    "(normal/, mot/), and the weapon pattern's false alarms per camera-hour on the "
                    "ordinary footage (the object stage runs on [objects]' budget even where a box "
                    "disables it). DIR is either a folder with fight/ and nofight/ or a data root "
                    "holding scfd-dev/, falls/, normal/, mot/. Nothing is cached or written. A clip "
                    "that cannot be decoded is listed and left out of the figures (exit status 3).")
    p.add_argument("dir", type=Path, help="data root or a folder with fight/ and nofight/")
    p.add_argument("--config", type=Path, help="appliance.toml whose [pose], [tracking], [analysis] "
                                                "and [behaviour] settings to use (default: built-in)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N videos per folder (a quick check)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no per-clip progress lines on stderr")
    p.add_argument("--no-objects", action="store_true",
                   help="skip the object stage (the weapon pattern's false alarms per hour; ~20%% faster)")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from appliance.box.behaviour.evaluate import evaluate, format_report

    cfg = load_config(args.config) if args.config else default_config()
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = evaluate(args.dir, cfg, limit=args.limit, progress=progress, with_objects=not args.no_objects)
    if args.json:
        print(json.dumps(report.to_json(), indent=None, sort_keys=True))
    else:
        print(format_report(report))
    if report.unreadable:
        print(f"appliance eval: {len(report.unreadable)} clip(s) could not be decoded and were left out "
              "(listed in the report)", file=sys.stderr)
        return EXIT_SOME_UNREADABLE
    return 0
