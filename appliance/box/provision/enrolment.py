"""Device keys, the enrolment request, the station bundle (docs/provisioning.md).

Key generation, storage and fingerprints come from :mod:`appliance.contracts.keys` and
:mod:`appliance.contracts.curve`; this module only decides which keys go where and what the two
documents exchanged with the station say.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

import appliance
from appliance.box.capture.credentials import split_password, write_password
from appliance.box.config import AppConfig, UplinkConfig, load_config, parse_config
from appliance.box.provision.files import (
    apply_updates,
    layout_for,
    plain,
    read_config_document,
    record,
    write_config_document,
)
from appliance.box.provision.network import camera_kind
from appliance.common.errors import InputError
from appliance.common.urls import redact_url
from appliance.contracts.curve import (
    curve_fingerprint,
    generate_curve_keypair,
    load_curve_public,
)
from appliance.contracts.enrolment import (
    REQUEST_CONTEXT,
    REQUEST_FORMAT,
    BundleError,
    b64,
    bundle_fingerprint,
    sign_document,
    verify_bundle,
)
from appliance.contracts.envelope import DEVICE_ID_RE
from appliance.contracts.keys import (
    generate_signing_key,
    load_signing_key,
    load_signing_public_key,
    public_key_fingerprint,
    raw_public,
    save_hpke_public_key,
    write_public_file,
)
from appliance.contracts.layout import DeviceLayout

# ---------------------------------------------------------------------------------------
# init


@dataclass(frozen=True)
class InitResult:
    device_id: str
    config_path: Path
    signing_fingerprint: str
    curve_fingerprint: str
    rotated: bool


def _check_device_id(device_id: str) -> None:
    if not DEVICE_ID_RE.fullmatch(device_id or "") or device_id == "dev-unprovisioned":
        raise InputError(f"device id {device_id!r} is not usable (fix: letters, digits, '.', '_' or '-', "
                         "at most 64, e.g. 'mannheim-paradeplatz-03')")


def init_device(config_path: str | Path, *, device_id: str | None = None, state_dir: str | None = None,
                camera: str | None = None, description: str | None = None,
                force: bool = False) -> InitResult:
    """Creates the device's keys and writes (or updates) its config.

    Refuses when keys exist unless ``force``: then the old private keys are deleted, the new
    ones created, and the rotation (old and new fingerprints) appended to key-rotations.jsonl.
    """
    config_path = Path(config_path)
    doc = read_config_document(config_path)
    device = dict(doc.get("device", {})) if isinstance(doc.get("device"), dict) else {}
    device_id = device_id or device.get("id")
    if not device_id:
        raise InputError("no device id (fix: --device-id NAME, e.g. mannheim-paradeplatz-03)")
    _check_device_id(device_id)
    state = Path(state_dir or device.get("state_dir") or "/var/lib/appliance").absolute()
    layout = DeviceLayout(state)

    updates: dict[str, dict[str, Any]] = {
        "device": {"id": device_id, "state_dir": str(state)},
        "seal": {"signing_key": str(layout.signing_key)},
        "uplink": {"curve_secret": str(layout.curve_secret)},
        "spool": {"dir": str(layout.spool_dir)},
        "audit": {"log": str(layout.audit_log)},
    }
    if description is not None:
        updates["device"]["description"] = description
    camera_password = None
    if camera is not None:
        # The config stays free of secrets: a password given in the URL goes to its own file.
        camera, camera_password = split_password(camera)
        updates["camera"] = {"source": camera}
        if camera_password is not None:
            updates["camera"]["password_file"] = str(layout.camera_password)
    new_doc = apply_updates(doc, updates)
    parse_config(plain(new_doc), str(config_path))  # validate before touching any key

    existing = [p for p in (layout.signing_key, layout.curve_secret, layout.curve_public) if p.exists()]
    old: dict[str, str] = {}
    if existing and not force:
        raise InputError(f"device keys already exist ({existing[0]}); refusing to replace them "
                         "(fix: keep them, or rotate with --force and enrol the device again)")
    if existing:
        old = _current_fingerprints(layout)
        for p in (layout.signing_key, layout.signing_public, layout.curve_secret, layout.curve_public):
            if p.exists():
                p.unlink()

    layout.make_dirs()
    if camera_password is not None:
        write_password(layout.camera_password, camera_password)   # 0600; hand_over() gives it to the pixel user
    signing_public = generate_signing_key(layout.signing_key, public_path=layout.signing_public)
    generate_curve_keypair(layout.uplink_dir, layout.curve_name)
    fps = {"signing": public_key_fingerprint(signing_public),
           "curve": curve_fingerprint(load_curve_public(layout.curve_public))}
    write_public_file(layout.device_file, (json.dumps(
        {"device_id": device_id, "created_unix_ms": int(time.time() * 1000), "fingerprints": fps},
        indent=2, sort_keys=True) + "\n").encode())
    if existing:
        line = json.dumps({"t_unix_ms": int(time.time() * 1000), "device_id": device_id,
                           "old": old, "new": fps}, sort_keys=True)
        fd = os.open(layout.rotations, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")
    write_config_document(config_path, new_doc)
    layout.hand_over()
    record(layout, "init", device_id=device_id, fingerprints=fps, rotated=bool(existing))
    return InitResult(device_id, config_path, fps["signing"], fps["curve"], bool(existing))


def _current_fingerprints(layout: DeviceLayout) -> dict[str, str]:
    out = {}
    try:
        out["signing"] = public_key_fingerprint(load_signing_key(layout.signing_key))
    except InputError:
        pass
    try:
        out["curve"] = curve_fingerprint(load_curve_public(layout.curve_public))
    except InputError:
        pass
    return out


# ---------------------------------------------------------------------------------------
# enrolment request


def software_sha256() -> str:
    """SHA-256 over the sorted relative paths and contents of the installed ``appliance/*.py``."""
    root = Path(appliance.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def model_identity(cfg: AppConfig) -> dict[str, str]:
    """The configured model's name and sha256, after checking the file against the manifest."""
    from appliance.box.pose.manifest import verified_model

    entry, _blob = verified_model(cfg.pose.model, cfg.pose.models_dir or None)
    return {"name": entry.name, "sha256": entry.sha256}


def build_request(cfg: AppConfig) -> bytes:
    """The signed enrolment request for the device ``cfg`` describes (bytes of the JSON file)."""
    _check_device_id(cfg.device.id)
    layout = layout_for(cfg)
    key = load_signing_key(cfg.seal.signing_key or layout.signing_key)
    curve_public = load_curve_public(layout.curve_public if not cfg.uplink.curve_secret
                                     else cfg.uplink.curve_secret)
    source = cfg.camera.source if cfg.camera else ""
    body = {
        "device_id": cfg.device.id,
        "description": cfg.device.description,
        "camera": {"kind": camera_kind(source) if source else "none", "source": redact_url(source, keep_username=True)},
        "signing_public": b64(raw_public(key.public_key())),
        "curve_public": curve_public.decode("ascii"),
        "fingerprints": {"signing": public_key_fingerprint(key), "curve": curve_fingerprint(curve_public)},
        "software": {"version": appliance.__version__, "sha256": software_sha256()},
        "model": model_identity(cfg),
        "created_unix_ms": int(time.time() * 1000),
    }
    return sign_document(key, REQUEST_FORMAT, REQUEST_CONTEXT, body)


def enrol_device(config_path: str | Path, out: str | Path) -> tuple[Path, dict[str, Any]]:
    cfg = load_config(config_path)
    data = build_request(cfg)
    out = Path(out)
    write_public_file(out, data)
    layout = layout_for(cfg)
    write_public_file(layout.request_copy, data)
    body = json.loads(data)["body"]
    record(layout, "enrol", request_sha256=hashlib.sha256(data).hexdigest(), out=str(out))
    return out, body


# ---------------------------------------------------------------------------------------
# device side: import the bundle


def _write_curve_public(path: Path, public_z85: bytes) -> None:
    """A zmq.auth public certificate file (what :func:`load_curve_public` reads)."""
    text = ("#   ZeroMQ CURVE Public Certificate (station), written by appliance provision import\n"
            "metadata\ncurve\n"
            f'    public-key = "{public_z85.decode("ascii")}"\n')
    write_public_file(path, text.encode("ascii"))


@dataclass(frozen=True)
class ImportResult:
    config: AppConfig
    station_fingerprint: str
    profile: str
    profile_changed: bool
    dropins: tuple[Path, ...]


def import_bundle(config_path: str | Path, data: bytes, typed_fingerprint: str, *,
                  unit_dir: str | Path | None = None) -> ImportResult:
    """Verifies the bundle, then writes the station keys, the config and (optionally) drop-ins."""
    config_path = Path(config_path)
    cfg = load_config(config_path)
    bundle = verify_bundle(data, typed_fingerprint)
    layout = layout_for(cfg)
    if bundle.device_id != cfg.device.id:
        raise BundleError(f"the bundle is for device {bundle.device_id!r}, this is {cfg.device.id!r}")
    mine = _current_fingerprints(layout)
    if bundle.body.get("device_fingerprints") != mine:
        raise BundleError("the bundle was made for other device keys (were the keys rotated after "
                          "enrolment?) (fix: run `provision enrol` again and have the station re-add it)")
    profile = cfg.policy.profile
    changed = profile not in bundle.allowed_profiles
    if changed:
        profile = bundle.allowed_profiles[0]
    updates: dict[str, dict[str, Any]] = {
        "seal": {"station_public_key": str(layout.station_hpke_public), "kem": bundle.hpke_public.kem,
                 # Set: clips are sealed as envelope version 2 (full rendition to this key only).
                 "evidence_public_key": str(layout.station_evidence_public) if bundle.evidence_public else ""},
        "uplink": {"endpoint": bundle.endpoint, "station_curve_public": str(layout.station_curve_public)},
        "policy": {"profile": profile},
    }
    # Several station receivers: the uplink fails over in this order (empty: uplink.endpoint alone).
    updates["station"] = {"endpoints": list(bundle.receivers) if len(bundle.receivers) > 1 else []}
    if "station_signing_public" in UplinkConfig.__dataclass_fields__:
        updates["uplink"]["station_signing_public"] = str(layout.station_signing_public)
    doc = apply_updates(read_config_document(config_path), updates)
    parse_config(plain(doc), str(config_path))  # validate before writing anything

    dropins: tuple[Path, ...] = ()
    if unit_dir is not None:
        from appliance.box.provision.network import (
            camera_dropin,
            station_dropin,
            write_dropins,
        )

        planned = [station_dropin(bundle.receivers)]
        if cfg.camera is not None:
            planned.insert(0, camera_dropin(cfg.camera.source))
    layout.make_dirs()
    save_hpke_public_key(layout.station_hpke_public, bundle.hpke_public)
    if bundle.evidence_public is not None:
        save_hpke_public_key(layout.station_evidence_public, bundle.evidence_public)
    else:
        layout.station_evidence_public.unlink(missing_ok=True)   # a station without one: version 1
    _write_curve_public(layout.station_curve_public, bundle.curve_public)
    from appliance.contracts.keys import save_signing_public_key

    save_signing_public_key(layout.station_signing_public, bundle.signing_public)
    write_public_file(layout.bundle_copy, data)
    new_cfg = write_config_document(config_path, doc)
    if unit_dir is not None:
        dropins = tuple(write_dropins(planned, Path(unit_dir)))
    layout.hand_over()
    record(layout, "import", station_fingerprint=bundle.fingerprint, endpoint=bundle.endpoint,
           evidence_key=bundle.evidence_public.fingerprint if bundle.evidence_public else None,
           endpoints=list(bundle.receivers),
           profile=profile, dropins=[str(p) for p in dropins])
    return ImportResult(new_cfg, bundle.fingerprint, profile, changed, dropins)


def allowed_profiles(cfg: AppConfig) -> tuple[str, ...] | None:
    """The profiles the imported station bundle allows, or None before import."""
    path = layout_for(cfg).bundle_copy
    try:
        doc = json.loads(path.read_text("utf-8"))
        return tuple(doc["body"]["allowed_profiles"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def station_signing_public(cfg: AppConfig) -> Ed25519PublicKey:
    path = getattr(cfg.uplink, "station_signing_public", "") or layout_for(cfg).station_signing_public
    return load_signing_public_key(path)


def device_signing_key(cfg: AppConfig) -> Ed25519PrivateKey:
    return load_signing_key(cfg.seal.signing_key or layout_for(cfg).signing_key)


__all__ = [
    "BundleError", "ImportResult", "InitResult", "build_request", "bundle_fingerprint", "enrol_device",
    "import_bundle", "init_device", "software_sha256", "verify_bundle",
]
