"""Enrolment documents: the device's signed request and the station's signed bundle (docs/provisioning.md).

The box writes a request (``appliance provision enrol``) that the station reads
(``appliance station devices add``); the station writes a bundle that the box reads
(``appliance provision import``). Both are JSON ``{format, version, body, signature}`` with an
Ed25519 signature over a context string and the canonical JSON of ``body``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import zmq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.common.errors import InputError
from appliance.contracts.canonical import canonical_json
from appliance.contracts.curve import curve_fingerprint
from appliance.contracts.envelope import DEVICE_ID_RE
from appliance.contracts.keys import HpkePublicKey, fingerprint_bytes, hpke_public_from_bytes

REQUEST_FORMAT, BUNDLE_FORMAT, FORMAT_VERSION = "appliance-enrolment-request", "appliance-station-bundle", 1
REQUEST_CONTEXT = b"appliance-enrolment-v1\x00"
BUNDLE_CONTEXT = b"appliance-bundle-v1\x00"
MAX_DOCUMENT_BYTES = 1024 * 1024


class BundleError(InputError):
    """A station bundle that must not be imported; nothing was changed."""



def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, err: type[InputError]) -> bytes:
    try:
        if not isinstance(text, str):
            raise TypeError
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise err(f"{what} is not base64") from None


def sign_document(key: Ed25519PrivateKey, fmt: str, context: bytes, body: dict[str, Any]) -> bytes:
    """The bytes of a signed ``{format, version, body, signature}`` document."""
    signature = key.sign(context + canonical_json(body))
    doc = {"format": fmt, "version": FORMAT_VERSION, "body": body, "signature": b64(signature)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


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
    endpoints: tuple[str, ...] = ()   # every receiver, failover order (bundles with ``endpoints``)
    evidence_public: HpkePublicKey | None = None   # the evidence key (bundles with ``station_evidence_public``)

    @property
    def receivers(self) -> tuple[str, ...]:
        return self.endpoints or (self.endpoint,)


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
        # Never print the bundle's own fingerprint here: a hurried technician would copy it.
        raise BundleError(f"the bundle was not signed by the station whose fingerprint you typed "
                          f"({typed_fingerprint}); refusing it, nothing was changed (fix: ask the station "
                          "operator to read the station fingerprint again; if it is what you typed, the "
                          "bundle is not from that station: get it from the station again)")
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
        endpoints = tuple(body.get("endpoints", ()))
        if endpoints and (endpoints[0] != endpoint or not all(isinstance(e, str) for e in endpoints)):
            raise ValueError("endpoints must be strings, the first being endpoint")
        evidence = None
        if "station_evidence_public" in body:
            evidence = hpke_public_from_bytes(body["station_evidence_public"].encode("ascii"), "bundle evidence key")
    except (KeyError, TypeError, ValueError, AttributeError, InputError) as exc:
        raise BundleError(f"the station bundle is incomplete or malformed: {exc}") from None
    fps = body.get("station_fingerprints", {})
    if fps.get("hpke") != hpke.fingerprint or fps.get("curve") != curve_fingerprint(curve):
        raise BundleError("the bundle's key fingerprints do not match its keys")
    if (evidence.fingerprint if evidence else None) != fps.get("evidence"):
        raise BundleError("the bundle's evidence key and its fingerprint do not match (or one is missing)")
    if evidence is not None and evidence.fingerprint == hpke.fingerprint:
        raise BundleError("the bundle's evidence key is the station HPKE key: the full video would be "
                          "readable with the station key (fix: 'appliance station evidence-key init' on the station)")
    return StationBundle(device_id, endpoint, public, hpke, hpke_text, curve, profiles, fp, body, endpoints,
                         evidence)
