"""What provisioning writes besides keys: the config file (validated, replaced atomically) and
``provision.jsonl`` (what provisioning did). The state directory's layout itself is a contract:
:mod:`appliance.contracts.layout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

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


def read_config_document(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read it as TOML: {exc} (fix: correct or move the file)"]) from None


def apply_updates(doc: dict[str, Any], updates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of ``doc`` with ``{section: {key: value}}`` set (sections created as needed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for section, values in updates.items():
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError("<config>", [f"{section}: must be a table (fix: [{section}])"])
        table.update(values)
    return out


HEADER = ("# Appliance configuration (docs/provisioning.md). Rewritten by `appliance provision`:\n"
          "# comments are not kept. Reference with every key: provisioning/appliance.example.toml\n\n")


def write_config_document(path: Path, doc: dict[str, Any]) -> AppConfig:
    """Validates ``doc`` as a config, then replaces ``path`` atomically (keeps a ``.bak``)."""
    cfg = parse_config(doc, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER + tomli_w.dumps(doc)
    if path.exists():
        with contextlib.suppress(OSError):
            atomic_write(path.with_name(path.name + ".bak"), path.read_bytes(), mode=0o666)
    atomic_write(path, text.encode("utf-8"), mode=0o644, exact_mode=True)
    return cfg
