"""`appliance profiles list|show|check`: the legal profiles a camera can name, for technicians
and data-protection officers (docs/legal-profiles.md)."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.box.config import ConfigError
from appliance.contracts.profile import (
    LegalProfile,
    available_profiles,
    load_profile,
    parse_profile,
)


def register(sub) -> None:
    p = sub.add_parser("profiles", help="list, show or check legal profiles (which patterns may trigger a clip)")
    s = p.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="one line per profile: id, version, sha256, permitted patterns")
    ls.add_argument("--profiles-dir", help="directory of <id>.toml files (default: bundled provisioning/profiles/)")
    ls.set_defaults(func=cmd_list)
    show = s.add_parser("show", help="a profile's rules, rolls, retention and legal basis as JSON")
    show.add_argument("profile", help="profile id, e.g. bw-polg-44-4")
    show.add_argument("--profiles-dir", help="directory of <id>.toml files (default: bundled)")
    show.set_defaults(func=cmd_show)
    check = s.add_parser("check", help="validate a profile file before deploying it (exit 2 on errors)")
    check.add_argument("file", help="path to a profile .toml file")
    check.set_defaults(func=cmd_check)


def profile_json(profile: LegalProfile) -> dict:
    return {
        "id": profile.id, "version": profile.version, "sha256": profile.sha256, "title": profile.title,
        "jurisdiction": profile.jurisdiction, "purpose": profile.purpose,
        "pre_roll_s": profile.pre_roll_s, "post_roll_s": profile.post_roll_s,
        "retention_hours": profile.retention_hours,
        "patterns": {p.value: {"permitted": r.permitted, "min_confidence": r.min_confidence,
                               "min_duration_s": r.min_duration_s} for p, r in profile.rules.items()},
        "legal_basis": profile.legal_basis,
    }


def cmd_list(args) -> int:
    for profile_id in available_profiles(args.profiles_dir):
        profile = load_profile(profile_id, args.profiles_dir)
        permitted = ",".join(sorted(p.value for p in profile.permitted_patterns)) or "-"
        print(f"{profile.id}\t{profile.version}\tsha256 {profile.sha256}\tpermits {permitted}")
    return 0


def cmd_show(args) -> int:
    print(json.dumps(profile_json(load_profile(args.profile, args.profiles_dir)), indent=2, ensure_ascii=False))
    return 0


def cmd_check(args) -> int:
    path = Path(args.file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    profile = parse_profile(raw, str(path), expected_id=path.stem)
    print(f"OK {profile.id} {profile.version} sha256 {profile.sha256}")
    return 0
