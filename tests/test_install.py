"""Installed, not only checked out: a non-editable `pip install .` into a fresh venv finds its
models, profiles and unit files as package data and analyses the sample; a box-only build
carries no station code.

pip resolves the dependencies as configured on the machine (its wheel cache, find-links and
indexes; on a fresh CI machine the registry, after `make setup` warmed the cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("appliance", "models", "provisioning", "systemd", "setup.py", "setup.cfg", "pyproject.toml",
           "MANIFEST.in", "README.md", "NOTICE")


def copy_sources(dest: Path) -> Path:
    """The files a build reads, without the checkout's venv, caches or build residue (a build
    in the checkout itself would write build/ and *.egg-info there)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "_data")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_analyses_the_sample(tmp_path):
    src = copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", f"{src}[box,station]"], env=env, cwd=tmp_path)
    shutil.rmtree(src)          # nothing may be found in the source tree any more

    where = run([venv / "bin" / "python", "-c", "import appliance, appliance.common.resources as r; "
                 "print(appliance.__file__); print(r.data_dir('models')); print(r.data_dir('systemd'))"],
                env=env, cwd=tmp_path).stdout.split()
    assert all(str(venv) in w for w in where), where
    assert (Path(where[2]) / "appliance-pixel.service").is_file()

    app = venv / "bin" / "appliance"
    out = run([app, "analyze", ROOT / "samples" / "demo_skeleton.mp4", "--json"], env=env, cwd=tmp_path).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["type"] == "summary" and summary["frames"] > 0 and summary["persons_max"] >= 1
    assert "bw-polg-44-4" in run([app, "profiles", "list"], env=env, cwd=tmp_path).stdout
    assert "ok" in run([app, "models", "verify"], env=env, cwd=tmp_path).stdout.lower()


def test_a_box_build_carries_no_station_code_and_a_station_build_no_box(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for side in ("box", "station"):
        src = copy_sources(tmp_path / f"src-{side}")     # a fresh tree: a build leaves build/ behind
        out = tmp_path / side
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src],
            env=dict(env, APPLIANCE_SIDE=side), cwd=tmp_path)
        (wheel,) = out.glob("appliance-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        other = "station" if side == "box" else "box"
        assert not [n for n in names if n.startswith(f"appliance/{other}/")], side
        assert [n for n in names if n.startswith(f"appliance/{side}/")]
        assert "appliance/contracts/envelope.py" in names and "appliance/_data/profiles/bw-polg-44-4.toml" in names
        assert ("appliance/_data/models/manifest.toml" in names) == (side == "box")
