"""Running the console: its audit log and key, TLS certificate, uvicorn, and the programmatic API.

    console = start_console(station_dir, console_dir)        # in a thread; binds 127.0.0.1:0
    print(console.url)                                       # http://127.0.0.1:40123
    name, password = create_demo_user(console_dir)           # a one-time operator login
    console.stop()

``appliance station console serve`` runs the same server in the foreground (systemd unit
appliance-console.service).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from appliance.common.errors import InputError
from appliance.station.console.app import Console
from appliance.station.console.auth import hash_password
from appliance.station.console.store import ConsoleStore

log = logging.getLogger("appliance.console")
DEFAULT_CONSOLE_DIR = "/var/lib/appliance-console"
DEFAULT_BIND = "127.0.0.1:8443"


def console_key_path(console_dir: str | Path) -> Path:
    return Path(console_dir) / "keys" / "console-signing.key"


def open_console_audit_log(console_dir: str | Path):
    """``<console dir>/audit.jsonl``: hash-chained, checkpoints signed with the console's own key
    (made on first use; the console never holds the station's keys)."""
    from appliance.contracts.audit.log import AuditLog
    from appliance.contracts.keys import generate_signing_key, load_signing_key

    key = console_key_path(console_dir)
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        generate_signing_key(key, public_path=key.with_suffix(".pub"))
    return AuditLog(Path(console_dir) / "audit.jsonl", signer=load_signing_key(key), origin="station",
                    device="console")


def add_user(console_dir: str | Path, username: str, role: str, password: str, *, audit: Any = None,
             by: str = "cli") -> None:
    store = ConsoleStore(console_dir)
    try:
        store.add_user(username, role, hash_password(password))
    finally:
        store.close()
    if audit is not None:
        audit.append("console.user_added", user=by, target=username, role=role)


def create_demo_user(console_dir: str | Path, role: str = "operator") -> tuple[str, str]:
    """A fresh account with a random password, for the demo (`make demo` prints both once)."""
    name = f"demo-{role}-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    audit = open_console_audit_log(console_dir)
    try:
        add_user(console_dir, name, role, password, audit=audit, by="demo")
    finally:
        audit.close()
    return name, password


def make_tls_certificate(console_dir: str | Path, hostnames: list[str], *, days: int = 825) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for the console (made at station setup).

    Browsers will ask to trust it once; a site with its own CA or a reverse proxy uses that instead
    (docs/console.md). The key file is 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from appliance.contracts.keys import write_private_file, write_public_file

    if not hostnames:
        raise InputError("name at least one host name or address the operators use (--host)")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    tls = Path(console_dir) / "tls"
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = write_private_file(tls / "console.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), overwrite=True)
    cert_path = write_public_file(tls / "console.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise InputError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8443") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class RunningConsole:
    url: str
    console: Console
    server: uvicorn.Server
    thread: threading.Thread
    audit: Any

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.console.close()
        self.audit.close()


def build_server(station_dir: str | Path, console_dir: str | Path, *, bind: str = DEFAULT_BIND,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 behind_proxy: bool = False, stale_after_s: float = 120.0,
                 login_guard: dict[str, Any] | None = None,
                 station_key: str | Path | None = None) -> tuple[Console, uvicorn.Server, socket.socket, str, Any]:
    host, port = parse_bind(bind)
    tls = tls_cert is not None
    if tls != (tls_key is not None):
        raise InputError("--tls-cert and --tls-key go together (make them with 'appliance station console tls-cert')")
    if not tls and not behind_proxy and not _is_loopback(host):
        raise InputError(f"refusing plain HTTP on {host}: give --tls-cert/--tls-key (made by 'appliance station "
                         f"console tls-cert'), or bind to 127.0.0.1 behind a TLS reverse proxy (--behind-proxy)")
    audit = open_console_audit_log(console_dir)
    console = Console(station_dir, console_dir, audit=audit, tls=tls, stale_after_s=stale_after_s,
                      login_guard=login_guard, station_key=station_key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    actual = sock.getsockname()[1]
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"{'https' if tls else 'http'}://{url_host}:{actual}"
    config = uvicorn.Config(console.app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2, proxy_headers=behind_proxy,
                            ssl_certfile=str(tls_cert) if tls else None, ssl_keyfile=str(tls_key) if tls else None)
    server = uvicorn.Server(config)
    audit.append("console.start", url=url, station_dir=str(station_dir), tls=tls)
    return console, server, sock, url, audit


def start_console(station_dir: str | Path, console_dir: str | Path, *, bind: str = "127.0.0.1:0",
                  **kwargs: Any) -> RunningConsole:
    """Starts the console in a background thread and returns once it accepts connections."""
    console, server, sock, url, audit = build_server(station_dir, console_dir, bind=bind, **kwargs)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), name="console",
                              daemon=True)
    thread.start()
    for _ in range(1200):     # up to 60 s on a loaded machine
        if server.started or not thread.is_alive():
            break
        thread.join(0.05)
    if not server.started:
        server.should_exit = True
        raise InputError(f"the console did not start on {url}")
    return RunningConsole(url, console, server, thread, audit)
