"""Where the bundled data files (models/, provisioning/profiles/, samples/) are found."""

from __future__ import annotations

from pathlib import Path


def package_root() -> Path:
    """The directory holding ``appliance/``, ``models/`` and ``provisioning/`` in a checkout."""
    return Path(__file__).resolve().parent.parent.parent
