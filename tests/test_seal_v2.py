"""Envelope version 2 (docs/envelope.md, "Format version 2"): two renditions, two recipients.

Every committed v2 tamper vector, the station key never opening ``full``, the rendition name
bound into the key wrap, byte flips and a fuzz, and the station store taking v2 like v1."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.contracts.canonical import canonical_json
from appliance.contracts.envelope import (
    KEY_INFO_V2,
    RENDITION_FULL,
    RENDITION_REDACTED,
    SIG_CONTEXT_V2,
    EnvelopeError,
    RenditionPlain,
    _suite,
    clip_metadata,
    open_envelope,
    parse_envelope,
    seal_clip,
    seal_renditions,
    verify_envelope,
)
from appliance.contracts.keys import HpkePrivateKey, load_hpke_private_key, load_signing_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.store import ClipStore
from tests.test_seal import _apply_flips, _Registry

VECTORS = Path(__file__).parent / "fixtures" / "seal"


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(frames=10, width=80, height=64, redacted=True)


@pytest.fixture(scope="module")
def device_key():
    return Ed25519PrivateKey.generate()


@pytest.mark.parametrize("kem", ["MLKEM768_X25519", "X25519"])
def test_round_trip_each_key_opens_its_own_rendition(clip, device_key, kem):
    station, evidence = HpkePrivateKey.generate(kem), HpkePrivateKey.generate(kem)
    env = seal_clip(clip, device_id="dev-a", sequence=3, signing_key=device_key, kem=kem,
                    station_public_key=station.public_key(), evidence_public_key=evidence.public_key())
    header = verify_envelope(env, device_key.public_key())
    assert header.version == 2 and header.rendition_names == ("redacted", "full")
    assert header.station_key == station.public_key().fingerprint
    assert header.rendition("full").recipient == evidence.public_key().fingerprint
    red = open_envelope(env, station, device_key.public_key())
    assert (red.rendition, red.video) == (RENDITION_REDACTED, clip.redacted.video)
    assert red.metadata["frame_sha256"] == list(clip.redacted.frame_sha256)
    assert red.metadata["pixelated_tracks"] == ["2"] and red.metadata["redaction"]["method"] == "mosaic"
    full = open_envelope(env, evidence, device_key.public_key(), rendition="full")
    assert (full.rendition, full.video) == (RENDITION_FULL, clip.video)
    assert full.metadata["frame_sha256"] == list(clip.frame_sha256)
    assert full.metadata["pixelated_tracks"] == [] and full.metadata["redaction"] == {"method": "none"}
    for opened in (red, full):
        assert opened.metadata["involved_boxes"]["1"][0] == [0, 2, 2, 80 // 3, 60]
        assert opened.metadata["version"] == 2 and opened.metadata["rendition"] == opened.rendition
    # rendition=None with the evidence key: the one sealed to it
    assert open_envelope(env, evidence, device_key.public_key()).rendition == RENDITION_FULL


def test_the_station_key_cannot_open_full(clip, device_key):
    station, evidence = HpkePrivateKey.generate(), HpkePrivateKey.generate()
    env = seal_clip(clip, device_id="dev-a", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key(), evidence_public_key=evidence.public_key())
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(env, station, device_key.public_key(), rendition=RENDITION_FULL)
    assert exc.value.reason == "wrong_key"
    # Not only the fingerprint check: the station key really cannot unwrap the full payload key.
    parsed = parse_envelope(env)
    span = parsed.span(RENDITION_FULL)
    info = KEY_INFO_V2 + parsed.header_digest + b"\x00full"
    with pytest.raises((InvalidTag, ValueError)):
        _suite(station.kem).decrypt(env[span.key_start:span.payload_start], station.to_cryptography(), info=info)
    assert clip.video[:64] not in env and clip.redacted.video[:64] not in env and b"involved_boxes" not in env


def test_v1_stays_v1_and_its_rendition_is_full(clip, device_key):
    station = HpkePrivateKey.generate()
    env = seal_clip(clip, device_id="dev-a", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key())
    opened = open_envelope(env, station, device_key.public_key())
    assert (opened.header.version, opened.rendition, opened.video) == (1, RENDITION_FULL, clip.video)
    assert "rendition" not in opened.metadata and opened.metadata["version"] == 1
    assert open_envelope(env, station, device_key.public_key(), rendition="full").video == clip.video
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(env, station, device_key.public_key(), rendition="redacted")
    assert exc.value.reason == "no_such_rendition"
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(env, HpkePrivateKey.generate(), device_key.public_key())
    assert exc.value.reason == "wrong_station_key"


def test_a_key_of_neither_rendition_is_wrong_key(clip, device_key):
    station, evidence = HpkePrivateKey.generate(), HpkePrivateKey.generate()
    env = seal_clip(clip, device_id="d", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key(), evidence_public_key=evidence.public_key())
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(env, HpkePrivateKey.generate(), device_key.public_key())
    assert exc.value.reason == "wrong_key"


def test_sealing_refuses_full_to_the_station_key_and_a_clip_without_redaction(clip, device_key):
    station = HpkePrivateKey.generate()
    common = dict(device_id="d", sequence=1, signing_key=device_key, pattern="strike", event_window_ms=(0, 1),
                  clip_wall_unix_ms=(0, 1), profile={"id": "p", "version": "1", "sha256": "ab"},
                  model_sha256="cd", content_type="video/webm", frames=1)
    with pytest.raises(EnvelopeError, match="must not be sealed to the station key"):
        seal_renditions([RenditionPlain("redacted", b"r", {"rendition": "redacted"}, station.public_key()),
                         RenditionPlain("full", b"f", {"rendition": "full"}, station.public_key())], **common)
    with pytest.raises(EnvelopeError, match="in this order"):
        seal_renditions([RenditionPlain("full", b"f", {}, HpkePrivateKey.generate().public_key()),
                         RenditionPlain("redacted", b"r", {}, station.public_key())], **common)
    with pytest.raises(EnvelopeError, match="redacted rendition"):
        seal_clip(synthetic_clip(frames=2), device_id="d", sequence=1, signing_key=device_key,
                  station_public_key=station.public_key(), evidence_public_key=HpkePrivateKey.generate().public_key())


def test_the_key_wrap_binds_the_rendition_name(clip, device_key):
    """A device-signed envelope whose redacted payload key was wrapped (to the right key) with
    the info of the *full* rendition does not open: the name is part of the HPKE info."""
    station, evidence = HpkePrivateKey.generate("X25519"), HpkePrivateKey.generate("X25519")
    env = seal_clip(clip, device_id="d", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key(), evidence_public_key=evidence.public_key())
    parsed = parse_envelope(env)
    span = parsed.span(RENDITION_REDACTED)
    # Re-encrypt a random payload key under the full rendition's info: structurally perfect.
    forged_key = _suite("X25519").encrypt(b"k" * 32, station.public_key().to_cryptography(),
                                          info=KEY_INFO_V2 + parsed.header_digest + b"\x00full")
    body = env[:span.key_start] + forged_key + env[span.payload_start:-64]
    forged = body + device_key.sign(SIG_CONTEXT_V2 + hashlib.sha256(body).digest())
    verify_envelope(forged, device_key.public_key())
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(forged, station, device_key.public_key())
    assert exc.value.reason == "decrypt_failed"


def test_every_single_byte_flip_of_a_v2_envelope_is_caught():
    key = Ed25519PrivateKey.generate()
    station, evidence = HpkePrivateKey.generate("X25519"), HpkePrivateKey.generate("X25519")
    small = synthetic_clip(frames=2, width=16, height=16, redacted=True)
    env = seal_clip(small, device_id="d", sequence=1, signing_key=key, station_public_key=station.public_key(),
                    evidence_public_key=evidence.public_key())
    for i in range(0, len(env)):
        bad = bytearray(env)
        bad[i] ^= 0x40
        with pytest.raises(EnvelopeError):
            verify_envelope(bytes(bad), key.public_key())


# -- committed v2 vectors ----------------------------------------------------------------------


def _check_v2_vectors(directory: Path, tmp_path: Path) -> list[str]:
    manifest = json.loads((directory / "vectors.json").read_text())
    assert manifest["version"] == 2
    keys = manifest["keys"]
    private = {"station": load_hpke_private_key(directory / keys["station_private"]),
               "evidence": load_hpke_private_key(directory / keys["evidence_private"])}
    registry = _Registry({keys["device_id"]: load_signing_public_key(directory / keys["device_public"])})
    seen = []
    for case in manifest["cases"]:
        data = (directory / case["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == case["sha256"], case["name"]
        if case["expect"] == "ok":
            red = open_envelope(data, private["station"], registry)
            full = open_envelope(data, private["evidence"], registry, rendition=RENDITION_FULL)
            assert (red.rendition, full.rendition) == (RENDITION_REDACTED, RENDITION_FULL)
            assert red.video != full.video and red.metadata["pixelated_tracks"] and not full.metadata["pixelated_tracks"]
        else:
            with pytest.raises(EnvelopeError) as exc:
                if case["stage"] == "parse":
                    parse_envelope(data)
                elif case["stage"] == "verify":
                    verify_envelope(data, registry)
                else:
                    verify_envelope(data, registry)  # validly signed by the device ...
                    open_envelope(data, private[case["key"]], registry, rendition=case["rendition"])
            assert exc.value.reason == case["expect"], (case["name"], exc.value)
        seen.append(case["name"])
    # The station accepts (stores) a valid v2 envelope without any private key, and re-sends are idempotent.
    store = ClipStore(tmp_path / "station")
    try:
        valid = parse_envelope((directory / "valid.env").read_bytes())
        assert not store.store(valid).duplicate and store.store(valid).duplicate
    finally:
        store.close()
    return seen


V2_CASES = {"valid", "station_key_opens_full", "evidence_key_opens_redacted", "no_such_rendition",
            "header_byte_flipped", "redacted_wrapped_key_byte_flipped", "full_wrapped_key_byte_flipped",
            "redacted_ciphertext_byte_flipped", "full_ciphertext_byte_flipped", "signature_byte_flipped",
            "v1_signature_context", "wrapped_keys_swapped", "wrapped_keys_swapped_full", "ciphertexts_swapped",
            "renditions_reordered", "full_sealed_to_station", "truncated_tail", "unknown_version"}


def test_committed_v2_vectors(tmp_path):
    assert set(_check_v2_vectors(VECTORS / "v2", tmp_path)) == V2_CASES


def test_v2_vector_script_reproduces_the_expectations(tmp_path):
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_vectors_v2(tmp_path / "v2")
    assert set(_check_v2_vectors(tmp_path / "v2", tmp_path)) == V2_CASES


def test_v1_vectors_are_unchanged():
    """The committed v1 files still hash to what their manifest says (v2 did not regenerate them)."""
    manifest = json.loads((VECTORS / "vectors.json").read_text())
    for case in manifest["cases"]:
        assert hashlib.sha256((VECTORS / case["file"]).read_bytes()).hexdigest() == case["sha256"], case["name"]


def test_a_v2_header_with_extra_or_v1_fields_is_malformed(clip, device_key):
    station, evidence = HpkePrivateKey.generate("X25519"), HpkePrivateKey.generate("X25519")
    env = seal_clip(clip, device_id="d", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key(), evidence_public_key=evidence.public_key())
    parsed = parse_envelope(env)
    doc = parsed.header.to_json()
    for mutate in (lambda d: d.update(suite={"kem": "X25519"}),
                   lambda d: d["renditions"].append(d["renditions"][0]),
                   lambda d: d["renditions"][1].update(name="redacted"),
                   lambda d: d["renditions"][0]["stream"].update(nonce_prefix=d["renditions"][1]["stream"]["nonce_prefix"])):
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        raw = canonical_json(bad)
        data = env[:4] + struct.pack(">HI", 2, len(raw)) + raw + env[parsed.header_end:]
        with pytest.raises(EnvelopeError) as exc:
            parse_envelope(data)
        assert exc.value.reason == "malformed"


# -- fuzz --------------------------------------------------------------------------------------

_FUZZ_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_FUZZ_BASE = seal_clip(synthetic_clip(frames=2, width=16, height=16, redacted=True), device_id="fuzz", sequence=1,
                       signing_key=_FUZZ_KEY, station_public_key=HpkePrivateKey("X25519", bytes(range(1, 33))).public_key(),
                       evidence_public_key=HpkePrivateKey("X25519", bytes(range(2, 34))).public_key(),
                       created_unix_ms=1767225600000)


def _mutations():
    n = len(_FUZZ_BASE)
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4)
    flipped = flips.map(lambda fs: _apply_flips(_FUZZ_BASE, fs))
    cut = st.integers(0, n - 1).map(lambda k: _FUZZ_BASE[:k])
    spliced = st.tuples(st.integers(0, n), st.binary(max_size=200)).map(
        lambda t: _FUZZ_BASE[:t[0]] + t[1] + _FUZZ_BASE[t[0]:])
    magic_garbage = st.binary(max_size=300).map(lambda b: b"APSE\x00\x02" + b)
    return st.one_of(flipped, cut, spliced, magic_garbage)


@settings(max_examples=3000, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(_mutations())
def test_fuzz_malformed_v2_envelopes_only_raise_envelope_error(data):
    try:
        verify_envelope(data, _FUZZ_KEY.public_key())
    except EnvelopeError as exc:
        assert exc.reason in {"garbage", "unknown_version", "truncated", "malformed", "bad_signature"}
        return
    assert data == _FUZZ_BASE


def test_clip_metadata_v2_names_the_rendition(clip):
    assert clip_metadata(clip, RENDITION_REDACTED)["rendition"] == "redacted"
    assert clip_metadata(clip)["version"] == 1 and "involved_boxes" not in clip_metadata(clip)
