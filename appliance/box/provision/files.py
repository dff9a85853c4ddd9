"""What provisioning writes besides keys: the config file (validated, replaced atomically) and
``provision.jsonl`` (what provisioning did). The state directory's layout itself is a contract:
:mod:`appliance.contracts.layout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from appliance.box.capture.credentials import redact_passwords
from appliance.box.config import AppConfig, ConfigError, parse_config
from appliance.common.durable import atomic_write
from appliance.contracts.layout import DeviceLayout


def layout_for(cfg: AppConfig) -> DeviceLayout:
    return DeviceLayout(Path(cfg.device.state_dir))


def record(layout: DeviceLayout, action: str, **fields: Any) -> None:
    """Appends one line to ``provision.jsonl``: what provisioning did, when (never secrets)."""
    line = json.dumps({"t_unix_ms": int(time.time() * 1000), "action": action, **fields},
                      sort_keys=True, ensure_ascii=True)
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.provision_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


# ---------------------------------------------------------------------------------------
# Config file: read as a TOML document, change keys, validate the result, replace atomically


def read_config_document(path: Path) -> tomlkit.TOMLDocument:
    """The config as a TOML document that keeps its comments, order and layout (tomlkit)."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return tomlkit.document()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read it as TOML: {exc} (fix: correct or move the file)"]) from None
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(str(path), [f"cannot read it as TOML: {exc} (fix: correct or move the file)"]) from None


def apply_updates(doc: tomlkit.TOMLDocument, updates: dict[str, dict[str, Any]]) -> tomlkit.TOMLDocument:
    """A copy of ``doc`` with ``{section: {key: value}}`` set (sections created as needed); every
    other line, comment and polygon stays as the technician wrote it."""
    out = tomlkit.parse(tomlkit.dumps(doc)) if doc else tomlkit.document()
    for section, values in updates.items():
        if section not in out:
            out.add(section, tomlkit.table())
        table = out[section]
        if not isinstance(table, dict):
            raise ConfigError("<config>", [f"{section}: must be a table (fix: [{section}])"])
        for key, value in values.items():
            table[key] = value
    return out


def plain(doc: tomlkit.TOMLDocument | dict[str, Any]) -> dict[str, Any]:
    """The document as plain Python values, for the config validator."""
    return doc.unwrap() if isinstance(doc, tomlkit.TOMLDocument) else doc


HEADER = ("# Appliance configuration (docs/provisioning.md), written by `appliance provision init`.\n"
          "# `provision` commands change only the keys they own and keep your comments and layout.\n"
          "# Reference with every key: provisioning/appliance.example.toml\n\n")


def write_config_document(path: Path, doc: tomlkit.TOMLDocument) -> AppConfig:
    """Validates ``doc`` as a config, then replaces ``path`` atomically (keeps a ``.bak``)."""
    cfg = parse_config(plain(doc), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = tomlkit.dumps(doc)
    if not (path.exists() and text.strip()):
        text = HEADER + text
    if path.exists():
        with contextlib.suppress(OSError):
            # An old config may still hold a camera password in its URL: never copy it on.
            atomic_write(path.with_name(path.name + ".bak"), redact_passwords(path.read_text("utf-8")).encode("utf-8"),
                         mode=0o666)
    atomic_write(path, text.encode("utf-8"), mode=0o644, exact_mode=True)
    return cfg
