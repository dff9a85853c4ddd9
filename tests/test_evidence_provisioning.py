"""The evidence key through enrolment (docs/provisioning.md): a station with one hands its public
half to every box in the signed bundle; the box then seals envelope version 2, and a box whose
bundle has none keeps sealing version 1 (and says so once). The box never holds the private half.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest

from appliance.box.config import load_config
from appliance.box.daemon import ClipSealer
from appliance.box.provision.enrolment import import_bundle
from appliance.box.spool.spool import Spool
from appliance.contracts.audit.log import AuditLog
from appliance.contracts.enrolment import BUNDLE_CONTEXT, BUNDLE_FORMAT, BundleError, sign_document, verify_bundle
from appliance.contracts.envelope import EnvelopeError, open_envelope, parse_envelope
from appliance.contracts.keys import (
    load_hpke_private_key,
    load_hpke_public_key,
    load_signing_key,
    load_signing_public_key,
)
from appliance.contracts.layout import DeviceLayout
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.keys import StationKeyPaths, init_evidence_key
from tests.test_provision_e2e import provision_device, run, station  # noqa: F401  (fixture)


def _import(tmp_path, capsys, station_dir, endpoint):
    cfg_path, bundle, fingerprint = provision_device(tmp_path, capsys, station_dir, endpoint)
    code, out = run(capsys, "provision", "import", str(bundle), "--config", str(cfg_path),
                    "--station-fingerprint", fingerprint)
    assert code == 0, out
    return cfg_path, bundle, fingerprint


def _seal_one(cfg_path, sequence: int = 1) -> bytes:
    cfg = load_config(cfg_path)
    audit = AuditLog(cfg.audit_log, signer=load_signing_key(DeviceLayout(Path(cfg.device.state_dir)).signing_key),
                     origin="appliance")
    try:
        spool = Spool(cfg.spool_dir, cfg.spool.max_bytes, audit=audit)
        sealer = ClipSealer(cfg, spool, audit)
        sealer(synthetic_clip(frames=6, redacted=True))
        return next(cfg.spool_dir.glob("*.env")).read_bytes()
    finally:
        audit.close()


def test_a_bundle_with_the_evidence_key_makes_the_box_seal_v2(tmp_path, capsys, station, caplog):  # noqa: F811
    station_dir, server = station
    custody = tmp_path / "custody" / "evidence.key"
    evidence_public = init_evidence_key(station_dir, custody)
    cfg_path, bundle, _ = _import(tmp_path, capsys, station_dir, server.endpoint)

    body = json.loads(bundle.read_text())["body"]
    assert body["station_fingerprints"]["evidence"] == evidence_public.fingerprint
    assert "PRIVATE" not in bundle.read_text()
    cfg = tomllib.loads(cfg_path.read_text())
    layout = DeviceLayout(tmp_path / "state")
    assert cfg["seal"]["evidence_public_key"] == str(layout.station_evidence_public)
    assert load_hpke_public_key(layout.station_evidence_public) == evidence_public
    # The box holds no private key that opens anything it seals.
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file():
            assert b"HPKE" not in f.read_bytes() or b"PRIVATE" not in f.read_bytes(), f

    with caplog.at_level(logging.INFO, logger="appliance.daemon"):
        envelope = _seal_one(cfg_path)
    assert "sealing envelope version 2" in caplog.text and "envelope v2, bystander tracks pixelated" in caplog.text
    assert parse_envelope(envelope).header.version == 2
    device = load_signing_public_key(layout.signing_public)
    station_key = load_hpke_private_key(StationKeyPaths.of(station_dir).hpke_private)
    assert open_envelope(envelope, station_key, device).rendition == "redacted"
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(envelope, station_key, device, rendition="full")
    assert exc.value.reason == "wrong_key"
    assert open_envelope(envelope, load_hpke_private_key(custody), device).rendition == "full"


def test_without_an_evidence_key_the_box_keeps_sealing_v1_and_says_so_once(tmp_path, capsys, station,  # noqa: F811
                                                                          caplog):
    station_dir, server = station
    cfg_path, bundle, _ = _import(tmp_path, capsys, station_dir, server.endpoint)
    assert "station_evidence_public" not in json.loads(bundle.read_text())["body"]
    assert tomllib.loads(cfg_path.read_text())["seal"]["evidence_public_key"] == ""
    with caplog.at_level(logging.INFO, logger="appliance.daemon"):
        envelope = _seal_one(cfg_path)
    assert caplog.text.count("sealing envelope version 1") == 1
    assert parse_envelope(envelope).header.version == 1


def test_re_importing_a_bundle_without_the_key_goes_back_to_v1(tmp_path, capsys, station):  # noqa: F811
    station_dir, server = station
    init_evidence_key(station_dir, tmp_path / "custody.key")
    cfg_path, bundle, fingerprint = _import(tmp_path, capsys, station_dir, server.endpoint)
    layout = DeviceLayout(tmp_path / "state")
    assert layout.station_evidence_public.exists()
    # The station drops its evidence key (moved away) and re-issues the bundle.
    StationKeyPaths.of(station_dir).evidence_public.rename(tmp_path / "old-evidence.pub")
    request = tmp_path / "test-dev-01.enrol.json"
    code, out = run(capsys, "station", "devices", "add", str(request), "--dir", str(station_dir), "--replace",
                    "--endpoint", server.endpoint, "--profile", "bw-polg-44-4", "--out", str(tmp_path / "b2.json"))
    assert code == 0, out
    import_bundle(cfg_path, (tmp_path / "b2.json").read_bytes(), fingerprint)
    assert load_config(cfg_path).seal.evidence_public_key == "" and not layout.station_evidence_public.exists()


def test_the_bundle_refuses_an_evidence_key_that_does_not_match_or_is_the_station_key(
        tmp_path, capsys, station):  # noqa: F811
    station_dir, server = station
    init_evidence_key(station_dir, tmp_path / "custody.key")
    _, bundle, fingerprint = _import(tmp_path, capsys, station_dir, server.endpoint)
    signing = load_signing_key(StationKeyPaths.of(station_dir).signing_private)
    body = json.loads(bundle.read_text())["body"]
    assert verify_bundle(bundle.read_bytes(), fingerprint).evidence_public is not None

    # Signed by the station (a station bug, not a forgery): still refused, nothing imported.
    wrong_fp = dict(body, station_fingerprints=dict(body["station_fingerprints"], evidence="0000:0000:0000:0000"))
    with pytest.raises(BundleError, match="evidence key and its fingerprint"):
        verify_bundle(sign_document(signing, BUNDLE_FORMAT, BUNDLE_CONTEXT, wrong_fp), fingerprint)
    no_key = {k: v for k, v in body.items() if k != "station_evidence_public"}
    with pytest.raises(BundleError, match="evidence key and its fingerprint"):
        verify_bundle(sign_document(signing, BUNDLE_FORMAT, BUNDLE_CONTEXT, no_key), fingerprint)
    same = dict(body, station_evidence_public=body["station_hpke_public"],
                station_fingerprints=dict(body["station_fingerprints"], evidence=body["station_fingerprints"]["hpke"]))
    with pytest.raises(BundleError, match="is the station HPKE key"):
        verify_bundle(sign_document(signing, BUNDLE_FORMAT, BUNDLE_CONTEXT, same), fingerprint)
    # Altered after signing: the signature catches it first.
    tampered = json.loads(bundle.read_text())
    tampered["body"]["station_evidence_public"] = body["station_hpke_public"]
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(json.dumps(tampered).encode(), fingerprint)
