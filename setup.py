"""Builds the `appliance` distribution (metadata and dependencies: setup.cfg).

Two things setup.cfg cannot say:

- Package data that lives outside the package in the repository: ``models/``,
  ``provisioning/profiles/`` and ``systemd/`` are copied into ``appliance/_data/`` of the
  built wheel, where :func:`appliance.common.resources.data_dir` finds them in an install
  (in a checkout it reads the repository's directories).
- Which side a wheel carries: ``APPLIANCE_SIDE=box`` builds the box without the station's code
  (no receiver, store or officer's tools), ``APPLIANCE_SIDE=station`` the station without the
  box pipeline; unset, both. Install each with its extra, e.g.
  ``APPLIANCE_SIDE=box pip install '.[box]'`` (docs/architecture.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SIDES = ("box", "station")
#: repository directory -> appliance/_data/<name>, per side that needs it
DATA = {
    "models": ("models", ("box",)),
    "profiles": ("provisioning/profiles", SIDES),
    "systemd": ("systemd", SIDES),
}


def _sides() -> tuple[str, ...]:
    side = os.environ.get("APPLIANCE_SIDE", "").strip()
    if side and side not in SIDES:
        raise SystemExit(f"APPLIANCE_SIDE={side!r}: use 'box', 'station' or leave it unset for both")
    return (side,) if side else SIDES


def _packages() -> list[str]:
    excluded = [f"appliance.{other}*" for other in SIDES if other not in _sides()]
    return find_packages(include=["appliance", "appliance.*"], exclude=excluded)


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return    # an editable install reads the repository's directories
        for name, (source, sides) in DATA.items():
            if not set(sides) & set(_sides()):
                continue
            target = Path(self.build_lib) / "appliance" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(packages=_packages(), cmdclass={"build_py": BuildWithData})
