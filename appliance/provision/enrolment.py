"""Device keys, the enrolment request, the station bundle (docs/provisioning.md).

Key generation, storage and fingerprints come from :mod:`appliance.seal.keys` and
:mod:`appliance.uplink.curve`; this module only decides which keys go where and what the two
documents exchanged with the station say.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

import appliance
from appliance.config import AppConfig, UplinkConfig, load_config, parse_config
from appliance.errors import InputError
from appliance.provision.layout import (
    DeviceLayout,
    apply_updates,
    layout_for,
    read_config_document,
    record,
    write_config_document,
)
from appliance.provision.network import _redact, camera_kind
from appliance.seal.envelope import DEVICE_ID_RE, canonical_json
from appliance.seal.keys import (
    HpkePublicKey,
    fingerprint_bytes,
    generate_signing_key,
    hpke_public_from_bytes,
    load_signing_key,
    load_signing_public_key,
    public_key_fingerprint,
    raw_public,
    save_hpke_public_key,
    write_public_file,
)
from appliance.uplink.curve import (
    curve_fingerprint,
    generate_curve_keypair,
    load_curve_public,
)

REQUEST_FORMAT, BUNDLE_FORMAT, FORMAT_VERSION = "appliance-enrolment-request", "appliance-station-bundle", 1
REQUEST_CONTEXT = b"appliance-enrolment-v1\x00"
BUNDLE_CONTEXT = b"appliance-bundle-v1\x00"
MAX_DOCUMENT_BYTES = 1024 * 1024


class BundleError(InputError):
    """A station bundle that must not be imported; nothing was changed."""


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
                         "starting with a letter or digit, at most 64, e.g. 'mannheim-paradeplatz-03')")


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
    if camera is not None:
        updates["camera"] = {"source": camera}
    new_doc = apply_updates(doc, updates)
    parse_config(new_doc, str(config_path))  # validate before touching any key

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
    from appliance.pose.manifest import verified_model

    entry, _blob = verified_model(cfg.pose.model, cfg.pose.models_dir or None)
    return {"name": entry.name, "sha256": entry.sha256}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, err: type[InputError]) -> bytes:
    try:
        if not isinstance(text, str):
            raise TypeError
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise err(f"{what} is not base64") from None


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
        "camera": {"kind": camera_kind(source) if source else "none", "source": _redact(source)},
        "signing_public": _b64(raw_public(key.public_key())),
        "curve_public": curve_public.decode("ascii"),
        "fingerprints": {"signing": public_key_fingerprint(key), "curve": curve_fingerprint(curve_public)},
        "software": {"version": appliance.__version__, "sha256": software_sha256()},
        "model": model_identity(cfg),
        "created_unix_ms": int(time.time() * 1000),
    }
    signature = key.sign(REQUEST_CONTEXT + canonical_json(body))
    doc = {"format": REQUEST_FORMAT, "version": FORMAT_VERSION, "body": body, "signature": _b64(signature)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


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


def _load_document(data: bytes, fmt: str, err: type[InputError], what: str) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise err(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise err(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise err(f"{what} is not an {fmt} (format = {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != FORMAT_VERSION:
        raise err(f"{what} has version {doc.get('version')!r}; this software reads version {FORMAT_VERSION}")
    if not isinstance(doc.get("body"), dict):
        raise err(f"{what} has no body")
    return doc


@dataclass(frozen=True)
class EnrolmentRequest:
    device_id: str
    description: str
    signing_public: Ed25519PublicKey
    curve_public: bytes
    fingerprints: dict[str, str]
    body: dict[str, Any]
    sha256: str


def parse_request(data: bytes) -> EnrolmentRequest:
    """Parses and verifies an enrolment request (its self-signature proves key possession)."""
    doc = _load_document(data, REQUEST_FORMAT, InputError, "the enrolment request")
    body = doc["body"]
    device_id = body.get("device_id")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise InputError(f"the enrolment request has an invalid device_id {device_id!r}")
    raw = _unb64(body.get("signing_public"), "signing_public", InputError)
    if len(raw) != 32:
        raise InputError("the enrolment request's signing_public is not 32 bytes")
    public = Ed25519PublicKey.from_public_bytes(raw)
    signature = _unb64(doc.get("signature"), "signature", InputError)
    try:
        public.verify(signature, REQUEST_CONTEXT + canonical_json(body))
    except InvalidSignature:
        raise InputError("the enrolment request's signature does not verify (altered or not made "
                         "by the device's key); ask the technician for a fresh one") from None
    curve = body.get("curve_public")
    try:
        if not isinstance(curve, str) or len(zmq.utils.z85.decode(curve.encode("ascii"))) != 32:
            raise TypeError
    except (TypeError, ValueError, KeyError, UnicodeEncodeError):
        raise InputError("the enrolment request's curve_public is not a Z85 CURVE key") from None
    fps = {"signing": fingerprint_bytes(raw), "curve": curve_fingerprint(curve)}
    if body.get("fingerprints") != fps:
        raise InputError("the enrolment request's fingerprints do not match its keys")
    return EnrolmentRequest(device_id, str(body.get("description", "")), public, curve.encode("ascii"),
                            fps, body, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------------------
# station side: `devices add REQUEST` → signed bundle


@dataclass(frozen=True)
class AddedDevice:
    device_id: str
    bundle: bytes
    station_fingerprint: str     # of the station signing key: the technician types this
    device_fingerprints: dict[str, str]


def station_add_device(station_dir: str | Path, request: bytes, *, endpoint: str,
                       allowed_profiles: list[str] | tuple[str, ...], replace: bool = False,
                       profiles_dir: str | None = None) -> AddedDevice:
    """Verifies an enrolment request, registers the device, returns the signed station bundle.

    The station engineer's ``appliance station devices add`` calls this (the same as
    ``appliance provision station-add``).
    """
    from appliance.policy.profile import available_profiles
    from appliance.provision.network import station_dropin
    from appliance.station.keys import StationKeyPaths
    from appliance.station.registry import DeviceRegistry

    req = parse_request(request)
    station_dropin(endpoint, resolve=lambda h, p: [(0, 0, 0, "", ("0.0.0.0", 0))])  # syntax only
    if not allowed_profiles:
        raise InputError("no allowed profile (fix: --profile ID, e.g. --profile bw-polg-44-4)")
    known = available_profiles(profiles_dir)
    unknown = [p for p in allowed_profiles if p not in known]
    if unknown:
        raise InputError(f"unknown legal profile(s) {', '.join(unknown)} (fix: use one of: {', '.join(known)})")
    paths = StationKeyPaths.of(station_dir)
    paths.require()
    station_key = load_signing_key(paths.signing_private)
    hpke_text = paths.hpke_public.read_bytes()
    hpke = hpke_public_from_bytes(hpke_text, str(paths.hpke_public))
    curve = load_curve_public(paths.curve_public)
    registry = DeviceRegistry(station_dir)
    try:
        registry.add_device(req.device_id, req.signing_public, req.curve_public,
                            description=req.description, replace=replace)
    finally:
        registry.close()
    body = {
        "device_id": req.device_id,
        "device_fingerprints": req.fingerprints,
        "request_sha256": req.sha256,
        "endpoint": endpoint,
        "station_signing_public": _b64(raw_public(station_key.public_key())),
        "station_hpke_public": hpke_text.decode("ascii"),
        "station_curve_public": curve.decode("ascii"),
        "station_fingerprints": {"signing": public_key_fingerprint(station_key),
                                 "hpke": hpke.fingerprint, "curve": curve_fingerprint(curve)},
        "allowed_profiles": list(allowed_profiles),
        "issued_unix_ms": int(time.time() * 1000),
    }
    signature = station_key.sign(BUNDLE_CONTEXT + canonical_json(body))
    doc = {"format": BUNDLE_FORMAT, "version": FORMAT_VERSION, "body": body, "signature": _b64(signature)}
    bundle = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")
    return AddedDevice(req.device_id, bundle, public_key_fingerprint(station_key), req.fingerprints)


# ---------------------------------------------------------------------------------------
# device side: import the bundle


def normalise_fingerprint(text: str) -> str:
    return "".join(c for c in (text or "").lower() if c in "0123456789abcdef")


@dataclass(frozen=True)
class StationBundle:
    device_id: str
    endpoint: str
    signing_public: Ed25519PublicKey
    hpke_public: HpkePublicKey
    hpke_text: bytes
    curve_public: bytes
    allowed_profiles: tuple[str, ...]
    fingerprint: str
    body: dict[str, Any]


def bundle_fingerprint(data: bytes) -> str:
    """The station signing key's fingerprint as the bundle states it (to show, never to trust)."""
    doc = _load_document(data, BUNDLE_FORMAT, BundleError, "the station bundle")
    raw = _unb64(doc["body"].get("station_signing_public"), "station_signing_public", BundleError)
    return fingerprint_bytes(raw)


def verify_bundle(data: bytes, typed_fingerprint: str) -> StationBundle:
    """Checks a bundle against the station fingerprint the technician typed; raises BundleError."""
    doc = _load_document(data, BUNDLE_FORMAT, BundleError, "the station bundle")
    body = doc["body"]
    raw = _unb64(body.get("station_signing_public"), "station_signing_public", BundleError)
    if len(raw) != 32:
        raise BundleError("the bundle's station_signing_public is not 32 bytes")
    fp = fingerprint_bytes(raw)
    typed = normalise_fingerprint(typed_fingerprint)
    if len(typed) != 16:
        raise BundleError("the station fingerprint must have 16 hex digits, e.g. 3fa2:91c0:7be4:0d15 "
                          "(fix: type it exactly as the station printed it)")
    if typed != normalise_fingerprint(fp):
        raise BundleError(f"the bundle was signed by station key {fp}, not by the station you named "
                          f"({typed_fingerprint}); refusing it (fix: get the bundle from the station again "
                          "and compare the fingerprint with the operator)")
    public = Ed25519PublicKey.from_public_bytes(raw)
    signature = _unb64(doc.get("signature"), "signature", BundleError)
    try:
        public.verify(signature, BUNDLE_CONTEXT + canonical_json(body))
    except InvalidSignature:
        raise BundleError("the station bundle's signature does not verify: it was altered after the "
                          "station signed it; refusing it (fix: get a fresh bundle from the station)") from None
    # Signed by the station we trust: from here on a bad field is a station bug, still refused.
    try:
        hpke_text = body["station_hpke_public"].encode("ascii")
        hpke = hpke_public_from_bytes(hpke_text, "bundle")
        curve = body["station_curve_public"].encode("ascii")
        if len(zmq.utils.z85.decode(curve)) != 32:
            raise ValueError("CURVE key length")
        profiles = tuple(body["allowed_profiles"])
        if not profiles or not all(isinstance(p, str) for p in profiles):
            raise ValueError("allowed_profiles")
        endpoint, device_id = body["endpoint"], body["device_id"]
        if not isinstance(endpoint, str) or not isinstance(device_id, str):
            raise TypeError("endpoint/device_id")
    except (KeyError, TypeError, ValueError, AttributeError, InputError) as exc:
        raise BundleError(f"the station bundle is incomplete or malformed: {exc}") from None
    fps = body.get("station_fingerprints", {})
    if fps.get("hpke") != hpke.fingerprint or fps.get("curve") != curve_fingerprint(curve):
        raise BundleError("the bundle's key fingerprints do not match its keys")
    return StationBundle(device_id, endpoint, public, hpke, hpke_text, curve, profiles, fp, body)


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
        "seal": {"station_public_key": str(layout.station_hpke_public), "kem": bundle.hpke_public.kem},
        "uplink": {"endpoint": bundle.endpoint, "station_curve_public": str(layout.station_curve_public)},
        "policy": {"profile": profile},
    }
    if "station_signing_public" in UplinkConfig.__dataclass_fields__:
        updates["uplink"]["station_signing_public"] = str(layout.station_signing_public)
    doc = apply_updates(read_config_document(config_path), updates)
    parse_config(doc, str(config_path))  # validate before writing anything

    dropins: tuple[Path, ...] = ()
    if unit_dir is not None:
        from appliance.provision.network import (
            camera_dropin,
            station_dropin,
            write_dropins,
        )

        planned = [station_dropin(bundle.endpoint)]
        if cfg.camera is not None:
            planned.insert(0, camera_dropin(cfg.camera.source))
    layout.make_dirs()
    save_hpke_public_key(layout.station_hpke_public, bundle.hpke_public)
    _write_curve_public(layout.station_curve_public, bundle.curve_public)
    from appliance.seal.keys import save_signing_public_key

    save_signing_public_key(layout.station_signing_public, bundle.signing_public)
    write_public_file(layout.bundle_copy, data)
    new_cfg = write_config_document(config_path, doc)
    if unit_dir is not None:
        dropins = tuple(write_dropins(planned, Path(unit_dir)))
    layout.hand_over()
    record(layout, "import", station_fingerprint=bundle.fingerprint, endpoint=bundle.endpoint,
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
    "AddedDevice", "BundleError", "EnrolmentRequest", "ImportResult", "InitResult", "StationBundle",
    "build_request", "bundle_fingerprint", "enrol_device", "import_bundle", "init_device",
    "parse_request", "software_sha256", "station_add_device", "verify_bundle",
]
