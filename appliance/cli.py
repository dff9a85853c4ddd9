"""The ``appliance`` command: argument parsing and wiring only.

Each command group lives with the stage it belongs to and registers its own sub-parser:

    analyze, run                appliance/runtime_cli.py  (the pixel pipeline)
    eval                        appliance/behaviour/cli.py
    tamper eval                 appliance/box/tamper/cli.py
    profiles ...                appliance/policy/cli.py
    uplink                      appliance/uplink/cli.py   (the network process)
    station ...                 appliance/station/cli.py
    provision ...               appliance/provision/cli.py
    audit ...                   appliance/audit/cli.py
    models ...                  appliance/pose/cli.py

A command sets ``func(args) -> int``. Errors meant for people are :class:`ApplianceError`
and are printed on one line; the exit code comes from the error class.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from appliance import __version__
from appliance.errors import ApplianceError

COMMAND_MODULES = (
    "appliance.runtime_cli",
    "appliance.behaviour.cli",
    "appliance.box.tamper.cli",
    "appliance.policy.cli",
    "appliance.uplink.cli",
    "appliance.station.cli",
    "appliance.provision.cli",
    "appliance.audit.cli",
    "appliance.pose.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Privacy-by-design video-protection appliance (skeleton-based alarms, sealed clips).",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("appliance: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
