"""`appliance provision ...`: install, enrol and check a box on site (docs/provisioning.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from appliance.common.errors import InputError

DEFAULT_CONFIG = "/etc/appliance/appliance.toml"


def register(sub, *, station_add: Callable[..., None] | None = None) -> None:
    """Adds the `provision` command group to the top-level parser; ``station_add`` adds the
    arguments of `station-add` (= `appliance station devices add`, a station command)."""
    prov = sub.add_parser("provision", help="install, enrol and check the appliance on site")
    psub = prov.add_subparsers(dest="provision_command", metavar="PROVISION_COMMAND", required=True)

    def config_arg(p):
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")

    p = psub.add_parser("init", help="create the device id and keys; write or update the config")
    config_arg(p)
    p.add_argument("--device-id", help="unique device id, e.g. mannheim-paradeplatz-03")
    p.add_argument("--state-dir", help="state directory (default /var/lib/appliance)")
    p.add_argument("--camera", help="camera source: rtsp://..., /dev/video0, or a video file")
    p.add_argument("--description", help="where the camera is, what it sees")
    p.add_argument("--force", action="store_true", help="replace existing keys (rotation; re-enrol afterwards)")
    p.set_defaults(func=cmd_init)

    p = psub.add_parser("enrol", help="write the enrolment request for the station")
    config_arg(p)
    p.add_argument("--out", required=True, help="request file to write, e.g. DEVICE.enrol.json")
    p.set_defaults(func=cmd_enrol)

    if station_add is not None:     # the station's command, offered here when it is installed
        p = psub.add_parser("station-add", help="(on the station) enrol a device from its request, sign a bundle")
        station_add(p)

    p = psub.add_parser("import", help="verify the station bundle against its fingerprint; write the config")
    config_arg(p)
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--station-fingerprint", help="the fingerprint the station printed (asked for if omitted)")
    p.add_argument("--unit-dir", help="also write the systemd network drop-ins here, e.g. /etc/systemd/system")
    p.set_defaults(func=cmd_import)

    p = psub.add_parser("network", help="write the systemd drop-ins: pixel unit → camera only, uplink → station only")
    config_arg(p)
    p.add_argument("--unit-dir", default="/etc/systemd/system")
    p.set_defaults(func=cmd_network)

    p = psub.add_parser("preview", help="write ONE frame with privacy masks burned in and zones outlined")
    config_arg(p)
    p.add_argument("--out", required=True, help="image to write (.png or .jpg); recorded in provision.jsonl")
    p.add_argument("--reason", default="installation: checking privacy masks and zones",
                   help="why pixels are looked at (recorded in the audit log; the officer's report lists it)")
    p.set_defaults(func=cmd_preview)

    p = psub.add_parser("check", help="on-site self-test: pass/fail table, exit code 0 only if all pass")
    config_arg(p)
    p.set_defaults(func=cmd_check)


def cmd_init(args) -> int:
    from appliance.box.provision.enrolment import init_device

    r = init_device(args.config, device_id=args.device_id, state_dir=args.state_dir, camera=args.camera,
                    description=args.description, force=args.force)
    print(f"device {r.device_id}: keys {'rotated' if r.rotated else 'created'}; config {r.config_path}")
    print(f"  signing key (Ed25519)  {r.signing_fingerprint}")
    print(f"  CURVE key              {r.curve_fingerprint}")
    if r.rotated:
        print("the station must enrol the new keys: provision enrol, then station devices add --replace")
    print(f"next: appliance provision enrol --config {args.config} --out {r.device_id}.enrol.json")
    return 0


def cmd_enrol(args) -> int:
    from appliance.box.provision.enrolment import enrol_device

    out, body = enrol_device(args.config, args.out)
    print(f"enrolment request for {body['device_id']} written to {out} (public keys only)")
    print(f"  signing {body['fingerprints']['signing']}, CURVE {body['fingerprints']['curve']}, "
          f"model {body['model']['name']} {body['model']['sha256'][:16]}…")
    print(f"next: carry {out.name} to the station (it holds public keys only) and read the signing "
          f"fingerprint {body['fingerprints']['signing']} to the operator, who runs: appliance station devices "
          f"add {out.name} --station-dir DIR --endpoint tcp://HOST:7100 --profile bw-polg-44-4 --out bundle.json "
          f"--fingerprint {body['fingerprints']['signing']}")
    return 0


def cmd_import(args) -> int:
    from appliance.box.provision.enrolment import import_bundle

    try:
        data = Path(args.bundle).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {args.bundle}: {exc.strerror or exc}") from None
    typed = args.station_fingerprint
    if not typed:
        if not sys.stdin.isatty():
            raise InputError("no --station-fingerprint given (fix: pass the fingerprint the station printed)")
        # The bundle's own claim is not shown: the technician must type what the operator reads.
        typed = input("type the station fingerprint the station operator reads to you: ")
    r = import_bundle(args.config, data, typed, unit_dir=args.unit_dir)
    print(f"station bundle verified (station {r.station_fingerprint}); config {args.config} updated")
    if r.profile_changed:
        print(f"policy.profile set to {r.profile!r}: the configured one is not allowed by the station")
    for path in r.dropins:
        print(f"  wrote {path}")
    print(f"next: appliance provision preview --config {args.config} --out /root/masks.png "
          f"(check masks and zones), then appliance provision check --config {args.config}")
    return 0


def cmd_network(args) -> int:
    from appliance.box.config import load_config
    from appliance.box.provision.network import camera_dropin, station_dropin, write_dropins

    cfg = load_config(args.config)
    planned = []
    if cfg.camera is not None:
        planned.append(camera_dropin(cfg.camera.source))
    if cfg.station_endpoints:
        planned.append(station_dropin(cfg.station_endpoints))
    if not planned:
        raise InputError("neither camera.source nor uplink.endpoint is configured")
    for path in write_dropins(planned, Path(args.unit_dir)):
        print(f"wrote {path}")
    print("then: systemctl daemon-reload && systemctl restart appliance-pixel appliance-uplink")
    return 0


def cmd_preview(args) -> int:
    from appliance.box.provision.preview import write_preview

    entry = write_preview(args.config, args.out, reason=args.reason)
    print(f"wrote {entry['out']} ({entry['width']}x{entry['height']}, masks: "
          f"{', '.join(entry['masks']) or 'none'}); recorded in provision.jsonl. Delete it after checking.")
    for warning in entry.get("warnings", []):
        print(f"WARNING: {warning}")
    print(f"next: look at the image, fix [[zones]]/[[privacy_masks]] in {args.config} if needed, delete the "
          f"image, then: appliance provision check --config {args.config}")
    return 0


def cmd_check(args) -> int:
    import logging

    from appliance.box.provision.check import PROGRESS, format_table, run_checks

    def progress(name: str) -> None:
        print(f"checking {name}: {PROGRESS.get(name, '…')}", file=sys.stderr, flush=True)

    # Log lines of the checks (camera, uplink client) go to stderr while the checks run, each on
    # its own line after the progress line it belongs to; the table comes after all of them,
    # so nothing interleaves with it.
    results = run_checks(args.config, progress=progress)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    print(format_table(results), flush=True)
    if all(r.ok for r in results):
        print("next: systemctl daemon-reload && systemctl enable --now appliance-pixel appliance-uplink")
        return 0
    print(f"next: fix the FAIL rows (each names its fix), then run appliance provision check --config "
          f"{args.config} again")
    return 1
