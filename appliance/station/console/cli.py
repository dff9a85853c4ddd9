"""`appliance station console ...`: the operator console's process and its accounts.

    appliance station console serve    --station-dir DIR --console-dir DIR [--bind HOST:PORT]
                                       [--tls-cert F --tls-key F | --behind-proxy]
    appliance station console user add NAME --role ROLE --console-dir DIR   (password from stdin or prompt)
    appliance station console user list|disable|enable ...
    appliance station console demo-user --console-dir DIR [--role operator]  (prints a one-time login)
    appliance station console tls-cert --console-dir DIR --host NAME [--host ADDR ...]
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
        login_guard={"per_client": args.login_attempts_per_minute})
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


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            from appliance.common.errors import InputError
            raise InputError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


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
