"""Differential test of `appliance audit verify`: the current verify_log against a reference
revision's, on random tamperings of real logs. Messages, order, warnings and exit codes must
be identical.

    .venv/bin/python scripts/verify_differential.py [--reference REV] [--cases N] [--seed S]

The reference is ``git show REV:<path of verify.py then>``, its imports mapped to today's
modules (the helpers it imports are unchanged). Prints the number of cases, how many the
reference found tampered, and exits 1 on the first difference (with the case to reproduce).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.contracts.audit.canonical import canonical, record_hash  # noqa: E402
from appliance.contracts.audit.log import AuditLog, read_checkpoints  # noqa: E402
from appliance.contracts.audit.verify import verify_log  # noqa: E402

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
OLD_PATHS = ("appliance/contracts/audit/verify.py", "appliance/audit/verify.py")


def reference_verify(rev: str) -> types.FunctionType:
    for rel in OLD_PATHS:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"no verify.py at {rev}")
    source = (shown.stdout.replace("appliance.audit.", "appliance.contracts.audit.")
              .replace("from appliance.errors import", "from appliance.common.errors import"))
    module = types.ModuleType("verify_reference")
    module.__file__ = f"<{rev}:{rel}>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.verify_log


class Clock:
    def __init__(self) -> None:
        self.t = 1_764_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def make_log(directory: Path, rng: random.Random) -> tuple[Path, list[dict]]:
    path = directory / "audit.jsonl"
    log = AuditLog(path, signer=KEY, device="dev-diff", checkpoint_every=rng.choice((3, 5, 8)),
                   checkpoint_interval_s=10**6, clock=Clock(),
                   segment_max_bytes=rng.choice((0, 0, 2500, 4000)))
    for i in range(rng.randint(5, 60)):
        if rng.random() < 0.04:
            log.rotate_key(OTHER if rng.random() < 0.5 else KEY)
        else:
            log.append("spool.insert", clip_id=f"clip-{i:03d}", bytes=1000 + i, note="é" if i % 7 == 0 else "")
    if rng.random() < 0.5:
        log.checkpoint()
    log.close()
    return path, read_checkpoints(path)


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name) and p.is_file())


def tamper(path: Path, rng: random.Random) -> str:
    files = files_of(path)
    target = rng.choice(files)
    lines = target.read_bytes().splitlines(keepends=True)
    op = rng.choice(("delete", "swap", "flip", "dup", "truncate", "garbage", "edit", "rehash", "drop_file",
                     "rename_file", "cut_bytes", "none"))
    i = rng.randrange(len(lines)) if lines else 0
    if op == "delete" and lines:
        del lines[i]
    elif op == "swap" and len(lines) > 1:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "flip" and lines:
        b = bytearray(lines[i])
        k = rng.randrange(len(b))
        b[k] = (b[k] + rng.randint(1, 255)) % 256
        lines[i] = bytes(b)
    elif op == "dup" and lines:
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif op == "truncate" and lines:
        lines = lines[:i]
    elif op == "garbage":
        lines.insert(i, rng.choice((b"garbage\n", b"{}\n", b"[1,2]\n", b'{"seq": 3}\n')))
    elif op in ("edit", "rehash") and lines:
        try:
            rec = json.loads(lines[i])
            rec["fields"]["clip_id"] = "forged"
            if op == "rehash":
                rec["hash"] = record_hash(rec)
            lines[i] = canonical(rec) + b"\n"
        except (ValueError, KeyError, TypeError):
            pass
    elif op == "drop_file" and len(files) > 1:
        target.unlink()
        return op
    elif op == "rename_file" and len(files) > 1 and target != path:
        target.rename(target.with_name(target.name + ".bak"))
        return op
    elif op == "cut_bytes" and lines:
        data = b"".join(lines)
        target.write_bytes(data[:rng.randrange(len(data) + 1)])
        return op
    target.write_bytes(b"".join(lines))
    return op


def outcome(fn, path: Path, keys: list, station: list | None) -> dict:
    try:
        r = fn(path, keys, station)
    except Exception as exc:
        return {"exception": f"{type(exc).__name__}: {exc}"}
    return {"json": r.to_json(), "summary": r.summary(), "count": r.problem_count, "exit": 0 if r.ok else 1}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", default="d3ad0ea", help="git revision of the reference verify")
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    reference = reference_verify(args.reference)
    rng = random.Random(args.seed)
    tampered = 0
    ops: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(args.cases):
            d = Path(tmp) / f"c{case}"
            d.mkdir()
            path, checkpoints = make_log(d, rng)
            for _ in range(rng.choice((1, 1, 2, 3))):
                op = tamper(path, rng)
                ops[op] = ops.get(op, 0) + 1
            keys = rng.choice(([], [KEY.public_key()], [OTHER.public_key()]))
            station = rng.choice((None, checkpoints, checkpoints[:-1], checkpoints[:1], [], [{"bad": 1}]))
            want = outcome(reference, path, keys, station)
            got = outcome(verify_log, path, keys, station)
            if want != got:
                print(f"DIFFERENCE in case {case} (seed {args.seed}):\nreference {json.dumps(want, indent=1)}\n"
                      f"current   {json.dumps(got, indent=1)}", file=sys.stderr)
                kept = ROOT / "out" / f"verify-diff-case{case}"
                shutil.copytree(d, kept, dirs_exist_ok=True)
                print(f"log kept in {kept}", file=sys.stderr)
                return 1
            tampered += want.get("exit", 2) != 0
            shutil.rmtree(d)
    print(f"{args.cases} cases identical ({tampered} reported tampered); operations: "
          + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
