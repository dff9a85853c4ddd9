"""The model manifest (models/manifest.toml) and the hash check that guards every model load.

A model decides what the appliance detects, and every sealed clip records the hash of the
model that produced it, so a file whose sha256 differs from its manifest entry is refused.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.box.config import package_root
from appliance.common.errors import ModelError

REQUIRED_KEYS = ("name", "file", "sha256", "licence", "source", "keypoint_order",
                 "input_name", "input_layout", "output_name", "output_layout")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    sha256: str
    licence: str
    source: str
    keypoint_order: str
    input_name: str
    input_layout: str
    output_name: str
    output_layout: str
    quantized_from: str = ""   # name of the fp32 model an INT8 variant was derived from


def default_models_dir() -> Path:
    return package_root() / "models"


def load_manifest(models_dir: str | Path | None = None) -> dict[str, ModelEntry]:
    """Reads manifest.toml; raises ModelError naming the entry and key that is wrong."""
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    path = models_dir / "manifest.toml"
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid TOML: {exc}") from None
    entries: dict[str, ModelEntry] = {}
    for i, raw in enumerate(data.get("model", [])):
        missing = [k for k in REQUIRED_KEYS if not isinstance(raw.get(k), str) or not raw.get(k)]
        if missing:
            raise ModelError(f"model manifest {path}: model[{i}] lacks {', '.join(missing)}")
        if raw["keypoint_order"] != "coco17":
            raise ModelError(f"model manifest {path}: model {raw['name']!r} has keypoint_order "
                             f"{raw['keypoint_order']!r}; only 'coco17' is supported")
        entries[raw["name"]] = ModelEntry(
            name=raw["name"], path=models_dir / raw["file"], sha256=raw["sha256"].lower(),
            licence=raw["licence"], source=raw["source"], keypoint_order=raw["keypoint_order"],
            input_name=raw["input_name"], input_layout=raw["input_layout"],
            output_name=raw["output_name"], output_layout=raw["output_layout"],
            quantized_from=raw.get("quantized_from", ""),
        )
    return entries


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_model(name: str, models_dir: str | Path | None = None) -> tuple[ModelEntry, bytes]:
    """Returns the manifest entry and the model bytes, after checking the sha256.

    The bytes are hashed and handed to onnxruntime from the same buffer, so the file cannot
    change between the check and the load.
    """
    entries = load_manifest(models_dir)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise ModelError(f"model {name!r} is not in the manifest (known: {known}); "
                         "fix: set pose.model to a listed name")
    entry = entries[name]
    try:
        blob = entry.path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {entry.path} cannot be read: {exc.strerror or exc}; "
                         "fix: run `make models` or restore the file") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry.sha256:
        raise ModelError(
            f"model file {entry.path} has sha256 {digest}, but the manifest lists {entry.sha256}; "
            "refusing to load it (fix: restore the original file, or re-export it and update "
            "models/manifest.toml through review)")
    return entry, blob
