"""`appliance models list|verify`: what models are installed and whether they match the manifest."""

from __future__ import annotations

from appliance.box.pose.manifest import load_manifest, verified_model
from appliance.common.errors import ModelError


def register(sub) -> None:
    p = sub.add_parser("models", help="list or verify the ONNX models against models/manifest.toml")
    s = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="list manifest entries")
    ls.add_argument("--models-dir", help="directory holding manifest.toml (default: bundled models/)")
    ls.set_defaults(func=cmd_list)
    v = s.add_parser("verify", help="check every model file's sha256 against the manifest (exit 3 on mismatch)")
    v.add_argument("--models-dir", help="directory holding manifest.toml (default: bundled models/)")
    v.set_defaults(func=cmd_verify)


def cmd_list(args) -> int:
    """One line per model: name, what reads it, its licence (AGPL ones marked: shipping them
    carries AGPL-3.0 obligations), file and sha256."""
    entries = list(load_manifest(args.models_dir).values())
    width = max((len(e.name) for e in entries), default=4)
    arch = max((len(e.architecture) for e in entries), default=4)
    for e in entries:
        mark = "AGPL " if e.agpl else "     "
        print(f"{e.name:<{width}}  {e.architecture:<{arch}}  {mark}licence {e.licence}\n"
              f"{'':<{width}}  {'':<{arch}}       file {e.path.name}  sha256 {e.sha256}")
    return 0


def cmd_verify(args) -> int:
    failed = 0
    for name in load_manifest(args.models_dir):
        try:
            entry, _ = verified_model(name, args.models_dir)
            print(f"OK    {name}  {entry.sha256}")
        except ModelError as exc:
            failed += 1
            print(f"FAIL  {name}  {exc}")
    if failed:
        raise ModelError(f"{failed} model(s) do not match the manifest")
    return 0
