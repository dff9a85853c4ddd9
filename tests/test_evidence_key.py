"""`appliance station evidence-key init` (docs/keys.md, "Evidence key"): the public half into the
station's keys, the private half only to the given file, and a v2 envelope sealed to it that the
station key cannot open in full."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.cli import main
from appliance.contracts.envelope import EnvelopeError, open_envelope, seal_clip
from appliance.contracts.keys import load_hpke_private_key, load_hpke_public_key
from appliance.contracts.synthetic import synthetic_clip
from appliance.station.keys import StationKeyPaths, station_fingerprints


@pytest.fixture
def station_dir(tmp_path):
    d = tmp_path / "station"
    assert main(["station", "keygen", "--station-dir", str(d), "--kem", "X25519"]) == 0
    return d


def test_init_writes_public_to_station_and_private_only_to_out(station_dir, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "custody" / "evidence.key"
    assert main(["station", "evidence-key", "init", "--station-dir", str(station_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    paths = StationKeyPaths.of(station_dir)
    public = load_hpke_public_key(paths.evidence_public)
    private = load_hpke_private_key(out)            # the one loader for HPKE private keys
    assert private.public_key() == public and public.kem == "X25519"   # the station key's KEM
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert public.fingerprint in printed and station_fingerprints(station_dir)["evidence (X25519)"] == public.fingerprint
    # No private key material of it anywhere in the station directory.
    body = [line for line in out.read_text().splitlines() if "-----" not in line]
    for f in station_dir.rglob("*"):
        if f.is_file():
            assert not any(line in f.read_text(errors="replace") for line in body), f
    assert not any(line in printed for line in body)
    assert paths.evidence_public in paths.bundle_files()

    # The station key opens the redacted rendition only; the custody key opens the full one.
    device = Ed25519PrivateKey.generate()
    station = load_hpke_private_key(paths.hpke_private)
    clip = synthetic_clip(frames=4, redacted=True)
    env = seal_clip(clip, device_id="d", sequence=1, signing_key=device, station_public_key=station.public_key(),
                    evidence_public_key=public)
    assert open_envelope(env, station, device.public_key()).rendition == "redacted"
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(env, station, device.public_key(), rendition="full")
    assert exc.value.reason == "wrong_key"
    assert open_envelope(env, private, device.public_key(), rendition="full").video == clip.video


def test_init_refuses_overwrite_and_the_station_directory(station_dir, tmp_path, capsys):
    args = ["station", "evidence-key", "init", "--station-dir", str(station_dir)]
    inside = station_dir / "evidence.key"
    assert main([*args, "--out", str(inside)]) == 2
    assert "never be stored there" in capsys.readouterr().err and not inside.exists()
    link = tmp_path / "looks-elsewhere"
    link.symlink_to(station_dir / "keys")
    assert main([*args, "--out", str(link / "evidence.key")]) == 2
    assert not (station_dir / "keys" / "evidence.key").exists()
    assert not StationKeyPaths.of(station_dir).evidence_public.exists()   # nothing written on refusal

    existing = tmp_path / "existing.key"
    existing.write_text("keep me")
    assert main([*args, "--out", str(existing)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and existing.read_text() == "keep me"
    assert not StationKeyPaths.of(station_dir).evidence_public.exists()

    assert main([*args, "--out", str(tmp_path / "a.key")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.key")]) == 2       # one evidence key per station
    assert "refusing to replace the evidence key" in capsys.readouterr().err and not (tmp_path / "b.key").exists()


def test_init_needs_station_keys(tmp_path, capsys):
    assert main(["station", "evidence-key", "init", "--station-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "e.key")]) == 2
    assert "station keygen" in capsys.readouterr().err and not (tmp_path / "e.key").exists()
