"""Shared helpers for testing systemd units without systemd running (not PID 1 here).

``systemd-analyze verify`` and ``systemd-analyze security --offline=yes`` work on unit files
that are not installed. The units in systemd/ name the installed path
``/opt/appliance/.venv/bin/appliance``; :func:`copy_unit` rewrites it to this checkout's venv
so that ``verify`` can check that the executable exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
INSTALLED_EXEC = "/opt/appliance/.venv/bin/appliance"
#: the checkout's entry point, next to the interpreter running the tests
LOCAL_EXEC = str(Path(sys.executable).parent / "appliance")

requires_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (scripts/ensure-system-deps.sh installs it)",
)


def copy_unit(src: Path, dest_dir: Path, exec_path: str = LOCAL_EXEC, extra: str = "") -> Path:
    """Copies a unit into ``dest_dir`` with ExecStart pointing at ``exec_path``; returns the copy.

    ``extra`` is appended verbatim (e.g. a drop-in's [Service] lines) to test combined settings.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    text = src.read_text().replace(INSTALLED_EXEC, exec_path)
    dest = dest_dir / src.name
    dest.write_text(text + ("\n" + extra if extra else ""))
    return dest


def verify(*units: Path) -> subprocess.CompletedProcess:
    """Runs ``systemd-analyze verify`` on unit files (man page checks off: none are installed)."""
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[str(u) for u in units]],
        check=False, capture_output=True, text=True, timeout=120, cwd=str(units[0].parent),
    )


def security_exposure(unit: Path) -> tuple[float, str]:
    """``systemd-analyze security --offline=yes`` overall exposure (0 best .. 10) and full output."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        check=False, capture_output=True, text=True, timeout=120, cwd=str(unit.parent),
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    if m is None:
        raise AssertionError(f"no exposure figure for {unit}:\n{proc.stdout}\n{proc.stderr}")
    return float(m.group(1)), proc.stdout


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit or drop-in (all sections merged), values in file order."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings
