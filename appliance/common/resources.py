"""Where the bundled data files are found: models, legal profiles and systemd units.

An installed package carries them in ``appliance/_data/`` (copied there by setup.py); a
checkout (and an editable install) reads the repository's ``models/``,
``provisioning/profiles/`` and ``systemd/``.
"""

from __future__ import annotations

from pathlib import Path

#: data directory name -> where it is in the repository
IN_CHECKOUT = {"models": "models", "profiles": "provisioning/profiles", "systemd": "systemd"}


def package_root() -> Path:
    """The directory holding ``appliance/``, ``models/`` and ``provisioning/`` in a checkout."""
    return Path(__file__).resolve().parent.parent.parent


def data_dir(name: str) -> Path:
    """The bundled directory ``name`` (one of :data:`IN_CHECKOUT`)."""
    installed = Path(__file__).resolve().parent.parent / "_data" / name
    if installed.is_dir():
        return installed
    return package_root() / IN_CHECKOUT[name]
