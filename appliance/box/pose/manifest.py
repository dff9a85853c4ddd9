"""The model manifest (models/manifest.toml) and the hash check that guards every model load.

A model decides what the appliance detects, and every sealed clip records the hash of the
model that produced it, so a file whose sha256 differs from its manifest entry is refused.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.common.errors import ModelError
from appliance.common.resources import data_dir
from appliance.common.schema import build, opt


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


# The file as written, validated by appliance.common.schema (unknown keys refused, each problem
# naming its key and the fix).
@dataclass(frozen=True, kw_only=True)
class ManifestModel:
    name: str = opt(nonempty=True, fix="the name configs use, e.g. name = \"yolo11n-pose\"")
    file: str = opt(nonempty=True, fix="the file beside manifest.toml, e.g. file = \"yolo11n-pose.onnx\"")
    sha256: str = opt(nonempty=True, fix="the file's SHA-256 (sha256sum), 64 hex digits")
    licence: str = opt(nonempty=True, fix="the licence of the weights, e.g. licence = \"AGPL-3.0\"")
    source: str = opt(nonempty=True, fix="where the weights come from and how the file was made")
    task: str = opt("", fix="what the model does, e.g. task = \"multi-person 2D pose\"")
    keypoint_order: str = opt(nonempty=True, choices=("coco17",),
                              fix="keypoint_order = \"coco17\" (the only order the appliance reads)")
    input_name: str = opt(nonempty=True, fix="the graph's input tensor name, e.g. \"images\"")
    input_layout: str = opt(nonempty=True, fix="shape, type and meaning of the input")
    output_name: str = opt(nonempty=True, fix="the graph's output tensor name, e.g. \"output0\"")
    output_layout: str = opt(nonempty=True, fix="shape, type and meaning of the output")
    quantized_from: str = opt("", fix="the name of the fp32 model an INT8 variant was made from")


@dataclass(frozen=True)
class Manifest:
    manifest_version: int = opt(1, choices=(1,), fix="manifest_version = 1")
    model: tuple[ManifestModel, ...] = opt((), fix="one [[model]] table per file")


def default_models_dir() -> Path:
    return data_dir("models")


def load_manifest(models_dir: str | Path | None = None) -> dict[str, ModelEntry]:
    """Reads manifest.toml; raises ModelError naming the entry and key that is wrong."""
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    path = models_dir / "manifest.toml"
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read model manifest {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid TOML: {exc}") from None
    problems: list[str] = []
    manifest = build(Manifest, data, "", problems)
    if problems or manifest is None:
        raise ModelError(f"model manifest {path}: " + "; ".join(problems))
    return {m.name: ModelEntry(
        name=m.name, path=models_dir / m.file, sha256=m.sha256.lower(), licence=m.licence, source=m.source,
        keypoint_order=m.keypoint_order, input_name=m.input_name, input_layout=m.input_layout,
        output_name=m.output_name, output_layout=m.output_layout, quantized_from=m.quantized_from,
    ) for m in manifest.model}


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
