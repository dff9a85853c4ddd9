"""`appliance profiles list|show|check` through the real argument parser."""

from __future__ import annotations

import argparse
import json

import pytest

from appliance.box.config import ConfigError, package_root
from appliance.box.policy import cli as policy_cli
from appliance.box.policy import load_profile


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appliance")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_shows_both_bundled_profiles(capsys):
    assert run(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    bw = load_profile("bw-polg-44-4")
    assert f"bw-polg-44-4\t{bw.version}\tsha256 {bw.sha256}\tpermits fight,kick,push,strangle,strike" in out
    assert "helpless-person" in out and "fall" in out.split("helpless-person")[1]


def test_show_is_json_with_rules(capsys):
    assert run(["profiles", "show", "bw-polg-44-4"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["patterns"]["fall"]["permitted"] is False
    assert shown["sha256"] == load_profile("bw-polg-44-4").sha256
    assert shown["pre_roll_s"] == 5.0 and shown["retention_hours"] == 72


def test_check_accepts_a_good_file_and_names_the_key_in_a_bad_one(tmp_path, capsys):
    good = package_root() / "provisioning" / "profiles" / "helpless-person.toml"
    assert run(["profiles", "check", str(good)]) == 0
    assert capsys.readouterr().out.startswith("OK helpless-person ")
    bad = tmp_path / "helpless-person.toml"
    bad.write_text(good.read_text(encoding="utf-8").replace("min_duration_s = 3.0", "min_duration_s = -3.0"))
    with pytest.raises(ConfigError, match=r"patterns.lying.min_duration_s = -3.0: must be within 0..600 \(fix:"):
        run(["profiles", "check", str(bad)])
    with pytest.raises(ConfigError, match="cannot read the file"):
        run(["profiles", "check", str(tmp_path / "missing.toml")])
