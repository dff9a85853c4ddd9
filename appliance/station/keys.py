"""The station's key files (docs/keys.md, "Station key directory")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.common.errors import InputError
from appliance.contracts.curve import (
    curve_fingerprint,
    generate_curve_keypair,
    load_curve_public,
)
from appliance.contracts.keys import (
    DEFAULT_KEM,
    HpkePublicKey,
    KeyFileError,
    generate_hpke_key,
    generate_signing_key,
    load_hpke_public_key,
    load_signing_public_key,
    public_key_fingerprint,
)


@dataclass(frozen=True)
class StationKeyPaths:
    directory: Path

    @classmethod
    def of(cls, station_dir: str | Path) -> StationKeyPaths:
        return cls(Path(station_dir) / "keys")

    @property
    def hpke_private(self) -> Path:
        return self.directory / "hpke.key"

    @property
    def hpke_public(self) -> Path:
        return self.directory / "hpke.pub"

    @property
    def signing_private(self) -> Path:
        return self.directory / "signing.key"

    @property
    def signing_public(self) -> Path:
        return self.directory / "signing.pub"

    @property
    def evidence_public(self) -> Path:
        """The evidence key's public half (optional): the box seals the full rendition to it.

        Its private half is never in the station directory (docs/keys.md, "Evidence key")."""
        return self.directory / "evidence.pub"

    @property
    def curve_public(self) -> Path:
        return self.directory / "station.key"

    @property
    def curve_secret(self) -> Path:
        return self.directory / "station.key_secret"

    def private_files(self) -> tuple[Path, ...]:
        return (self.hpke_private, self.signing_private, self.curve_secret)

    def public_files(self) -> tuple[Path, ...]:
        """What goes to every device (the provisioning bundle); all required. The bundle also
        carries :attr:`evidence_public` once it exists (appliance/station/devices.py)."""
        return (self.hpke_public, self.signing_public, self.curve_public)

    def require(self) -> None:
        missing = [p for p in (*self.public_files(), self.signing_private, self.curve_secret) if not p.exists()]
        if missing:
            raise InputError(f"station keys missing: {', '.join(map(str, missing))} "
                             f"(fix: run 'appliance station keygen --dir {self.directory.parent}')")


def generate_station_keys(station_dir: str | Path, *, kem: str = DEFAULT_KEM,
                          force: bool = False) -> dict[str, str]:
    """Creates all station key pairs; returns {name: fingerprint}. Private files are 0600."""
    paths = StationKeyPaths.of(station_dir)
    if not force:
        existing = [p for p in (*paths.private_files(), *paths.public_files()) if p.exists()]
        if existing:
            raise InputError(f"station keys already exist ({existing[0]}); refusing to replace them: losing "
                             f"the HPKE private key makes every stored clip unreadable (use --force to really do it)")
    station = Path(station_dir)
    if not station.exists():  # outside systemd (StateDirectoryMode=0700) nobody else tightens it
        station.mkdir(parents=True, mode=0o700)
        station.chmod(0o700)  # mkdir's mode is masked by the umask
    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    hpke_pub = generate_hpke_key(paths.hpke_private, paths.hpke_public, kem=kem, overwrite=force)
    sign_pub = generate_signing_key(paths.signing_private, public_path=paths.signing_public, overwrite=force)
    generate_curve_keypair(paths.directory, "station", overwrite=force)
    return {
        f"hpke ({hpke_pub.kem})": hpke_pub.fingerprint,
        "signing (Ed25519)": public_key_fingerprint(sign_pub),
        "curve": curve_fingerprint(load_curve_public(paths.curve_public)),
    }


def station_fingerprints(station_dir: str | Path) -> dict[str, str]:
    paths = StationKeyPaths.of(station_dir)
    hpke_pub = load_hpke_public_key(paths.hpke_public)
    out = {
        f"hpke ({hpke_pub.kem})": hpke_pub.fingerprint,
        "signing (Ed25519)": public_key_fingerprint(load_signing_public_key(paths.signing_public)),
        "curve": curve_fingerprint(load_curve_public(paths.curve_public)),
    }
    if paths.evidence_public.exists():
        evidence = load_hpke_public_key(paths.evidence_public)
        out[f"evidence ({evidence.kem})"] = evidence.fingerprint
    return out


def init_evidence_key(station_dir: str | Path, private_out: str | Path, *, kem: str | None = None) -> HpkePublicKey:
    """Makes the evidence HPKE key pair (docs/keys.md, "Evidence key"): the public half into the
    station's key directory (``keys/evidence.pub``, then into every new bundle), the private
    half ONLY to ``private_out`` (0600, never overwritten), for offline custody.

    The KEM defaults to the station HPKE key's. Refuses when the station already has an evidence
    key (a new one would not open clips sealed to the old one: rotate deliberately, by moving the
    old public file away) or when ``private_out`` lies inside the station directory."""
    paths = StationKeyPaths.of(station_dir)
    if not paths.hpke_public.exists():
        raise InputError(f"no station HPKE key at {paths.hpke_public} (fix: run 'appliance station keygen "
                         f"--station-dir {station_dir}' first)")
    if paths.evidence_public.exists():
        raise InputError(f"{paths.evidence_public} already exists; refusing to replace the evidence key (clips "
                         "sealed to it need its private half; to rotate, move the old public file away first "
                         "and keep the old private key for those clips)")
    out = Path(private_out).absolute()
    # Resolved through links: a path that only looks like it is elsewhere is refused too.
    real = out.parent.resolve() / out.name
    if Path(station_dir).resolve() in real.parents:
        raise InputError(f"{private_out} lies inside the station directory {station_dir}; the evidence private "
                         "key must never be stored there (fix: write it to removable media or into a "
                         "supervisor's custody, e.g. --out /media/evidence/evidence.key)")
    if out.exists() or out.is_symlink():
        raise KeyFileError(f"{out}: already exists; refusing to overwrite a key")
    return generate_hpke_key(out, paths.evidence_public, kem=kem or load_hpke_public_key(paths.hpke_public).kem)


def station_log_public_key(station_dir: str | Path):
    """The key that signs the station's own audit log's checkpoints (None if not found)."""
    from appliance.contracts.keys import load_signing_public_key
    from appliance.station.audit_writer import AuditWriterClient, configured_socket

    socket_path = configured_socket(station_dir)
    if socket_path is not None:   # the separate audit writer's key (issue 12)
        with AuditWriterClient(socket_path) as client:
            return client.public_key()
    path = StationKeyPaths.of(station_dir).signing_public
    return load_signing_public_key(path) if path.exists() else None


def open_station_audit_log(station_dir: str | Path):
    """The station's audit log: one opener for the receiver, exports, device status changes and
    the officer's holds and retention.

    With ``<station dir>/audit-writer`` (production, appliance-station-audit.service): a client
    of the separate audit writer, which alone holds the log and its key, so whoever runs exports
    cannot rewrite or cut the log (appliance/station/audit_writer.py). Without it (development):
    ``<station dir>/audit.jsonl`` signed with the station's signing key."""
    from appliance.contracts.audit.log import AuditLog
    from appliance.contracts.keys import load_signing_key
    from appliance.station.audit_writer import AuditWriterClient, configured_socket
    from appliance.station.db import require_owner

    station_dir = Path(station_dir)
    require_owner(station_dir)
    socket_path = configured_socket(station_dir)
    if socket_path is not None:
        return AuditWriterClient(socket_path)
    key_path = StationKeyPaths.of(station_dir).signing_private
    if not key_path.exists():
        raise InputError(f"no station signing key at {key_path} (fix: give the station directory, "
                         "created by 'appliance station keygen')")
    return AuditLog(station_dir / "audit.jsonl", signer=load_signing_key(key_path), origin="station",
                    device="station")
