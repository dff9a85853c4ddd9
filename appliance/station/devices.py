"""`appliance station devices add REQUEST`: the station half of enrolment.

Registered under `station devices` by appliance/station/cli.py and, the same command, as
`appliance provision station-add` (wired by appliance/cli.py when the station is installed). Verifies the device's
enrolment request, adds the device to the station registry and writes the signed station
bundle for the technician, printing the station fingerprint to read out to them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.common.errors import InputError
from appliance.contracts.curve import curve_fingerprint, load_curve_public
from appliance.contracts.enrolment import BUNDLE_CONTEXT, BUNDLE_FORMAT, b64, parse_request, sign_document
from appliance.contracts.keys import hpke_public_from_bytes, load_signing_key, public_key_fingerprint, raw_public
from appliance.contracts.protocol import endpoint_host


def add_arguments(p) -> None:
    p.add_argument("request", metavar="REQUEST", help="the device's enrolment request (*.enrol.json)")
    # --station-dir as in every station and audit command; --dir is the old spelling.
    p.add_argument("--station-dir", "--dir", dest="station_dir", required=True, metavar="DIR",
                   help="the station directory (keys/, station.db)")
    p.add_argument("--fingerprint", metavar="XXXX:XXXX:XXXX:XXXX",
                   help="the device's signing-key fingerprint as the technician read it from "
                        "`provision init`/`enrol`; without it the command shows the request's "
                        "fingerprint and asks you to compare (on a terminal)")
    p.add_argument("--endpoint", required=True, action="append", dest="endpoints", metavar="ENDPOINT",
                   help="the station endpoint the device connects to, e.g. tcp://203.0.113.5:7100; repeat for "
                        "several receivers (PostgreSQL + S3 tier, docs/storage.md), in failover order")
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
    from appliance.contracts.keys import write_public_file

    try:
        request = Path(args.request).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {args.request}: {exc.strerror or exc}") from None
    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists (fix: choose another --out or remove it)")
    _confirm_device_fingerprint(parse_request(request).fingerprints, args.fingerprint)
    added = station_add_device(args.station_dir, request, endpoint=args.endpoints,
                               allowed_profiles=args.profiles, replace=args.replace)
    write_public_file(out, added.bundle)
    print(f"device {added.device_id} enrolled (signing {added.device_fingerprints['signing']}, "
          f"CURVE {added.device_fingerprints['curve']})")
    evidence = json.loads(added.bundle)["body"]["station_fingerprints"].get("evidence")
    print(f"station bundle written to {out}" + (
        f" (with the evidence key {evidence}: the box seals clips as envelope version 2, bystanders pixelated "
        "for the station key, the full video for the evidence key only)" if evidence else
        " (no evidence key: the box seals envelope version 1; see 'appliance station evidence-key init')"))
    print(f"station fingerprint (read it to the technician): {added.station_fingerprint}")
    print(f"next, on the box: appliance provision import {out.name} --config /etc/appliance/appliance.toml "
          f"--station-fingerprint {added.station_fingerprint}")
    sys.stdout.flush()
    return 0


def _confirm_device_fingerprint(fingerprints: dict[str, str], typed: str | None) -> None:
    """The request travelled by USB stick or mail: its key is the device's only if the fingerprint
    the technician reads from the box matches. Checked before anything is registered."""
    from appliance.contracts.enrolment import normalise_fingerprint

    signing = fingerprints["signing"]
    if typed:
        if normalise_fingerprint(typed) != normalise_fingerprint(signing):
            # The request's own fingerprint is not printed: it is what an attacker's request would say.
            raise InputError(f"the request's device key does not have the fingerprint you gave ({typed}); "
                             "nothing was registered (fix: ask the technician to read the signing fingerprint "
                             "`appliance provision enrol` printed on the box; if it is what you typed, the "
                             "request is not from that box)")
        print(f"device fingerprint {signing} matches the one you gave")
        return
    print(f"device signing fingerprint in the request: {signing}")
    print("  compare it with the one the technician reads from the box (`provision enrol` printed it)")
    if sys.stdin.isatty():
        answer = input("does it match? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise InputError("not confirmed; nothing was registered (fix: compare the fingerprint with the "
                             "technician, or pass --fingerprint)")
    else:
        print("  (not confirmed: no terminal; pass --fingerprint XXXX:XXXX:XXXX:XXXX to have it checked)")


@dataclass(frozen=True)
class AddedDevice:
    device_id: str
    bundle: bytes
    station_fingerprint: str     # of the station signing key: the technician types this
    device_fingerprints: dict[str, str]


def station_add_device(station_dir: str | Path, request: bytes, *, endpoint: str | list[str] | tuple[str, ...],
                       allowed_profiles: list[str] | tuple[str, ...], replace: bool = False,
                       profiles_dir: str | None = None) -> AddedDevice:
    """Verifies an enrolment request, registers the device, returns the signed station bundle.

    The station engineer's ``appliance station devices add`` calls this (the same as
    ``appliance provision station-add``).
    """
    from appliance.contracts.profile import available_profiles
    from appliance.station.keys import StationKeyPaths
    from appliance.station.registry import DeviceRegistry

    req = parse_request(request)
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not endpoints or len(set(endpoints)) != len(endpoints):
        raise InputError("give each station endpoint once (fix: --endpoint tcp://HOST:PORT, repeated for "
                         "several receivers)")
    for e in endpoints:
        endpoint_host(e)  # syntax only: the box resolves and confines it
    if not allowed_profiles:
        raise InputError("no allowed profile (fix: --profile ID, e.g. --profile bw-polg-44-4)")
    known = available_profiles(profiles_dir)
    unknown = [p for p in allowed_profiles if p not in known]
    if unknown:
        raise InputError(f"unknown legal profile(s) {', '.join(unknown)} (fix: use one of: {', '.join(known)})")
    paths = StationKeyPaths.of(station_dir)
    paths.require()
    station_key = load_signing_key(paths.signing_private)
    hpke_text = paths.hpke_public.read_bytes()
    hpke = hpke_public_from_bytes(hpke_text, str(paths.hpke_public))
    curve = load_curve_public(paths.curve_public)
    evidence, evidence_text = None, b""
    if paths.evidence_public.exists():
        evidence_text = paths.evidence_public.read_bytes()
        evidence = hpke_public_from_bytes(evidence_text, str(paths.evidence_public))
    registry = DeviceRegistry(station_dir)
    try:
        registry.add_device(req.device_id, req.signing_public, req.curve_public,
                            description=req.description, replace=replace)
    finally:
        registry.close()
    body = {
        "device_id": req.device_id,
        "device_fingerprints": req.fingerprints,
        "request_sha256": req.sha256,
        "endpoint": endpoints[0],
        **({"endpoints": endpoints} if len(endpoints) > 1 else {}),
        "station_signing_public": b64(raw_public(station_key.public_key())),
        "station_hpke_public": hpke_text.decode("ascii"),
        "station_curve_public": curve.decode("ascii"),
        "station_fingerprints": {"signing": public_key_fingerprint(station_key),
                                 "hpke": hpke.fingerprint, "curve": curve_fingerprint(curve),
                                 **({"evidence": evidence.fingerprint} if evidence else {})},
        # Optional: with it the box seals envelope version 2 (docs/envelope.md, docs/keys.md).
        **({"station_evidence_public": evidence_text.decode("ascii")} if evidence else {}),
        "allowed_profiles": list(allowed_profiles),
        "issued_unix_ms": int(time.time() * 1000),
    }
    bundle = sign_document(station_key, BUNDLE_FORMAT, BUNDLE_CONTEXT, body)
    return AddedDevice(req.device_id, bundle, public_key_fingerprint(station_key), req.fingerprints)
