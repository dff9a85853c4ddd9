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


# -- station export: the redacted rendition by default, the full one with --evidence-key -----------


def _stored_v2(tmp_path, station_dir, *, version: int = 2):
    from appliance.contracts.envelope import parse_envelope
    from appliance.station.enrol import create_device_keys, enrol_device
    from appliance.station.store import ClipStore

    keys = create_device_keys(tmp_path / "dev", "dev-x")
    enrol_device(station_dir, keys)
    paths = StationKeyPaths.of(station_dir)
    clip = synthetic_clip(frames=6, width=64, height=48, redacted=True)
    evidence = load_hpke_public_key(paths.evidence_public) if version == 2 else None
    env = seal_clip(clip, device_id="dev-x", sequence=1, signing_key=keys.signing_key(),
                    station_public_key=load_hpke_public_key(paths.hpke_public), evidence_public_key=evidence)
    store = ClipStore(station_dir)
    try:
        return clip, store.store(parse_envelope(env)).clip.clip_id
    finally:
        store.close()


def test_export_opens_redacted_by_default_and_full_with_the_evidence_key(station_dir, tmp_path, capsys):
    import json

    custody = tmp_path / "custody.key"
    assert main(["station", "evidence-key", "init", "--station-dir", str(station_dir), "--out", str(custody)]) == 0
    clip, clip_id = _stored_v2(tmp_path, station_dir)
    capsys.readouterr()
    assert main(["station", "list", "--station-dir", str(station_dir), "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert (row["envelope_version"], row["renditions"]) == (2, ["redacted", "full"])   # nothing decrypted
    out = tmp_path / "out"
    common = ["--station-dir", str(station_dir), "--operator", "kim"]
    capsys.readouterr()
    assert main(["station", "export", clip_id, str(out), *common, "--reason", "case 7"]) == 0
    printed = capsys.readouterr().out
    assert "rendition: redacted (envelope version 2): bystanders pixelated" in printed and "intact" in printed
    assert (out / f"{clip_id}.webm").read_bytes() == clip.redacted.video
    assert main(["station", "export", clip_id, str(out), *common, "--reason", "case 7, approved by sup-1",
                 "--evidence-key", str(custody)]) == 0
    printed = capsys.readouterr().out
    assert "rendition: full (envelope version 2): bystanders visible" in printed and "intact" in printed
    assert (out / f"{clip_id}.full.webm").read_bytes() == clip.video
    report = json.loads((out / f"{clip_id}.full.report.json").read_text())
    assert report["rendition"] == "full" and report["frames"]["ok"]

    # A key that is not this clip's evidence key, and the station key passed as one: refused.
    other = tmp_path / "other.key"
    from appliance.contracts.keys import generate_hpke_key
    generate_hpke_key(other, tmp_path / "other.pub", kem="X25519")
    assert main(["station", "export", clip_id, str(tmp_path / "o2"), *common, "--reason", "r",
                 "--evidence-key", str(other)]) == 4
    assert "wrong_key" in capsys.readouterr().err
    assert main(["station", "export", clip_id, str(tmp_path / "o3"), *common, "--reason", "r",
                 "--evidence-key", str(StationKeyPaths.of(station_dir).hpke_private)]) == 2
    assert "is the station HPKE key" in capsys.readouterr().err
    audit = (station_dir / "audit.jsonl").read_text()
    assert audit.count('"key":"evidence"') >= 2 and '"verdict":"failed"' in audit
    assert '"action":"export"' in audit and "is the station HPKE key" in audit     # the refusal is audited


def test_export_of_a_v1_clip_with_an_evidence_key_says_why(station_dir, tmp_path, capsys):
    custody = tmp_path / "custody.key"
    assert main(["station", "evidence-key", "init", "--station-dir", str(station_dir), "--out", str(custody)]) == 0
    clip, clip_id = _stored_v2(tmp_path, station_dir, version=1)
    capsys.readouterr()
    assert main(["station", "list", "--station-dir", str(station_dir), "--json"]) == 0
    assert '"renditions": ["full"]' in capsys.readouterr().out
    common = ["--station-dir", str(station_dir), "--operator", "kim", "--reason", "case 8"]
    assert main(["station", "export", clip_id, str(tmp_path / "o"), *common, "--evidence-key", str(custody)]) == 2
    assert "envelope version 1" in capsys.readouterr().err
    assert main(["station", "export", clip_id, str(tmp_path / "o4"), *common]) == 0
    assert "rendition: full (envelope version 1): bystanders visible" in capsys.readouterr().out
