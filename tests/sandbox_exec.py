"""Runs a command under the same kernel restrictions the systemd units apply (test helper).

systemd is not PID 1 here, so the units cannot be started. This launcher applies, to itself
and then ``execv``'s into the command, what the units' hardening does at the kernel level:

- ``NoNewPrivileges=yes``          prctl(PR_SET_NO_NEW_PRIVS)
- ``LimitCORE=0``                  setrlimit(RLIMIT_CORE, 0)
- ``SystemCallFilter=`` allow-list one seccomp filter: the syscalls of the unit's filter
  (expanded by ``systemd-analyze syscall-filter``), everything else fails with EPERM
  (``SystemCallErrorNumber=EPERM``)
- ``MemoryDenyWriteExecute=yes``   a second seccomp filter with systemd's own rules: mmap with
  PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC and shmat with SHM_EXEC fail
- ``SystemCallArchitectures=native`` the filters are built for the native arch only
- ``RestrictAddressFamilies=``      (with ``--families AF_UNIX,AF_INET,...`` or ``--families none``)
  a third seccomp filter with systemd's rule: socket() with any other family fails with
  EAFNOSUPPORT (socketpair() is not filtered, as under systemd)

Usage: python sandbox_exec.py ALLOWED_SYSCALLS_FILE [--families LIST] -- COMMAND ARGS...
Denied calls fail with EPERM, as under the unit; the payload checks its own results.
Not covered (needs PID 1 / namespaces): ProtectSystem, PrivateTmp,
IPAddressDeny, user switching (the test wraps this in ``setpriv`` when run as root).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 4, 5, 7
#: socket address families by name (Linux numbering); AF_MAX as in <bits/socket.h>
ADDRESS_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
AF_MAX = 46
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


def SCMP_ACT_ERRNO(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _lib():
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


def allow_list_filter(lib, names: list[str]) -> None:
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO(errno.EPERM))
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall on this architecture (e.g. a 32-bit-only one)
            continue
        _check(lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None), f"allow {name}")
    _check(lib.seccomp_load(ctx), "load allow-list")
    lib.seccomp_release(ctx)


def memory_deny_write_execute_filter(lib) -> None:
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    deny = SCMP_ACT_ERRNO(errno.EPERM)
    rules = [("mmap", 2, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC),
             ("mprotect", 2, PROT_EXEC, PROT_EXEC),
             ("pkey_mprotect", 2, PROT_EXEC, PROT_EXEC),
             ("shmat", 2, SHM_EXEC, SHM_EXEC)]
    for name, arg, mask, value in rules:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue
        cmp = ScmpArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, value)
        _check(lib.seccomp_rule_add_array(ctx, deny, nr, 1, ctypes.byref(cmp)), f"deny W^X {name}")
    _check(lib.seccomp_load(ctx), "load W^X filter")
    lib.seccomp_release(ctx)


def address_family_filter(lib, families: set[int]) -> None:
    """socket(domain, ...) with a domain outside ``families`` fails with EAFNOSUPPORT."""
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    deny = SCMP_ACT_ERRNO(errno.EAFNOSUPPORT)
    nr = lib.seccomp_syscall_resolve_name(b"socket")
    for family in range(AF_MAX):
        if family not in families:
            cmp = ScmpArgCmp(0, SCMP_CMP_EQ, family, 0)
            _check(lib.seccomp_rule_add_array(ctx, deny, nr, 1, ctypes.byref(cmp)), f"deny family {family}")
    cmp = ScmpArgCmp(0, SCMP_CMP_GE, AF_MAX, 0)
    _check(lib.seccomp_rule_add_array(ctx, deny, nr, 1, ctypes.byref(cmp)), "deny families >= AF_MAX")
    _check(lib.seccomp_load(ctx), "load address-family filter")
    lib.seccomp_release(ctx)


def parse_families(value: str) -> set[int]:
    if value == "none":
        return set()
    return {ADDRESS_FAMILIES[name] for name in value.replace(",", " ").split()}


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    allowed_file, options, command = argv[1], argv[2:sep], argv[sep + 1:]
    families = None
    if options:
        if len(options) != 2 or options[0] != "--families":
            raise SystemExit(f"usage: {argv[0]} ALLOWED_SYSCALLS_FILE [--families LIST] -- COMMAND ARGS...")
        families = parse_families(options[1])
    with open(allowed_file) as f:
        names = f.read().split()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    lib = _lib()
    # W^X first: the allow-list does not contain seccomp() itself, so it must be the last filter
    memory_deny_write_execute_filter(lib)
    if families is not None:
        address_family_filter(lib, families)
    allow_list_filter(lib, names)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
