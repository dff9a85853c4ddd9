"""The model manifest (models/manifest.toml) and the hash check that guards every model load.

A model decides what the appliance detects, and every sealed clip records the hash of the
model that produced it, so a file whose sha256 differs from its manifest entry is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.box.config import package_root
from appliance.common.errors import ModelError

REQUIRED_KEYS = ("name", "file", "sha256", "licence", "source", "architecture", "keypoint_order",
                 "input_name", "input_layout", "output_name", "output_layout")

#: What code reads a model: the pose stage picks its estimator by this, the object stage and
#: the fight classifier check it, so a model can never be handed to the wrong decoder.
ARCHITECTURES = ("yolo-pose", "movenet-multipose", "yolox", "logistic-regression-json")
#: Architectures the pose stage can run ([pose] model).
POSE_ARCHITECTURES = ("yolo-pose", "movenet-multipose")


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
    architecture: str = "yolo-pose"
    quantized_from: str = ""   # name of the fp32 model an INT8 variant was derived from
    input_width: int = 0       # the input width the model was made for (0: not stated)
    #: Monotone piecewise-linear maps ([raw, calibrated] knots, raw ascending) putting a pose
    #: model's person / keypoint scores on the scale the thresholds were tuned on (YOLO11n-pose).
    score_calibration: tuple[tuple[float, float], ...] = ()
    keypoint_calibration: tuple[tuple[float, float], ...] = ()

    @property
    def agpl(self) -> bool:
        """Whether shipping this model carries AGPL obligations (a police force or integrator
        may not be able to accept them: `provision check` warns)."""
        return "AGPL" in self.licence.upper()


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
        if raw["keypoint_order"] not in ("coco17", "none"):
            raise ModelError(f"model manifest {path}: model {raw['name']!r} has keypoint_order "
                             f"{raw['keypoint_order']!r}; only 'coco17' (or 'none' for a detector "
                             "without keypoints) is supported")
        if raw["architecture"] not in ARCHITECTURES:
            raise ModelError(f"model manifest {path}: model {raw['name']!r} has architecture "
                             f"{raw['architecture']!r}; known: {', '.join(ARCHITECTURES)}")
        if raw["architecture"] in POSE_ARCHITECTURES and raw["keypoint_order"] != "coco17":
            raise ModelError(f"model manifest {path}: pose model {raw['name']!r} must give "
                             "keypoint_order 'coco17' (the behaviour stage reads that order only)")
        width = raw.get("input_width", 0)
        if not isinstance(width, int) or isinstance(width, bool) or width < 0 or width % 32:
            raise ModelError(f"model manifest {path}: model {raw['name']!r} has input_width "
                             f"{width!r}; must be a multiple of 32")
        curves = {key: _calibration(raw.get(key, []), f"model manifest {path}: model {raw['name']!r}: {key}")
                  for key in ("score_calibration", "keypoint_calibration")}
        entries[raw["name"]] = ModelEntry(
            name=raw["name"], path=models_dir / raw["file"], sha256=raw["sha256"].lower(),
            licence=raw["licence"], source=raw["source"], keypoint_order=raw["keypoint_order"],
            input_name=raw["input_name"], input_layout=raw["input_layout"],
            output_name=raw["output_name"], output_layout=raw["output_layout"],
            architecture=raw["architecture"], quantized_from=raw.get("quantized_from", ""),
            input_width=width, **curves,
        )
    return entries


def _calibration(value, where: str) -> tuple[tuple[float, float], ...]:
    """Validates a list of [raw, calibrated] knots: numbers in 0..1, raw strictly ascending,
    calibrated non-decreasing (a calibration must not reorder scores)."""
    ok = isinstance(value, list) and all(
        isinstance(k, list) and len(k) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in k)
        for k in value)
    if ok and value:
        xs, ys = [k[0] for k in value], [k[1] for k in value]
        ok = len(value) >= 2 and all(a < b for a, b in itertools.pairwise(xs)) and all(a <= b for a, b in itertools.pairwise(ys))
    if not ok:
        raise ModelError(f"{where} must be a list of at least two [raw, calibrated] pairs in 0..1, raw "
                         "ascending and calibrated non-decreasing (fix: re-run scripts/calibrate_pose_scores.py)")
    return tuple((float(a), float(b)) for a, b in value)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_model(name: str, models_dir: str | Path | None = None, *,
                   purpose: str = "pose.model") -> tuple[ModelEntry, bytes]:
    """Returns the manifest entry and the model bytes, after checking the sha256.

    The bytes are hashed and handed to onnxruntime from the same buffer, so the file cannot
    change between the check and the load.
    """
    entries = load_manifest(models_dir)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise ModelError(f"model {name!r} is not in the manifest (known: {known}); "
                         f"fix: set {purpose} to a listed name")
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


def verified_session(name: str, models_dir: str | Path | None = None, *, threads: int = 2,
                     purpose: str = "pose.model", architecture: tuple[str, ...] = ()):
    """The manifest entry and an onnxruntime CPU session on the hash-checked bytes.

    One place for how every ONNX model of the box is opened (sequential, ``threads`` intra-op
    threads, full graph optimisation). ``architecture``: the architectures the caller can
    decode; another one is refused naming ``purpose`` (a detector is no pose model)."""
    import onnxruntime as ort

    entry, blob = verified_model(name, models_dir, purpose=purpose)
    if architecture and entry.architecture not in architecture:
        raise ModelError(f"{purpose} = {name!r} is a {entry.architecture} model; this needs "
                         f"{' or '.join(architecture)} (fix: set {purpose} to such a model)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return entry, ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
