"""`appliance station console ...`: the operator console's process and its accounts.

    appliance station console serve    --station-dir DIR --console-dir DIR [--bind HOST:PORT]
                                       [--tls-cert F --tls-key F | --behind-proxy]
    appliance station console user add NAME --role ROLE --console-dir DIR   (password from stdin or prompt)
    appliance station console user list|disable|enable ...
    appliance station console demo-user --console-dir DIR [--role operator]  (prints a one-time login)
    appliance station console tls-cert --console-dir DIR --host NAME [--host ADDR ...]
    appliance station console user passwd NAME --console-dir DIR [--drop-wrap]
    appliance station console evidence-key wrap --console-dir DIR --key FILE --user SUPERVISOR [--station-dir DIR]
    appliance station console evidence-key list|remove ...
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
from pathlib import Path

DEFAULT_STATION_DIR = os.environ.get("APPLIANCE_STATION_DIR", "/var/lib/appliance-station")
DEFAULT_CONSOLE_DIR = os.environ.get("APPLIANCE_CONSOLE_DIR", "/var/lib/appliance-console")


def _console_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--console-dir", type=Path, default=DEFAULT_CONSOLE_DIR,
                   help=f"the console's own directory (accounts, workflow, audit log); default {DEFAULT_CONSOLE_DIR} "
                        "or $APPLIANCE_CONSOLE_DIR")


def register(ssub) -> None:
    from appliance.station.console.store import ROLES

    console = ssub.add_parser("console", help="the operator console (web, black monitor): serve, accounts, TLS")
    csub = console.add_subparsers(dest="console_command", metavar="CONSOLE_COMMAND", required=True)

    p = csub.add_parser("serve", help="serve the console (systemd: appliance-console.service)")
    p.add_argument("--station-dir", "--dir", dest="station_dir", type=Path, default=DEFAULT_STATION_DIR,
                   help=f"the station directory, read only (default {DEFAULT_STATION_DIR})")
    _console_dir(p)
    p.add_argument("--bind", default="127.0.0.1:8443", help="HOST:PORT (default 127.0.0.1:8443; port 0 = any free)")
    p.add_argument("--tls-cert", type=Path, help="certificate (PEM), e.g. from 'station console tls-cert'")
    p.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    p.add_argument("--behind-proxy", action="store_true",
                   help="plain HTTP for a TLS reverse proxy on this host (docs/console.md)")
    p.add_argument("--stale-after", type=float, default=120.0, metavar="SECONDS",
                   help="a device silent this long raises a console alarm (default 120)")
    p.add_argument("--ready-file", type=Path, help="write the console's URL here once it accepts connections")
    p.add_argument("--login-attempts-per-minute", type=int, default=10, metavar="N",
                   help="login attempts allowed per client address and minute (default 10)")
    p.add_argument("--station-key", type=Path, metavar="FILE",
                   help="the station's HPKE private key, for the bystander-pixelated video (default: the systemd "
                        "credential station-hpke.key, else STATION_DIR/keys/hpke.key)")
    p.set_defaults(func=cmd_serve)

    users = csub.add_parser("user", help="console accounts")
    usub = users.add_subparsers(dest="user_command", metavar="USER_COMMAND", required=True)
    p = usub.add_parser("add", help="add an account; the password is read from stdin (or prompted)")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=ROLES)
    _console_dir(p)
    p.set_defaults(func=cmd_user_add)
    p = usub.add_parser("list", help="accounts and roles")
    _console_dir(p)
    p.set_defaults(func=cmd_user_list)
    for action in ("disable", "enable"):
        p = usub.add_parser(action, help=f"{action} an account (disable also ends its sessions)")
        p.add_argument("username")
        _console_dir(p)
        p.set_defaults(func=cmd_user_state, action=action)

    p = usub.add_parser("passwd", help="set a new password (current, then new, from stdin or prompted); "
                                      "re-wraps the user's evidence key under the new one")
    p.add_argument("username")
    p.add_argument("--drop-wrap", action="store_true",
                   help="reset without the current password: the user's evidence-key wrap is deleted")
    _console_dir(p)
    p.set_defaults(func=cmd_user_passwd)

    ev = csub.add_parser("evidence-key", help="custody of the evidence key: wrapped under supervisors' passwords")
    esub = ev.add_subparsers(dest="evidence_command", metavar="EVIDENCE_COMMAND", required=True)
    p = esub.add_parser("wrap", help="wrap the evidence private key for a supervisor, who types their password")
    p.add_argument("--key", type=Path, required=True, help="the evidence private key file (offline custody)")
    p.add_argument("--user", required=True, help="the supervisor's account")
    p.add_argument("--station-dir", type=Path, default=DEFAULT_STATION_DIR,
                   help="checks the key against its keys/evidence.pub when present (default %(default)s)")
    _console_dir(p)
    p.set_defaults(func=cmd_evidence_wrap)
    p = esub.add_parser("list", help="which supervisors hold a wrap")
    _console_dir(p)
    p.set_defaults(func=cmd_evidence_list)
    p = esub.add_parser("remove", help="delete a supervisor's wrap")
    p.add_argument("--user", required=True)
    _console_dir(p)
    p.set_defaults(func=cmd_evidence_remove)

    p = csub.add_parser("demo-user", help="create an account with a random password and print both once")
    _console_dir(p)
    p.add_argument("--role", default="operator", choices=ROLES)
    p.set_defaults(func=cmd_demo_user)

    p = csub.add_parser("tls-cert", help="make a self-signed TLS certificate for the console (station setup)")
    _console_dir(p)
    p.add_argument("--host", action="append", required=True,
                   help="host name or address operators use (repeatable)")
    p.set_defaults(func=cmd_tls_cert)


def cmd_serve(args) -> int:
    import asyncio

    from appliance.common.service import ServiceNotifier, configure_logging
    from appliance.station.console.service import build_server

    configure_logging("appliance-console")
    console, server, sock, url, audit = build_server(
        args.station_dir, args.console_dir, bind=args.bind, tls_cert=args.tls_cert, tls_key=args.tls_key,
        behind_proxy=args.behind_proxy, stale_after_s=args.stale_after,
        login_guard={"per_client": args.login_attempts_per_minute}, station_key=args.station_key)
    notifier = ServiceNotifier()
    print(f"console listening on {url}", file=sys.stderr, flush=True)
    # uvicorn's Server.serve turns SIGTERM/SIGINT into a graceful stop (open event streams end),
    # then re-raises the signal with the handler that was there before: make that one a no-op so
    # the process ends through the `finally` below (audit record, clean exit 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            if args.ready_file is not None:
                tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
                tmp.write_text(url + "\n")
                os.replace(tmp, args.ready_file)
            notifier.ready(f"console on {url}")
        await task

    try:
        asyncio.run(serve())
    finally:
        notifier.stopping("console stopping")
        audit.append("console.stop", url=url)
        console.close()
        audit.close()
    return 0


def _read_password(prompt: str = "password: ", *, confirm: bool = True) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("again: ") != first:
            from appliance.common.errors import InputError
            raise InputError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def _by() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or "cli"


def _audited(console_dir: Path, kind: str, **fields) -> None:
    from appliance.station.console.service import open_console_audit_log

    audit = open_console_audit_log(console_dir)
    try:
        audit.append(kind, user=_by(), **fields)
    finally:
        audit.close()


def _check_password(store, username: str, password: str) -> None:
    from appliance.common.errors import InputError
    from appliance.station.console.auth import LoginGuard

    result = LoginGuard(store).reauthenticate(username, password)
    if not result.ok:
        raise InputError(f"{username}: the password is not this account's ({result.why}); nothing changed")


def cmd_user_passwd(args) -> int:
    from appliance.station.console.auth import hash_password
    from appliance.station.console.custody import unwrap_key, wrap_key
    from appliance.station.console.store import ConsoleStore, now_ms

    store = ConsoleStore(args.console_dir)
    try:
        wrap = store.wrap(args.username)
        key = None
        if wrap is not None and not args.drop_wrap:
            current = _read_password("current password: ", confirm=False)
            _check_password(store, args.username, current)
            key = unwrap_key(wrap, current)
        new = _read_password("new password: ")
        rewrapped = None if key is None else wrap_key(key, args.username, new, created_unix_ms=now_ms(),
                                                       created_by=_by())
        del key
        store.change_password(args.username, hash_password(new), rewrapped)
    finally:
        store.close()
    _audited(args.console_dir, "console.password_changed", target=args.username,
             evidence_wrap="rewrapped" if rewrapped else "dropped" if wrap else "none")
    print(f"password of {args.username} changed" + (
        "; evidence-key wrap re-made under it" if rewrapped else
        "; its evidence-key wrap was deleted (wrap the key again)" if wrap else ""))
    return 0


def cmd_evidence_wrap(args) -> int:
    from appliance.contracts.keys import load_hpke_public_key
    from appliance.station.console.custody import load_evidence_private_key, unwrap_key, wrap_key
    from appliance.station.console.store import ConsoleStore, now_ms
    from appliance.station.keys import StationKeyPaths

    public = StationKeyPaths.of(args.station_dir).directory / "evidence.pub"
    expected = load_hpke_public_key(public).fingerprint if public.exists() else None
    key = load_evidence_private_key(args.key, expected)
    store = ConsoleStore(args.console_dir)
    try:
        user = store.user(args.user)
        if user is None or user.role != "supervisor":
            from appliance.common.errors import InputError
            raise InputError(f"{args.user!r} is not a supervisor account (see 'appliance station console user list')")
        password = _read_password(f"password of {args.user}: ", confirm=False)
        _check_password(store, args.user, password)
        wrap = wrap_key(key, args.user, password, created_unix_ms=now_ms(), created_by=_by())
        unwrap_key(wrap, password)          # it opens before it is stored
        store.put_wrap(wrap)
    finally:
        store.close()
    _audited(args.console_dir, "console.evidence_key_wrapped", target=args.user, key_fingerprint=wrap.fingerprint)
    print(f"evidence key {wrap.fingerprint} wrapped for {args.user}" +
          ("" if expected else f" (not checked: no {public})"))
    return 0


def cmd_evidence_list(args) -> int:
    import time

    from appliance.station.console.store import ConsoleStore

    store = ConsoleStore(args.console_dir)
    try:
        wraps = store.wraps()
    finally:
        store.close()
    for w in wraps:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(w.created_unix_ms / 1000))
        print(f"{w.username:<24} {w.fingerprint} {w.kem:<16} wrapped {when}Z by {w.created_by}")
    if not wraps:
        print("no supervisor holds a wrap of the evidence key (see 'evidence-key wrap')")
    return 0


def cmd_evidence_remove(args) -> int:
    from appliance.common.errors import InputError
    from appliance.station.console.store import ConsoleStore

    store = ConsoleStore(args.console_dir)
    try:
        if not store.delete_wrap(args.user):
            raise InputError(f"{args.user} holds no wrap of the evidence key")
    finally:
        store.close()
    _audited(args.console_dir, "console.evidence_key_wrap_removed", target=args.user)
    print(f"wrap of {args.user} deleted")
    return 0


def cmd_user_add(args) -> int:
    from appliance.station.console.service import add_user, open_console_audit_log

    password = _read_password()
    audit = open_console_audit_log(args.console_dir)
    try:
        add_user(args.console_dir, args.username, args.role, password, audit=audit,
                 by=os.environ.get("SUDO_USER") or os.environ.get("USER") or "cli")
    finally:
        audit.close()
    print(f"user {args.username} added as {args.role}")
    return 0


def cmd_user_list(args) -> int:
    from appliance.station.console.store import ConsoleStore

    store = ConsoleStore(args.console_dir)
    try:
        for u in store.users():
            print(f"{u.username:<24} {u.role:<10} {'disabled' if u.disabled else 'active'}")
    finally:
        store.close()
    return 0


def cmd_user_state(args) -> int:
    from appliance.station.console.service import open_console_audit_log
    from appliance.station.console.store import ConsoleStore

    store = ConsoleStore(args.console_dir)
    try:
        store.set_disabled(args.username, args.action == "disable")
    finally:
        store.close()
    audit = open_console_audit_log(args.console_dir)
    try:
        audit.append(f"console.user_{args.action}d", user=os.environ.get("USER") or "cli", target=args.username)
    finally:
        audit.close()
    print(f"user {args.username} {args.action}d")
    return 0


def cmd_demo_user(args) -> int:
    from appliance.station.console.service import create_demo_user

    name, password = create_demo_user(args.console_dir, args.role)
    print(f"user {name}\npassword {password}")
    return 0


def cmd_tls_cert(args) -> int:
    from appliance.station.console.service import make_tls_certificate

    cert, key = make_tls_certificate(args.console_dir, args.host)
    print(f"wrote {cert} and {key} (0600); serve with --tls-cert {cert} --tls-key {key}")
    return 0
