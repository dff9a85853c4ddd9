"""`provision preview`: one frame from the configured camera, privacy masks burned in.

The only provisioning command that writes pixels, so it is explicit (``--out`` is required),
writes exactly one image, and is recorded in ``provision.jsonl`` (file, size, SHA-256, which
masks) and, when the audit log is writable, in the audit log. Zones are outlined so the
technician sees where behaviour may trigger; masked areas are black, exactly as in analysis
(the lead's :class:`appliance.box.policy.masks.MaskSet`, the same rasterisation).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from appliance.box.capture.source import classify_source, downscale
from appliance.box.config import AppConfig, CameraConfig, load_config
from appliance.box.policy.masks import MaskSet
from appliance.box.provision.files import layout_for, record
from appliance.common.errors import InputError
from appliance.common.urls import redact_url

log = logging.getLogger(__name__)

ZONE_COLOUR = (0, 200, 255)   # BGR amber: visible on most scenes, not a mask colour


@dataclass(frozen=True)
class CameraSample:
    """Frames decoded from the camera (downscaled like the ring) and the size the camera sends."""

    frames: list[np.ndarray]
    native_size: tuple[int, int]   # (width, height) before downscaling


def grab_camera(camera: CameraConfig, max_width: int, count: int = 1, timeout_s: float = 10.0,
                every: int = 1) -> CameraSample:
    """Opens the camera once and keeps ``count`` frames, one of every ``every`` decoded (downscaled
    like the ring); bounded."""
    kind = classify_source(camera.source)
    target: str | int = int(camera.source) if camera.source.isdigit() else camera.source
    if kind == "file" and not Path(camera.source).is_file():
        raise InputError(f"camera.source {camera.source!r}: no such file")
    params: list[int] = []
    if kind == "stream":
        ms = int(timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    try:
        if not cap.isOpened():
            raise InputError(f"cannot open camera {redact_url(camera.source)} (check address, credentials, cable)")
        frames, native = [], (0, 0)
        for i in range(count * every):
            ok, image = cap.read()
            if not ok or image is None:
                break
            if i % every:
                continue
            native = (image.shape[1], image.shape[0])
            frames.append(downscale(image, max_width))
        if not frames:
            raise InputError(f"camera {redact_url(camera.source)} opened but no frame decoded")
        return CameraSample(frames, native)
    finally:
        cap.release()


def grab_frames(camera: CameraConfig, max_width: int, count: int = 1, timeout_s: float = 10.0) -> list[np.ndarray]:
    """:func:`grab_camera`'s frames only."""
    return grab_camera(camera, max_width, count, timeout_s).frames


def render_preview(cfg: AppConfig, image: np.ndarray) -> np.ndarray:
    """The frame as analysis sees it (masks black) with zone outlines and names drawn on top."""
    h, w = image.shape[:2]
    out = MaskSet.from_regions(cfg.privacy_masks, w, h).apply(image).copy()
    for zone in cfg.zones:
        pts = np.round(np.asarray(zone.polygon) * [w, h]).astype(np.int32)
        cv2.polylines(out, [pts], True, ZONE_COLOUR, 2, cv2.LINE_AA)
        x, y = pts.min(axis=0)
        cv2.putText(out, zone.name, (int(x) + 4, int(y) + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    ZONE_COLOUR, 1, cv2.LINE_AA)
    return out


def write_preview(config_path: str | Path, out: str | Path, *, timeout_s: float = 10.0) -> dict:
    """Renders and writes one masked frame to ``out`` (.png or .jpg); returns what was recorded."""
    cfg = load_config(config_path)
    if cfg.camera is None:
        raise InputError("no [camera] in the config (fix: add [camera] source = ...)")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--out {out}: use a .png or .jpg file name")
    image = grab_frames(cfg.camera, cfg.ring.max_width, 1, timeout_s)[0]
    rendered = render_preview(cfg, image)
    ok, encoded = cv2.imencode(out.suffix.lower(), rendered)
    if not ok:
        raise InputError(f"cannot encode {out.suffix} image")
    data = encoded.tobytes()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # pixels: owner only
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(out, 0o600)
    entry = {"out": str(out.resolve()), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "width": int(rendered.shape[1]), "height": int(rendered.shape[0]),
             "masks": [m.name for m in cfg.privacy_masks], "zones": [z.name for z in cfg.zones],
             "camera": redact_url(cfg.camera.source)}
    layout = layout_for(cfg)
    try:
        record(layout, "preview", **entry)
    except OSError as exc:
        log.warning("cannot record the preview in %s: %s", layout.provision_log, exc)
    _audit(cfg, entry)
    return entry


def _audit(cfg: AppConfig, entry: dict) -> None:
    """Also into the device audit log when it is there and writable (best effort, logged)."""
    from appliance.common.errors import ApplianceError
    from appliance.contracts.audit.log import AuditLog

    if not cfg.audit_log.parent.is_dir():
        return
    try:
        with AuditLog(cfg.audit_log, device=cfg.device.id) as audit:
            audit.append("provision.preview", **entry)
    except (ApplianceError, OSError, ValueError) as exc:  # the provision log already holds it
        log.warning("preview not written to the audit log: %s", exc)
