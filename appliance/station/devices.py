"""`appliance station devices add REQUEST`: the station half of enrolment.

Registered under `station devices` by appliance/station/cli.py (which imports this module if
present) and, the same command, as `appliance provision station-add`. Verifies the device's
enrolment request, adds the device to the station registry and writes the signed station
bundle for the technician, printing the station fingerprint to read out to them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.common.errors import InputError


def add_arguments(p, *, station_dir_flag: str = "--dir") -> None:
    p.add_argument("request", metavar="REQUEST", help="the device's enrolment request (*.enrol.json)")
    p.add_argument(station_dir_flag, dest="station_dir", required=True, metavar="DIR",
                   help="the station directory (keys/, station.db)")
    p.add_argument("--endpoint", required=True,
                   help="the station endpoint the device connects to, e.g. tcp://203.0.113.5:7100")
    p.add_argument("--profile", dest="profiles", action="append", required=True, metavar="ID",
                   help="a legal profile the device may use (repeat for several)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="where to write the signed station bundle")
    p.add_argument("--replace", action="store_true",
                   help="re-key an enrolled device (after `provision init --force` on the box)")
    p.set_defaults(func=cmd_add)


def register(dsub) -> None:
    """Adds `add` to the station's `devices` sub-parsers."""
    p = dsub.add_parser("add", help="enrol a device from its request; writes the signed station bundle")
    add_arguments(p)


def cmd_add(args) -> int:
    from appliance.box.provision.enrolment import station_add_device
    from appliance.contracts.keys import write_public_file

    try:
        request = Path(args.request).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {args.request}: {exc.strerror or exc}") from None
    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists (fix: choose another --out or remove it)")
    added = station_add_device(args.station_dir, request, endpoint=args.endpoint,
                               allowed_profiles=args.profiles, replace=args.replace)
    write_public_file(out, added.bundle)
    print(f"device {added.device_id} enrolled (signing {added.device_fingerprints['signing']}, "
          f"CURVE {added.device_fingerprints['curve']})")
    print(f"station bundle written to {out}")
    print(f"station fingerprint (read it to the technician): {added.station_fingerprint}")
    sys.stdout.flush()
    return 0
