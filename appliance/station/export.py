"""Decrypting a stored clip for a named operator with a reason, with a verification report.

The only place the station's HPKE private key is loaded. Which rendition (docs/envelope.md):
by default the one the station key opens — for a version-2 envelope the ``redacted`` one
(bystanders pixelated), for version 1 its only one; with ``evidence_key`` (a file in
supervisors' custody) the ``full`` one of a version-2 envelope. Writes, into OUT_DIR:

    <name>.webm           the clip (<name>.full.webm for the full rendition)
    <name>.metadata.json  the sealed metadata (event, tracks, frame times and hashes)
    <name>.report.json    device, signature, rendition, per-frame hash check, operator and reason
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError
from appliance.contracts.envelope import RENDITION_FULL, EnvelopeError, open_envelope, parse_envelope
from appliance.contracts.keys import HpkePrivateKey, load_hpke_private_key
from appliance.contracts.synthetic import decoded_frame_hashes
from appliance.station.keys import StationKeyPaths
from appliance.station.registry import DeviceRegistry
from appliance.station.storage import StorageSettings
from appliance.station.store import ClipStore


class AccessRefused(InputError):
    """Decrypting without a named operator and a reason is refused."""


@dataclass(frozen=True)
class ExportResult:
    webm: Path
    metadata: Path
    report_path: Path
    report: dict[str, Any]

    @property
    def intact(self) -> bool:
        return self.report["verdict"] == "intact"


def require_operator(operator: str | None, reason: str | None) -> tuple[str, str]:
    if not operator or not operator.strip():
        raise AccessRefused("access refused: --operator NAME is required to decrypt a clip")
    if not reason or not reason.strip():
        raise AccessRefused("access refused: a non-empty --reason is required to decrypt a clip "
                            "(e.g. a case number and why the clip is needed)")
    return operator.strip(), reason.strip()


class _AnyDeviceKeys:
    """Disabled devices' clips stay verifiable at export."""

    def __init__(self, registry: DeviceRegistry):
        self.registry = registry

    def signing_public(self, device_id: str):
        return self.registry.signing_public_any(device_id)


def frame_check(webm_path: Path, expected: list[str]) -> dict[str, Any]:
    """Re-decodes the WebM and compares each frame's SHA-256 with the sealed list."""
    decoded = decoded_frame_hashes(str(webm_path))
    mismatched = [i for i, (a, b) in enumerate(zip(decoded, expected, strict=False)) if a != b]
    return {"expected": len(expected), "decoded": len(decoded), "mismatched_frames": mismatched,
            "missing_frames": list(range(len(decoded), len(expected))),
            "extra_frames": list(range(len(expected), len(decoded))),
            "ok": not mismatched and len(decoded) == len(expected)}


def prepare_out_dir(out_dir: str | Path, name: str) -> tuple[Path, Path, Path]:
    """The three output paths, checked before anything is recorded or decrypted.

    Decrypted video shows people: OUT_DIR is created 0700 (an existing one must not be open to
    group or others) and an earlier export is never overwritten silently."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out}: not a directory (fix: give a new directory for the export)")
        mode = stat.S_IMODE(out.stat().st_mode)
        if mode & 0o077:
            raise InputError(f"{out}: mode {mode:04o} lets other users read decrypted video (fix: "
                             f"'chmod 700 {out}' or give a new directory, which is created 0700)")
    paths = (out / f"{name}.webm", out / f"{name}.metadata.json", out / f"{name}.report.json")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise InputError(f"{existing[0]} already exists (an earlier export); refusing to overwrite it "
                         "(fix: choose another OUT_DIR or remove the earlier export first)")
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc} (fix: give a directory you may write)") from None
    return paths


def _write_private(path: Path, data: bytes) -> None:
    """0600, created exclusively (never through a symlink or over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def window_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the clip covers against what its trigger asked for (docs/clip.md, "Short clips")."""
    tracks = metadata.get("tracks")
    window = tracks.get("window") if isinstance(tracks, dict) else None
    if not isinstance(window, dict):
        return {"complete": None, "note": "the clip does not record its window"}
    out = {k: window.get(k) for k in ("requested_s", "covered_s", "missing_before_s", "missing_after_s", "complete")}
    notes = []
    if (window.get("missing_before_s") or 0) > 0.2:
        notes.append(f"{window['missing_before_s']:.1f} s before the first frame were not in the ring "
                     "(the stream had just started, or the camera reconnected)")
    if (window.get("missing_after_s") or 0) > 0.2:
        notes.append(f"{window['missing_after_s']:.1f} s after the last frame never came "
                     "(the stream ended or the box stopped before the post-roll)")
    out["note"] = "; ".join(notes)
    return out


def _opening_key(station_dir: str | Path, evidence_key: str | Path | None) -> HpkePrivateKey:
    """The station HPKE key, or the evidence key from its custody file (checked against the
    station's evidence public key, so a wrong file is named as such before any decryption)."""
    paths = StationKeyPaths.of(station_dir)
    if evidence_key is None:
        return load_hpke_private_key(paths.hpke_private)
    key = load_hpke_private_key(evidence_key)
    if key.public_key().fingerprint == load_hpke_private_key(paths.hpke_private).public_key().fingerprint:
        raise InputError(f"{evidence_key} is the station HPKE key, not the evidence key (fix: give the evidence "
                         "key file made by 'appliance station evidence-key init')")
    return key


def decrypt_envelope_to(data: bytes, out_dir: str | Path, name: str, *, station_dir: str | Path,
                        operator: str | None, reason: str | None, audit: Any = None,
                        clip_id: str | None = None, settings: StorageSettings | None = None,
                        evidence_key: str | Path | None = None) -> ExportResult:
    """Verifies and decrypts one rendition of ``data``: the station key's (default), or with
    ``evidence_key`` (path of the evidence private key) the full one of a version-2 envelope."""
    operator, reason = require_operator(operator, reason)
    wanted = RENDITION_FULL if evidence_key is not None else None
    webm, meta, report_path = prepare_out_dir(out_dir, f"{name}.full" if wanted else name)
    parsed = parse_envelope(data)
    if wanted and parsed.header.version == 1:
        raise InputError(f"{clip_id or name} is an envelope version 1: it has no evidence rendition; its only "
                         "rendition (not bystander-pixelated) opens with the station key (fix: drop --evidence-key)")
    rendition = wanted or ("redacted" if parsed.header.version == 2 else RENDITION_FULL)
    key = _opening_key(station_dir, evidence_key)
    if audit is not None:  # recorded (and refused by the log's own rules) BEFORE decrypting
        audit.append("station.export", clip_id=clip_id, device_id=parsed.header.device_id,
                     sequence=parsed.header.sequence, envelope_sha256=parsed.sha256,
                     operator=operator, reason=reason, rendition=rendition,
                     key="evidence" if wanted else "station")
    registry = DeviceRegistry(station_dir, settings=settings)
    try:
        device = registry.get(parsed.header.device_id, include_disabled=True)
        try:
            opened = open_envelope(data, key, _AnyDeviceKeys(registry), rendition=wanted)
        except EnvelopeError as exc:
            if exc.reason == "wrong_key" and wanted:
                raise EnvelopeError("wrong_key", f"{evidence_key} is not the evidence key this clip's full "
                                                 f"rendition is sealed to ({exc.detail})") from None
            raise
    except Exception as exc:
        # A failed export must not read like a successful one in the DPO's report.
        if audit is not None:
            audit.append("station.export_result", clip_id=clip_id, envelope_sha256=parsed.sha256,
                         operator=operator, verdict="failed", error=getattr(exc, "reason", type(exc).__name__))
        raise
    finally:
        registry.close()
    assert device is not None  # open_envelope raised unknown_device otherwise
    _write_private(webm, opened.video)
    _write_private(meta, (json.dumps(opened.metadata, indent=2, sort_keys=True) + "\n").encode())
    frames = frame_check(webm, list(opened.metadata.get("frame_sha256", [])))
    report = {
        "format": "appliance-export-report", "version": 1, "clip_id": clip_id,
        "envelope_sha256": parsed.sha256, "device_id": parsed.header.device_id,
        "device_signing_key": device.signing_fingerprint, "device_enabled": device.enabled,
        "device_status": device.status,
        "sequence": parsed.header.sequence, "signature": "valid", "decryption": "ok",
        "envelope_version": parsed.header.version, "rendition": opened.rendition,
        "bystanders": "pixelated" if opened.rendition == "redacted" else "visible",
        "header": parsed.header.to_json(), "frames": frames,
        "verdict": "intact" if frames["ok"] else "altered",
        "window": window_summary(opened.metadata),
        "operator": operator, "reason": reason, "exported_unix_ms": int(time.time() * 1000),
    }
    _write_private(report_path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    if audit is not None:
        audit.append("station.export_result", clip_id=clip_id, envelope_sha256=parsed.sha256,
                     operator=operator, verdict=report["verdict"], rendition=opened.rendition,
                     mismatched_frames=frames["mismatched_frames"][:100])
    return ExportResult(webm, meta, report_path, report)


def export_clip(station_dir: str | Path, clip_id: str, out_dir: str | Path, *, operator: str | None,
                reason: str | None, audit: Any = None, settings: StorageSettings | None = None,
                evidence_key: str | Path | None = None) -> ExportResult:
    """Verifies and decrypts a stored clip for ``operator`` with ``reason`` (both required):
    the station key's rendition, or with ``evidence_key`` the full one."""
    require_operator(operator, reason)  # refuse before touching anything
    store = ClipStore(station_dir, settings=settings)
    try:
        clip = store.get(clip_id)
        data = store.read_envelope(clip)
    finally:
        store.close()
    return decrypt_envelope_to(data, out_dir, clip_id, station_dir=station_dir, operator=operator,
                               reason=reason, audit=audit, clip_id=clip_id, settings=settings,
                               evidence_key=evidence_key)
