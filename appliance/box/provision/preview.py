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

from appliance.box.capture.source import camera_target, classify_source, downscale
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
    target: str | int = int(camera.source) if camera.source.isdigit() else camera_target(camera)
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


GRID_COLOUR = (255, 255, 255)   # white, drawn thin and half transparent over the scene
MASK_LABEL_COLOUR = (200, 200, 200)


def polygon_pixels(points, w: int, h: int) -> np.ndarray:
    """bool[h, w]: the pixels inside a normalised polygon (as the zone check sees them)."""
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(points) * [w, h]).astype(np.int32)], 1)
    return m.astype(bool)


def zones_under_masks(cfg: AppConfig, w: int, h: int) -> list[str]:
    """Names of zones that lie entirely under privacy masks: they can never trigger."""
    masked = MaskSet.from_regions(cfg.privacy_masks, w, h).masked_pixels(w, h)
    out = []
    for zone in cfg.zones:
        inside = polygon_pixels(zone.polygon, w, h)
        if inside.any() and masked[inside].all():
            out.append(zone.name)
    return out


def _label(img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float = 0.55) -> None:
    """Text with a dark outline, readable on any background (and on a black mask)."""
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _draw_grid(img: np.ndarray) -> None:
    """Lines every 0.1 of width and height, labelled 0.0 … 1.0: polygons are written in these
    normalised coordinates (x to the right, y downwards), so the technician reads them off."""
    h, w = img.shape[:2]
    overlay = img.copy()
    for i in range(1, 10):
        x, y = round(w * i / 10), round(h * i / 10)
        cv2.line(overlay, (x, 0), (x, h - 1), GRID_COLOUR, 1)
        cv2.line(overlay, (0, y), (w - 1, y), GRID_COLOUR, 1)
    cv2.addWeighted(overlay, 0.35, img, 0.65, 0, dst=img)
    for i in range(0, 11, 2):
        x, y = round(w * i / 10), round(h * i / 10)
        _label(img, f"{i / 10:.1f}", (min(max(x - 10, 2), w - 30), 14), GRID_COLOUR, 0.4)   # x along the top
        _label(img, f"{i / 10:.1f}", (2, min(max(y + 5, 28), h - 4)), GRID_COLOUR, 0.4)      # y down the left


def render_preview(cfg: AppConfig, image: np.ndarray) -> np.ndarray:
    """The frame as analysis sees it (masks black), a 0..1 coordinate grid, each privacy mask
    labelled with its name and each zone outlined and named."""
    h, w = image.shape[:2]
    out = MaskSet.from_regions(cfg.privacy_masks, w, h).apply(image).copy()
    _draw_grid(out)
    for mask in cfg.privacy_masks:
        pts = np.round(np.asarray(mask.polygon) * [w, h]).astype(np.int32)
        cx, cy = pts.mean(axis=0)
        _label(out, f"mask: {mask.name}", (int(max(2, min(cx - 40, w - 120))), int(max(30, min(cy, h - 6)))),
               MASK_LABEL_COLOUR, 0.5)
    for zone in cfg.zones:
        pts = np.round(np.asarray(zone.polygon) * [w, h]).astype(np.int32)
        cv2.polylines(out, [pts], True, ZONE_COLOUR, 2, cv2.LINE_AA)
        x, y = pts.min(axis=0)
        _label(out, f"zone: {zone.name}", (int(x) + 4, int(max(y + 18, 30))), ZONE_COLOUR)
    return out


def write_preview(config_path: str | Path, out: str | Path, *, timeout_s: float = 10.0,
                  reason: str = "installation: checking privacy masks and zones") -> dict:
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
             "camera": redact_url(cfg.camera.source), "reason": reason}
    layout = layout_for(cfg)
    try:
        record(layout, "preview", **entry)
    except OSError as exc:
        log.warning("cannot record the preview in %s: %s", layout.provision_log, exc)
    _audit(cfg, entry)
    hidden = zones_under_masks(cfg, int(rendered.shape[1]), int(rendered.shape[0]))
    # Not recorded: a warning for the technician, as `provision check` fails the same config.
    return {**entry, "warnings": [f"zone {name!r} lies entirely under privacy masks: it can never trigger "
                                  "(fix: move the zone or shrink the masks)" for name in hidden]}


def _audit(cfg: AppConfig, entry: dict) -> None:
    """Also into the device audit log when it is there and writable (best effort, logged)."""
    from appliance.common.errors import ApplianceError
    from appliance.contracts.audit.log import AuditLog
    from appliance.contracts.keys import load_signing_key_if_readable

    if not cfg.audit_log.parent.is_dir():
        return
    try:
        # With the device key when this user can read it (the technician can): a writer without
        # it may append to the log but never create it (a keyless genesis would make the log
        # verify as TAMPERED). Without it and without a log, the provision log alone holds it.
        with AuditLog(cfg.audit_log, device=cfg.device.id, signer=load_signing_key_if_readable(cfg.seal.signing_key)) as audit:
            audit.append("provision.preview", **entry)
    except (ApplianceError, OSError, ValueError) as exc:  # the provision log already holds it
        log.warning("preview not written to the audit log: %s", exc)
