"""Verifies an audit log: chain, signatures, and consistency with the station's checkpoints.

:func:`verify_log` never stops at the first problem, but sorts what it found by position,
so ``result.first`` is the first bad record with the reason (docs/audit-log.md §3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit.canonical import (
    FORMAT_VERSION,
    GENESIS_PREV,
    canonical,
    key_id,
    public_key_from_raw_b64,
    record_hash,
)
from appliance.audit.checkpoints import (
    Checkpoint,
    check_signature,
    parse_checkpoint,
    sequence_problems,
)
from appliance.audit.log import iter_lines
from appliance.errors import InputError

RECORD_KEYS = frozenset({"v", "seq", "time", "kind", "fields", "prev", "hash"})


@dataclass(frozen=True)
class Problem:
    line: int            # 1-based line in the log; len(lines) + 1 for "after the end"
    seq: int | None      # the record's seq where known
    what: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.what}"


@dataclass(frozen=True)
class VerifyResult:
    path: str
    records: int                     # lines read
    log_id: str | None
    origin: str | None
    device: str | None
    log_checkpoints: int             # checkpoint records whose signature verified
    station_checkpoints: int         # station checkpoints of this log that matched
    trusted_keys: tuple[str, ...]    # key ids trusted at the end (given + rotated in)
    key_source: str                  # "given", "genesis (self-asserted)" or "none"
    problems: tuple[Problem, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "records": self.records, "log": self.log_id,
                "origin": self.origin, "device": self.device,
                "log_checkpoints_verified": self.log_checkpoints,
                "station_checkpoints_matched": self.station_checkpoints,
                "trusted_keys": list(self.trusted_keys), "key_source": self.key_source,
                "first_problem": str(self.first) if self.first else None,
                "problems": [str(p) for p in self.problems], "warnings": list(self.warnings)}

    def summary(self) -> str:
        if self.ok:
            return (f"OK {self.path}: {self.records} records, {self.log_checkpoints} signed checkpoints, "
                    f"{self.station_checkpoints} station checkpoints matched; keys {', '.join(self.trusted_keys) or '-'}"
                    f" ({self.key_source})")
        return f"TAMPERED {self.path}: first bad record at {self.first}"


@dataclass
class _Row:
    line: int
    record: dict[str, Any] | None
    raw: bytes


def verify_log(path: str | Path, keys: Sequence[Ed25519PublicKey] = (),
               station_checkpoints: Iterable[Any] | None = None) -> VerifyResult:
    """Checks the log at ``path``. ``keys`` are the trusted device keys (none = the key the
    genesis record names, self-asserted); ``station_checkpoints`` are the checkpoint objects
    the station holds for this device (JSON, as received)."""
    path = Path(path)
    try:
        rows = [_Row(n, _parse(raw), raw) for n, raw in iter_lines(path)]
    except OSError as exc:
        raise InputError(f"cannot read audit log {path}: {exc.strerror or exc}") from None
    problems: list[Problem] = []
    warnings: list[str] = []
    if rows and rows[-1].record is None and _unterminated(path):
        # Power lost inside the last write: not an edit; the writer cuts it off (and records
        # audit.recovered) on its next append.
        warnings.append(f"line {rows[-1].line} is an incomplete, unterminated record ({len(rows[-1].raw)} bytes): "
                        "an interrupted write, ignored")
        rows.pop()
    if not rows:
        return VerifyResult(str(path), 0, None, None, None, 0, 0, (), "none",
                            (Problem(1, None, "the log is empty: no genesis record"),))

    # Where each claimed seq sits, so a seq jump can tell "deleted" from "moved".
    lines_of_seq: dict[int, list[int]] = {}
    for row in rows:
        if row.record is not None and isinstance(row.record.get("seq"), int):
            lines_of_seq.setdefault(row.record["seq"], []).append(row.line)

    genesis = rows[0].record
    log_id = origin = device = None
    trusted: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}
    key_source = "given" if keys else "none"
    if genesis is not None and genesis.get("kind") == "audit.genesis" and isinstance(genesis.get("fields"), dict):
        g = genesis["fields"]
        log_id, origin, device = g.get("log"), g.get("origin"), g.get("device")
        if not keys and isinstance(g.get("public_key"), str):
            try:
                k = public_key_from_raw_b64(g["public_key"])
                trusted[key_id(k)] = k
                key_source = "genesis (self-asserted)"
                warnings.append("no --key given: signatures were checked against the key the log itself "
                                "names, which proves consistency, not who wrote it")
            except ValueError:
                problems.append(Problem(1, 0, "genesis public_key is not an Ed25519 key"))
    else:
        problems.append(Problem(1, _seq(genesis), "the first record is not an audit.genesis record: "
                                "the log's beginning was removed or replaced"))

    hash_at: dict[int, str] = {}       # claimed seq → stored hash, for checkpoint heads
    line_at: dict[int, int] = {}
    log_cps: dict[int, Checkpoint] = {}
    pending_keys: list[tuple[int, dict[str, Any]]] = []   # rotation records not yet anchored
    verified_cps = 0
    expected_seq, prev_hash = 0, GENESIS_PREV
    prev_row: _Row | None = None
    expected_n = 0

    for row in rows:
        rec = row.record
        if rec is None:
            problems.append(Problem(row.line, None, "not a JSON object: edited or corrupted"))
            expected_seq, prev_hash, prev_row = expected_seq + 1, None, None
            continue
        seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
        shape = _shape_problem(rec)
        if shape:
            problems.append(Problem(row.line, seq, shape))
            expected_seq, prev_hash, prev_row = (seq if seq is not None else expected_seq) + 1, None, None
            continue
        if canonical(rec) != row.raw:
            problems.append(Problem(row.line, seq, "not in canonical form (bytes changed after writing): edited"))
        elif record_hash(rec) != rec["hash"]:
            problems.append(Problem(row.line, seq, f"{rec['kind']} record: content does not match its hash: edited"))
        seq_reported = False
        if seq != expected_seq:
            seq_reported = True
            if seq > expected_seq:
                later = [ln for s in range(expected_seq, seq) for ln in lines_of_seq.get(s, []) if ln > row.line]
                if later:
                    problems.append(Problem(row.line, seq, f"out of order: seq {seq} where {expected_seq} was "
                                            f"expected, and seq {expected_seq} comes later (line {later[0]}): "
                                            "records reordered"))
                else:
                    missing = (f"record {expected_seq} is" if seq == expected_seq + 1
                               else f"records {expected_seq}..{seq - 1} are")
                    problems.append(Problem(row.line, seq, f"{missing} missing before this one: deleted"))
            else:
                problems.append(Problem(row.line, seq, f"out of order: seq {seq} after seq {expected_seq - 1}: "
                                        "records reordered or duplicated"))
        elif prev_hash is not None and rec["prev"] != prev_hash:
            assert prev_row is not None
            problems.append(Problem(prev_row.line, seq - 1, f"chain broken: record {seq} (line {row.line}) does "
                                    f"not chain to this record's hash: this record (or the next) was edited "
                                    "and re-hashed, or a record was replaced"))
        if not seq_reported or seq not in hash_at:
            hash_at[seq] = rec["hash"]
            line_at[seq] = row.line
        expected_seq, prev_hash, prev_row = seq + 1, rec["hash"], row

        if rec["kind"] == "audit.key_rotation":
            pending_keys.append((seq, rec["fields"]))
        elif rec["kind"] == "audit.checkpoint":
            expected_n, ok = _check_log_checkpoint(row, rec, seq, log_id, expected_n, hash_at, trusted, problems)
            if ok:
                verified_cps += 1
                log_cps[ok.n] = ok
                for rot_seq, f in list(pending_keys):
                    if rot_seq < ok.count:
                        try:
                            k = public_key_from_raw_b64(f.get("public_key", ""))
                            trusted[key_id(k)] = k
                        except (ValueError, TypeError):
                            problems.append(Problem(line_at.get(rot_seq, row.line), rot_seq,
                                                    "key rotation names a malformed public key"))
                        pending_keys.remove((rot_seq, f))

    total = expected_seq if rows else 0
    last_cover = max((c.count for c in log_cps.values()), default=0)
    tail = len(rows) - (last_cover + 1) if log_cps else len(rows)
    if tail > 0:
        warnings.append(f"{tail} record(s) after the last valid checkpoint are not yet covered by a signature")

    matched = 0
    if station_checkpoints is None:
        warnings.append("no --checkpoints given: a truncated tail or a rollback cannot be detected "
                        "without the station's checkpoints")
    else:
        matched = _check_station(list(station_checkpoints), log_id, rows, total, hash_at, line_at, log_cps,
                                 trusted, problems, warnings)

    problems.sort(key=lambda p: p.line)
    return VerifyResult(str(path), len(rows), log_id, origin, device, verified_cps, matched,
                        tuple(sorted(trusted)), key_source, tuple(problems), tuple(warnings))


def _unterminated(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) != b"\n"


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _seq(rec: dict[str, Any] | None) -> int | None:
    return rec.get("seq") if rec is not None and isinstance(rec.get("seq"), int) else None


def _shape_problem(rec: dict[str, Any]) -> str | None:
    if set(rec) != RECORD_KEYS:
        return f"members must be {sorted(RECORD_KEYS)}, found {sorted(rec)}: edited"
    if rec["v"] != FORMAT_VERSION:
        return f"unknown format version {rec['v']!r}"
    if not isinstance(rec["seq"], int) or isinstance(rec["seq"], bool) or rec["seq"] < 0:
        return f"seq {rec['seq']!r} is not a non-negative integer: edited"
    if not (isinstance(rec["kind"], str) and isinstance(rec["fields"], dict) and isinstance(rec["time"], str)
            and isinstance(rec["prev"], str) and isinstance(rec["hash"], str)):
        return "a member has the wrong type: edited"
    return None


def _check_log_checkpoint(row: _Row, rec: dict[str, Any], seq: int, log_id: str | None, expected_n: int,
                          hash_at: dict[int, str], trusted: dict[str, Ed25519PublicKey],
                          problems: list[Problem]) -> tuple[int, Checkpoint | None]:
    def bad(what: str) -> tuple[int, None]:
        problems.append(Problem(row.line, seq, what))
        return expected_n + 1, None

    try:
        cp = parse_checkpoint(rec["fields"])
    except ValueError as exc:
        return bad(f"malformed checkpoint: {exc}")
    if cp.log != log_id:
        return bad(f"{cp.describe()} names log {cp.log}, this log is {log_id}: copied from another log")
    if cp.n != expected_n:
        return bad(f"{cp.describe()}: checkpoint index {cp.n} where {expected_n} was expected: "
                   "checkpoints removed or rolled back")
    if cp.count != seq:
        return bad(f"{cp.describe()} sits at seq {seq} but covers {cp.count} records: moved")
    if hash_at.get(cp.count - 1) != cp.head:
        return bad(f"{cp.describe()}: head {cp.head[:12]} is not the hash of record {cp.count - 1}: "
                   "records before it were altered after signing")
    why = check_signature(cp, trusted)
    if why:
        return bad(f"{cp.describe()}: {why}")
    return cp.n + 1, cp


def _check_station(items: list[Any], log_id: str | None, rows: list[_Row], total: int, hash_at: dict[int, str],
                   line_at: dict[int, int], log_cps: dict[int, Checkpoint],
                   trusted: dict[str, Ed25519PublicKey], problems: list[Problem], warnings: list[str]) -> int:
    end_line = len(rows) + 1
    parsed: list[Checkpoint] = []
    for i, item in enumerate(items):
        try:
            parsed.append(parse_checkpoint(item))
        except ValueError as exc:
            problems.append(Problem(end_line, None, f"station checkpoint item {i} is malformed: {exc}"))
    if not parsed:
        warnings.append("the station holds no checkpoints for this log: a truncated tail or a rollback "
                        "cannot be detected")
        return 0
    mine = [c for c in parsed if c.log == log_id]
    others = sorted({c.log for c in parsed if c.log != log_id})
    if others and not mine:
        problems.append(Problem(1, 0, f"the station holds checkpoints only of other log(s) {', '.join(others)}, "
                                f"none of this log {log_id}: the log was replaced"))
        return 0
    if others:
        warnings.append(f"ignored station checkpoints of other log(s): {', '.join(others)}")
    signed = []
    for cp in mine:
        why = check_signature(cp, trusted)
        if why:
            problems.append(Problem(end_line, None, f"station's {cp.describe()}: {why}"))
        else:
            signed.append(cp)
    for msg in sequence_problems(signed):
        problems.append(Problem(end_line, None, msg))
    matched = 0
    last_good = 0   # records known to match a station checkpoint
    for cp in sorted(signed, key=lambda c: (c.count, c.n)):
        own = log_cps.get(cp.n)
        if own is not None and own != cp:
            problems.append(Problem(line_at.get(own.count, end_line), own.count,
                                    f"checkpoint rollback: the log's {own.describe()} differs from the "
                                    f"station's {cp.describe()}"))
        if cp.count > total:
            problems.append(Problem(end_line, total, f"truncated tail: the station holds {cp.describe()}, "
                                    f"the log ends after {total} records: records {total}..{cp.count - 1} "
                                    "were cut off"))
        elif hash_at.get(cp.count - 1) != cp.head:
            first = last_good
            problems.append(Problem(line_at.get(first, end_line), first,
                                    f"log diverges from the station's {cp.describe()}: record {cp.count - 1} "
                                    f"has another hash; records before seq {first} match the station, so "
                                    f"the log was rolled back or rewritten somewhere in seq "
                                    f"{first}..{cp.count - 1}"))
        else:
            matched += 1
            last_good = max(last_good, cp.count)
    return matched
