"""The station's audit writer: the one process that holds the key signing the station's log.

Why (issue 12, finding 3): the station user runs the receiver *and* the operators' exports. If
that user can read the log's signing key and write the log file, an operator can re-sign the log
without the export records, or cut it back to an earlier checkpoint, and it still verifies. So
the log lives with its own user (``appliance-station-audit``, systemd/appliance-station-audit.service):

    /var/lib/appliance-station-audit/   0700 appliance-station-audit
        audit.jsonl (+ sealed segments)  the station's audit log (docs/audit-log.md)
        audit-signing.key                0600, the checkpoint key; never leaves this process
        audit-signing.pub                for the DPO: `appliance audit verify ... --key`
    /run/appliance-station-audit/audit.sock   the only way in

Station processes (receiver, export, devices, holds, retention) append through the socket:
one request line ``{"op": "append", "kind": ..., "fields": {...}}``, one reply line
``{"ok": true, "seq": n}`` after the record is fsynced, or ``{"ok": false, "error": ...,
"type": ...}`` when the log refused it (e.g. an access without a reason). The writer checks the
peer's uid (``SO_PEERCRED``) against ``--allow-user``. It never rewrites or drops a record, so
a client that can append cannot remove one, and a client cannot produce a checkpoint.

A station directory that contains ``audit-writer`` (a text file naming the socket, written by
``appliance station audit-writer enable``) sends every record there; without it the station
keeps its log locally as before (development, tests). With it, an unreachable writer is an
error (the record is never silently kept somewhere else).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pwd
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any

from appliance.common.errors import InputError
from appliance.contracts.audit.log import AccessRefused, AuditError, AuditLog
from appliance.contracts.keys import (
    generate_signing_key,
    load_signing_key,
    load_signing_public_key,
    signing_public_from_bytes,
)

log = logging.getLogger("appliance.station.audit_writer")

MARKER = "audit-writer"
DEFAULT_SOCKET = "/run/appliance-station-audit/audit.sock"
LOG_NAME = "audit.jsonl"
KEY_NAME, PUB_NAME = "audit-signing.key", "audit-signing.pub"
MAX_REQUEST_BYTES = 1024 * 1024
_ERRORS = {"AccessRefused": AccessRefused, "AuditError": AuditError}


def marker_path(station_dir: str | Path) -> Path:
    return Path(station_dir) / MARKER


def configured_socket(station_dir: str | Path) -> str | None:
    """The writer's socket if this station directory sends its records to one."""
    try:
        text = marker_path(station_dir).read_text().strip()
    except FileNotFoundError:
        return None
    if not text.startswith("/"):
        raise InputError(f"{marker_path(station_dir)}: must name the audit writer's socket, an absolute path "
                         f"(fix: 'appliance station audit-writer enable --dir {station_dir}')")
    return text


def enable(station_dir: str | Path, socket_path: str = DEFAULT_SOCKET) -> Path:
    """Points a station directory at the writer (run as the station user)."""
    if not socket_path.startswith("/"):
        raise InputError(f"--socket {socket_path}: must be an absolute path")
    path = marker_path(station_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(socket_path + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


# -- the writer process ---------------------------------------------------------------------


def open_writer_log(audit_dir: str | Path, **kwargs: Any) -> tuple[AuditLog, str]:
    """The log with its key, creating both on first start (key 0600, directory 0700); returns
    (log, base64 raw public key)."""
    audit_dir = Path(audit_dir)
    if not audit_dir.exists():
        audit_dir.mkdir(parents=True, mode=0o700)
    os.chmod(audit_dir, 0o700)
    key_path = audit_dir / KEY_NAME
    if not key_path.exists():
        generate_signing_key(key_path, public_path=audit_dir / PUB_NAME)
        log.warning("created the station audit signing key %s (public key %s: give it to the DPO)",
                    key_path, audit_dir / PUB_NAME)
    key = load_signing_key(key_path)
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode("ascii")
    return AuditLog(audit_dir / LOG_NAME, signer=key, origin="station", device="station", **kwargs), public


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        uid = _peer_uid(self.connection)
        if self.server.allowed_uids is not None and uid not in self.server.allowed_uids:
            log.warning("refused an audit client with uid %s (allowed: %s)", uid, sorted(self.server.allowed_uids))
            self._reply({"ok": False, "type": "AuditError", "error": f"uid {uid} may not append to the station log"})
            return
        while True:
            line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
                self._reply({"ok": False, "type": "AuditError", "error": "request too large"})
                return
            self._reply(self.server.answer(line, uid))

    def _reply(self, body: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(body, sort_keys=True).encode() + b"\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, audit: AuditLog, public_b64: str, allowed_uids: set[int] | None):
        self.audit = audit
        self.public_b64 = public_b64
        self.allowed_uids = allowed_uids
        super().__init__(path, _Handler)

    def answer(self, line: bytes, uid: int) -> dict[str, Any]:
        try:
            req = json.loads(line)
            op = req.get("op") if isinstance(req, dict) else None
        except ValueError:
            return {"ok": False, "type": "AuditError", "error": "request is not JSON"}
        if op == "public_key":
            return {"ok": True, "public_key": self.public_b64}
        if op != "append" or not isinstance(req.get("kind"), str) or not isinstance(req.get("fields"), dict):
            return {"ok": False, "type": "AuditError", "error": "expected {op: append, kind, fields}"}
        try:
            record = self.audit.append(req["kind"], **req["fields"])
        except AccessRefused as exc:
            return {"ok": False, "type": "AccessRefused", "error": str(exc)}
        except (AuditError, TypeError) as exc:
            return {"ok": False, "type": "AuditError", "error": str(exc)}
        return {"ok": True, "seq": record["seq"]}


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def uids_of(users: list[str]) -> set[int]:
    uids = {0, os.getuid()}
    for name in users:
        try:
            uids.add(int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise InputError(f"--allow-user {name}: no such user (fix: create it with systemd-sysusers, "
                             "systemd/appliance-station.sysusers.conf)") from None
    return uids


class AuditWriter:
    """Serves one log on a Unix socket until :meth:`stop`."""

    def __init__(self, audit_dir: str | Path, socket_path: str | Path, *, allowed_users: list[str] | None = None,
                 checkpoint_interval_s: float = 300.0):
        self.socket_path = Path(socket_path)
        self.audit, public_b64 = open_writer_log(audit_dir, checkpoint_interval_s=checkpoint_interval_s)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.server = _Server(str(self.socket_path), self.audit, public_b64,
                              None if allowed_users is None else uids_of(allowed_users))
        os.chmod(self.socket_path, 0o666)   # who may append is decided by SO_PEERCRED, not the mode
        self._stop = threading.Event()

    def serve_forever(self, notifier: Any = None) -> None:
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        if notifier is not None:
            notifier.ready(f"audit writer on {self.socket_path}")
        try:
            while not self._stop.wait(1.0):
                self.audit.maybe_checkpoint()   # anchor a quiet tail too
                if notifier is not None:
                    notifier.ping()
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.socket_path.unlink(missing_ok=True)
            self.audit.close()

    def stop(self) -> None:
        self._stop.set()


# -- the client the station's processes use -----------------------------------------------------


class AuditWriterClient:
    """``append(kind, **fields)`` like :class:`AuditLog`, through the writer's socket."""

    def __init__(self, socket_path: str | Path, *, timeout_s: float = 30.0):
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise AuditError(f"the station audit writer is not reachable at {self.socket_path}: "
                             f"{exc.strerror or exc} (fix: 'systemctl start appliance-station-audit'); "
                             "nothing was recorded or done") from None
        self._sock, self._file = sock, sock.makefile("rb")

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            try:
                self._sock.sendall(json.dumps(request, sort_keys=True, allow_nan=False).encode() + b"\n")
                line = self._file.readline(MAX_REQUEST_BYTES)
            except OSError as exc:
                self.close()
                raise AuditError(f"the station audit writer at {self.socket_path} failed: {exc}") from None
            if not line:
                self.close()
                raise AuditError(f"the station audit writer at {self.socket_path} closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise _ERRORS.get(reply.get("type"), AuditError)(str(reply.get("error")))
        return reply

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        try:
            json.dumps(fields, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit record {kind}: fields are not plain JSON ({exc})") from None
        return {"kind": kind, "seq": self._call({"op": "append", "kind": kind, "fields": fields})["seq"]}

    def public_key(self):
        return signing_public_from_bytes(base64.b64decode(self._call({"op": "public_key"})["public_key"]))

    def checkpoint(self) -> None:
        """The writer checkpoints (it holds the key); nothing to do here."""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def __enter__(self) -> AuditWriterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def writer_public_key_file(audit_dir: str | Path):
    return load_signing_public_key(Path(audit_dir) / PUB_NAME)
