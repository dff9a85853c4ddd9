"""Envelope: round trip, every tamper vector of docs/envelope.md, keys, and a 10,000-case fuzz."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.box.seal import (
    EnvelopeError,
    open_envelope,
    parse_envelope,
    seal_clip,
    verify_envelope,
)
from appliance.contracts.keys import (
    HpkePrivateKey,
    KeyFileError,
    generate_hpke_key,
    generate_signing_key,
    load_hpke_private_key,
    load_hpke_public_key,
    load_signing_key,
    load_signing_public_key,
    public_key_fingerprint,
)
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.store import ClipStore

VECTORS = Path(__file__).parent / "fixtures" / "seal"


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(frames=10, width=80, height=64)


@pytest.fixture(scope="module")
def device_key():
    return Ed25519PrivateKey.generate()


@pytest.mark.parametrize("kem", ["MLKEM768_X25519", "X25519"])
def test_round_trip_both_kems(clip, device_key, kem):
    station = HpkePrivateKey.generate(kem)
    env = seal_clip(clip, device_id="dev-a", sequence=3, signing_key=device_key,
                    station_public_key=station.public_key(), kem=kem)
    header = verify_envelope(env, device_key.public_key())
    assert (header.device_id, header.sequence, header.kem, header.pattern) == ("dev-a", 3, kem, "strike")
    assert header.profile == {"id": "bw-polg-44-4", "version": "1", "sha256": "ab" * 32}
    opened = open_envelope(env, station, device_key.public_key())
    assert opened.video == clip.video
    assert opened.metadata["frame_sha256"] == list(clip.frame_sha256)
    assert opened.metadata["event"]["explanation"] == {"wrist_speed_torso_per_s": 4.2}
    assert opened.metadata["tracks"] == json.loads(json.dumps(clip.tracks))
    assert opened.metadata["model_sha256"] == clip.model_sha256


def test_the_envelope_hides_the_clip(clip, device_key):
    station = HpkePrivateKey.generate()
    env = seal_clip(clip, device_id="dev-a", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key())
    assert clip.video[:64] not in env and b"frame_sha256" not in env and b"wrist_speed" not in env


def test_only_the_right_station_key_opens_it(clip, device_key):
    station, other = HpkePrivateKey.generate(), HpkePrivateKey.generate()
    env = seal_clip(clip, device_id="dev-a", sequence=1, signing_key=device_key,
                    station_public_key=station.public_key())
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(env, other, device_key.public_key())
    assert exc.value.reason == "wrong_station_key"


def test_seal_refuses_a_kem_mismatch(clip, device_key):
    station = HpkePrivateKey.generate("X25519")
    with pytest.raises(EnvelopeError):
        seal_clip(clip, device_id="dev-a", sequence=1, signing_key=device_key,
                  station_public_key=station.public_key(), kem="MLKEM768_X25519")


def test_many_segments_and_empty_video(device_key):
    station = HpkePrivateKey.generate("X25519")
    for video in (b"", os.urandom(3 * 65536 + 17)):
        c = synthetic_clip(frames=3, video=video)
        env = seal_clip(c, device_id="d", sequence=1, signing_key=device_key, station_public_key=station.public_key())
        assert open_envelope(env, station, device_key.public_key()).video == video


# -- committed test vectors ----------------------------------------------------------------


class _Registry:
    def __init__(self, keys):
        self.keys = keys

    def signing_public(self, device_id):
        return self.keys.get(device_id)


def _check_vectors(directory: Path, tmp_path: Path) -> list[str]:
    manifest = json.loads((directory / "vectors.json").read_text())
    device_public = load_signing_public_key(directory / manifest["keys"]["device_public"])
    station = load_hpke_private_key(directory / manifest["keys"]["station_private"])
    registry = _Registry({manifest["keys"]["device_id"]: device_public})
    store = ClipStore(tmp_path / "station")
    seen = []
    try:
        valid = (directory / "valid.env").read_bytes()
        for case in manifest["cases"]:
            data = (directory / case["file"]).read_bytes()
            expect = case["expect"]
            if expect == "ok":
                opened = open_envelope(data, station, registry)
                assert opened.metadata["format"] == "appliance-clip-metadata"
            elif case["stage"] == "store_after_valid":
                verify_envelope(data, registry)  # validly signed: only the station's sequence rule catches it
                assert not store.store(parse_envelope(valid)).duplicate
                assert store.store(parse_envelope(valid)).duplicate  # exact re-send: idempotent
                with pytest.raises(EnvelopeError) as exc:
                    store.store(parse_envelope(data))
                assert exc.value.reason == expect
            else:
                with pytest.raises(EnvelopeError) as exc:
                    if case["stage"] == "parse":
                        parse_envelope(data)
                    elif case["stage"] == "verify":
                        verify_envelope(data, registry)
                    else:
                        verify_envelope(data, registry)  # the signature is fine ...
                        open_envelope(data, station, registry)  # ... the STREAM is not
                assert exc.value.reason == expect, case["name"]
            seen.append(case["name"])
    finally:
        store.close()
    return seen


def test_committed_vectors(tmp_path):
    seen = _check_vectors(VECTORS, tmp_path)
    assert set(seen) >= {"valid", "header_byte_flipped", "ciphertext_byte_flipped", "wrapped_key_byte_flipped",
                         "signature_byte_flipped", "truncated_tail", "segments_swapped", "signed_by_other_device",
                         "unknown_device", "replayed_sequence", "unknown_version", "garbage"}


def test_vector_script_reproduces_the_expectations(tmp_path):
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_vectors(tmp_path / "v")
    assert len(_check_vectors(tmp_path / "v", tmp_path)) == 12


def test_old_sequence_is_refused(tmp_path, device_key, clip):
    station = HpkePrivateKey.generate("X25519")
    store = ClipStore(tmp_path)
    try:
        for seq in (5, 9):
            store.store(parse_envelope(seal_clip(clip, device_id="d", sequence=seq, signing_key=device_key,
                                                 station_public_key=station.public_key())))
        late = seal_clip(clip, device_id="d", sequence=7, signing_key=device_key, station_public_key=station.public_key())
        with pytest.raises(EnvelopeError) as exc:
            store.store(parse_envelope(late))
        assert exc.value.reason == "old_sequence"
        assert store.count() == 2
    finally:
        store.close()


def test_every_single_byte_flip_is_caught(tmp_path):
    """Each byte of a small envelope flipped in turn: none verifies."""
    key = Ed25519PrivateKey.generate()
    station = HpkePrivateKey.generate("X25519")
    env = seal_clip(synthetic_clip(frames=2, video=b"v" * 100), device_id="d", sequence=1, signing_key=key,
                    station_public_key=station.public_key())
    for i in range(len(env)):
        bad = bytearray(env)
        bad[i] ^= 0x40
        with pytest.raises(EnvelopeError):
            verify_envelope(bytes(bad), key.public_key())


# -- fuzz ------------------------------------------------------------------------------------

_FUZZ_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_FUZZ_STATION = HpkePrivateKey("X25519", bytes(range(1, 33)))
_FUZZ_BASE = seal_clip(synthetic_clip(frames=2, video=b"x" * 3000), device_id="fuzz", sequence=1,
                       signing_key=_FUZZ_KEY, station_public_key=_FUZZ_STATION.public_key(),
                       created_unix_ms=1767225600000)


def _mutations():
    flips = st.lists(st.tuples(st.integers(0, len(_FUZZ_BASE) - 1), st.integers(1, 255)), min_size=1, max_size=4)
    flipped = flips.map(lambda fs: _apply_flips(_FUZZ_BASE, fs))
    cut = st.integers(0, len(_FUZZ_BASE) - 1).map(lambda n: _FUZZ_BASE[:n])
    extended = st.binary(min_size=1, max_size=64).map(lambda b: _FUZZ_BASE + b)
    header_len = st.integers(0, 2**32 - 1).map(lambda n: _FUZZ_BASE[:6] + struct.pack(">I", n) + _FUZZ_BASE[10:])
    spliced = st.tuples(st.integers(0, len(_FUZZ_BASE)), st.binary(max_size=200)).map(
        lambda t: _FUZZ_BASE[:t[0]] + t[1] + _FUZZ_BASE[t[0]:])
    magic_garbage = st.binary(max_size=300).map(lambda b: b"APSE\x00\x01" + b)
    return st.one_of(flipped, cut, extended, header_len, spliced, magic_garbage, st.binary(max_size=300))


def _apply_flips(data: bytes, flips) -> bytes:
    b = bytearray(data)
    for pos, mask in flips:
        b[pos] ^= mask
    return bytes(b)


@settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(_mutations())
def test_fuzz_malformed_envelopes_only_raise_envelope_error(data):
    try:
        verify_envelope(data, _FUZZ_KEY.public_key())
    except EnvelopeError as exc:
        assert exc.reason in {"garbage", "unknown_version", "truncated", "malformed", "bad_signature"}
        return
    assert data == _FUZZ_BASE  # only the untouched envelope may verify


# -- keys ------------------------------------------------------------------------------------


def test_key_files_are_private_and_round_trip(tmp_path):
    pub = generate_signing_key(tmp_path / "s.key", public_path=tmp_path / "s.pub")
    hpke_pub = generate_hpke_key(tmp_path / "h.key", tmp_path / "h.pub")
    for p in ("s.key", "h.key"):
        assert stat.S_IMODE((tmp_path / p).stat().st_mode) == 0o600
    assert public_key_fingerprint(load_signing_key(tmp_path / "s.key")) == public_key_fingerprint(pub)
    assert load_hpke_public_key(tmp_path / "h.pub") == hpke_pub
    assert load_hpke_private_key(tmp_path / "h.key").public_key() == hpke_pub
    assert len(public_key_fingerprint(pub)) == 19
    assert "raw" not in repr(load_hpke_private_key(tmp_path / "h.key"))
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_signing_key(tmp_path / "s.key")
    with pytest.raises(KeyFileError):
        load_hpke_public_key(tmp_path / "s.pub")
    with pytest.raises(KeyFileError):
        load_signing_key(tmp_path / "h.pub")
