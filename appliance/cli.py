"""The ``appliance`` command: argument parsing and wiring only.

Each command group lives with the stage it belongs to and registers its own sub-parser:

    analyze, run                appliance/box/runtime_cli.py  (the pixel pipeline)
    eval                        appliance/box/behaviour/cli.py
    tamper eval                 appliance/box/tamper/cli.py
    profiles ...                appliance/box/policy/cli.py
    uplink                      appliance/box/uplink/cli.py   (the network process)
    station ...                 appliance/station/cli.py
    provision ...               appliance/box/provision/cli.py
    audit ...                   appliance/station/audit/cli.py
    models ...                  appliance/box/pose/cli.py

A command sets ``func(args) -> int``. Errors meant for people are :class:`ApplianceError`
and are printed on one line; the exit code comes from the error class.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from appliance import __version__
from appliance.common.errors import ApplianceError

#: Modules installed by a side's extra (setup.cfg): a command that needs one that is missing says so.
SIDE_DEPENDENCIES = frozenset({"onnxruntime", "cv2", "systemd", "tomli_w"})

COMMAND_MODULES = (
    "appliance.box.runtime_cli",
    "appliance.box.behaviour.cli",
    "appliance.box.tamper.cli",
    "appliance.box.policy.cli",
    "appliance.box.uplink.cli",
    "appliance.station.cli",
    "appliance.box.provision.cli",
    "appliance.station.audit.cli",
    "appliance.box.pose.cli",
    "appliance.demo",
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
        module = _command_module(name)
        if module is None:
            continue
        if name == "appliance.box.provision.cli":
            # `provision station-add` is the station's `devices add` under the technician's
            # group: the one place the two sides meet, so it is wired here, not in either side.
            devices = _command_module("appliance.station.devices")
            module.register(sub, station_add=devices.add_arguments if devices is not None else None)
        else:
            module.register(sub)
    return parser


def _command_module(name: str) -> Any:
    """The command module, or None when its side (box or station) is not installed: its code
    is not in this build (setup.py, APPLIANCE_SIDE) or its extra's packages are missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (name == missing or name.startswith(missing + ".")) \
                and missing.split(".")[0] not in SIDE_DEPENDENCIES:
            raise
        return None


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
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SIDE_DEPENDENCIES:
            raise
        print(f"appliance: error: this command needs {exc.name}, which is not installed (fix: install the "
              "side's extra: pip install 'appliance[box]' on a box, 'appliance[station]' on the station)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("appliance: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
