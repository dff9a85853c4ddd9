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

from appliance.common.errors import ModelError
from appliance.common.resources import data_dir
from appliance.common.schema import build, opt

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
    score_calibration: tuple[tuple[float, ...], ...] = ()
    keypoint_calibration: tuple[tuple[float, ...], ...] = ()

    @property
    def agpl(self) -> bool:
        """Whether shipping this model carries AGPL obligations (a police force or integrator
        may not be able to accept them: `provision check` warns)."""
        return "AGPL" in self.licence.upper()


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
    architecture: str = opt(choices=ARCHITECTURES,
                            fix="which decoder reads the file, e.g. architecture = \"yolo-pose\"")
    keypoint_order: str = opt(nonempty=True, choices=("coco17", "none"),
                              fix="keypoint_order = \"coco17\" (the only order the appliance reads; "
                                  "\"none\" for a detector without keypoints)")
    input_width: int = opt(0, lo=0, hi=4096, fix="the input width the model was made for, a multiple of 32, "
                                                 "e.g. input_width = 640")
    input_name: str = opt(nonempty=True, fix="the graph's input tensor name, e.g. \"images\"")
    input_layout: str = opt(nonempty=True, fix="shape, type and meaning of the input")
    output_name: str = opt(nonempty=True, fix="the graph's output tensor name, e.g. \"output0\"")
    output_layout: str = opt(nonempty=True, fix="shape, type and meaning of the output")
    quantized_from: str = opt("", fix="the name of the fp32 model an INT8 variant was made from")
    score_calibration: tuple[tuple[float, ...], ...] = opt(
        (), lo=0.0, hi=1.0, fix="[raw, calibrated] pairs in 0..1 (scripts/calibrate_pose_scores.py)")
    keypoint_calibration: tuple[tuple[float, ...], ...] = opt(
        (), lo=0.0, hi=1.0, fix="[raw, calibrated] pairs in 0..1 (scripts/calibrate_pose_scores.py)")


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
    if manifest is not None:
        for i, m in enumerate(manifest.model):
            _check_meaning(m, f"model[{i}]", problems)
    if problems or manifest is None:
        raise ModelError(f"model manifest {path}: " + "; ".join(problems))
    return {m.name: ModelEntry(
        name=m.name, path=models_dir / m.file, sha256=m.sha256.lower(), licence=m.licence, source=m.source,
        keypoint_order=m.keypoint_order, input_name=m.input_name, input_layout=m.input_layout,
        output_name=m.output_name, output_layout=m.output_layout, architecture=m.architecture,
        quantized_from=m.quantized_from, input_width=m.input_width,
        score_calibration=m.score_calibration, keypoint_calibration=m.keypoint_calibration,
    ) for m in manifest.model}


def _check_meaning(m: ManifestModel, where: str, problems: list[str]) -> None:
    """What the key-by-key schema cannot say: pose models give COCO-17, widths are multiples of
    32, a calibration is a monotone list of pairs (it must not reorder scores)."""
    if m.architecture in POSE_ARCHITECTURES and m.keypoint_order != "coco17":
        problems.append(f"{where}.keypoint_order = {m.keypoint_order!r}: a pose model must give 'coco17' "
                        "(fix: keypoint_order = \"coco17\"; the behaviour stage reads that order only)")
    if m.input_width % 32:
        problems.append(f"{where}.input_width = {m.input_width}: must be a multiple of 32 (fix: e.g. 640)")
    for key in ("score_calibration", "keypoint_calibration"):
        knots = getattr(m, key)
        if not knots:
            continue
        xs, ys = [k[0] for k in knots], [k[-1] for k in knots]
        if (len(knots) < 2 or any(len(k) != 2 for k in knots) or any(a >= b for a, b in itertools.pairwise(xs))
                or any(a > b for a, b in itertools.pairwise(ys))):
            problems.append(f"{where}.{key}: must be at least two [raw, calibrated] pairs, raw ascending and "
                            "calibrated non-decreasing (fix: re-run scripts/calibrate_pose_scores.py)")


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
