"""Verifies an audit log: chain, signatures, and consistency with the station's checkpoints.

:func:`verify_log` never stops at the first problem, but sorts what it found by position,
so ``result.first`` is the first bad record with the reason (docs/audit-log.md §3).
"""

from __future__ import annotations

import bisect
import hashlib
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
from appliance.audit.segments import list_segments, stray_files
from appliance.errors import InputError

RECORD_KEYS = frozenset({"v", "seq", "time", "kind", "fields", "prev", "hash"})


@dataclass(frozen=True)
class Problem:
    line: int            # 1-based line in the log; len(lines) + 1 for "after the end"
    seq: int | None      # the record's seq where known
    what: str
    file: str = ""       # for a segmented log: the file, and ``line`` is the line in it

    def __str__(self) -> str:
        where = (f"{self.file} " if self.file else "") + f"line {self.line}"
        where += f" (seq {self.seq})" if self.seq is not None else ""
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
    files: tuple[str, ...] = field(default=())   # sealed segments then the active file, as read

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
                "problems": [str(p) for p in self.problems], "warnings": list(self.warnings),
                "files": list(self.files)}

    def summary(self) -> str:
        if self.ok:
            segs = f" in {len(self.files)} files" if len(self.files) > 1 else ""
            return (f"OK {self.path}: {self.records} records{segs}, {self.log_checkpoints} signed checkpoints, "
                    f"{self.station_checkpoints} station checkpoints matched; keys {', '.join(self.trusted_keys) or '-'}"
                    f" ({self.key_source})")
        return f"TAMPERED {self.path}: first bad record at {self.first}"


@dataclass
class _Row:
    line: int
    record: dict[str, Any] | None
    raw: bytes
    file: int = 0        # index into the files read
    offset: int = 0      # byte offset of the line in its file


@dataclass
class _File:
    path: Path
    data: bytes
    first_line: int      # global line number of its first line
    lines: int = 0
    span: tuple[int, int] | None = None    # (first, last) from a sealed segment's name


def _read_files(path: Path) -> list[_File]:
    files = [_File(s.path, b"", 0, span=(s.first, s.last)) for s in list_segments(path)]
    if path.is_file() or not files:
        files.append(_File(path, b"", 0))
    for f in files:
        try:
            f.data = f.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read audit log {f.path}: {exc.strerror or exc}") from None
    return files


def _rows(files: list[_File]) -> list[_Row]:
    rows: list[_Row] = []
    for index, f in enumerate(files):
        f.first_line = len(rows) + 1
        offset = 0
        for raw in f.data.splitlines(keepends=True):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            rows.append(_Row(len(rows) + 1, _parse(line), line, index, offset))
            offset += len(raw)
        f.lines = len(rows) + 1 - f.first_line
    return rows


def verify_log(path: str | Path, keys: Sequence[Ed25519PublicKey] = (),
               station_checkpoints: Iterable[Any] | None = None) -> VerifyResult:
    """Checks the log at ``path``. ``keys`` are the trusted device keys (none = the key the
    genesis record names, self-asserted); ``station_checkpoints`` are the checkpoint objects
    the station holds for this device (JSON, as received)."""
    path = Path(path)
    files = _read_files(path)
    rows = _rows(files)
    problems: list[Problem] = []
    warnings: list[str] = []
    segmented = len(files) > 1 or files[0].span is not None
    for stray in stray_files(path):
        warnings.append(f"{stray.name} beside the log is not a segment name and was not read "
                        "(a renamed segment or a copy?)")
    if rows and rows[-1].record is None and files[rows[-1].file].span is None and _unterminated(files[-1].data):
        # Power lost inside the last write: not an edit; the writer cuts it off (and records
        # audit.recovered) on its next append.
        warnings.append(f"line {rows[-1].line} is an incomplete, unterminated record ({len(rows[-1].raw)} bytes): "
                        "an interrupted write, ignored")
        rows.pop()
    if not rows:
        return VerifyResult(str(path), 0, None, None, None, 0, 0, (), "none",
                            (Problem(1, None, "the log is empty: no genesis record"),),
                            files=tuple(f.path.name for f in files))

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
        if genesis is not None and genesis.get("kind") == "audit.segment_start" \
                and isinstance(genesis.get("fields"), dict):
            log_id = genesis["fields"].get("log")     # so the checkpoints can still be checked

    hash_at: dict[int, str] = {}       # claimed seq → stored hash, for checkpoint heads
    line_at: dict[int, int] = {}
    log_cps: dict[int, Checkpoint] = {}
    pending_keys: list[tuple[int, dict[str, Any]]] = []   # rotation records not yet anchored
    verified_cps = 0
    expected_seq, prev_hash = 0, GENESIS_PREV
    prev_row: _Row | None = None
    expected_n = 0
    resync_n = False     # after deleted records, the next checkpoint's index is a consequence

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
                elif files[row.file].first_line == row.line and segmented:
                    problems.append(Problem(row.line, seq, _missing_segment(rec, expected_seq, seq, path)))
                else:
                    missing = (f"record {expected_seq} is" if seq == expected_seq + 1
                               else f"records {expected_seq}..{seq - 1} are")
                    problems.append(Problem(row.line, seq, f"{missing} missing before this one: deleted"))
                resync_n = True
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
            n = rec["fields"].get("n")
            if resync_n and isinstance(n, int) and not isinstance(n, bool) and n > expected_n:
                expected_n = n            # already reported as deleted records; do not repeat it
            resync_n = False
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

    _check_segments(files, rows, log_id, problems, warnings)

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
    if segmented:
        problems = [_localise(p, files) for p in problems]
    return VerifyResult(str(path), len(rows), log_id, origin, device, verified_cps, matched,
                        tuple(sorted(trusted)), key_source, tuple(problems), tuple(warnings),
                        tuple(f.path.name for f in files))


def _unterminated(data: bytes) -> bool:
    return not data.endswith(b"\n")


def _localise(p: Problem, files: list[_File]) -> Problem:
    """A global line number → (file, line in that file), for a segmented log."""
    if p.file:
        return Problem(1, p.seq, p.what, p.file)
    starts = [f.first_line for f in files]
    i = max(0, bisect.bisect_right(starts, p.line) - 1)
    return Problem(p.line - files[i].first_line + 1, p.seq, p.what, files[i].path.name)


def _missing_segment(rec: dict[str, Any], expected: int, seq: int, path: Path) -> str:
    """The message for a seq gap at the start of a file: a whole segment is gone. The file's
    audit.segment_start names the segment before it, so the name is exact when it matches."""
    f = rec.get("fields") if rec.get("kind") == "audit.segment_start" else None
    if isinstance(f, dict) and f.get("first") == expected and f.get("last") == seq - 1 \
            and isinstance(f.get("segment"), str):
        return f"segment {f['segment']} (seq {expected}..{seq - 1}) is missing: deleted"
    return (f"segment(s) holding seq {expected}..{seq - 1} missing before this file "
            f"(expected a file named like {path.name}.{expected:012d}-…): deleted")


def _check_segments(files: list[_File], rows: list[_Row], log_id: str | None, problems: list[Problem],
                    warnings: list[str]) -> None:
    """§9: every sealed segment holds what its name says, closes with audit.segment_end whose
    hash matches the bytes before it, and has nothing but a checkpoint after it; every file
    after the first starts with audit.segment_start."""
    for index, f in enumerate(files):
        mine = [r for r in rows if r.file == index]
        seqs = [_seq(r.record) for r in mine]
        known = [s for s in seqs if s is not None]
        end_line = f.first_line + max(f.lines, 1) - 1      # its last line
        if f.span is not None:
            if not mine:
                problems.append(Problem(f.first_line, None, f"segment {f.path.name} is empty: truncated",
                                        f.path.name))
                continue
            if known and (known[0], known[-1]) != f.span:
                problems.append(Problem(mine[0].line, known[0], f"segment {f.path.name} is named for seq "
                                        f"{f.span[0]}..{f.span[1]} but holds seq {known[0]}..{known[-1]}: "
                                        "renamed, truncated or extended"))
        start = mine[0].record if mine else None
        if start is not None and start.get("kind") == "audit.segment_start" and isinstance(start.get("fields"), dict) \
                and start["fields"].get("log") != log_id:
            problems.append(Problem(mine[0].line, _seq(start), f"{f.path.name} starts a segment of log "
                                    f"{start['fields'].get('log')}, this log is {log_id}: copied from another log"))
        if index > 0 and mine and (mine[0].record or {}).get("kind") != "audit.segment_start":
            problems.append(Problem(mine[0].line, seqs[0], f"{f.path.name} does not start with "
                                    "audit.segment_start: its beginning was removed or it is not a segment"))
        for r in mine[1:]:
            if (r.record or {}).get("kind") == "audit.segment_start":
                problems.append(Problem(r.line, _seq(r.record), "audit.segment_start inside a file: "
                                        "segments were joined or a record was moved"))
            if (r.record or {}).get("kind") == "audit.genesis":
                problems.append(Problem(r.line, _seq(r.record), "a second audit.genesis record: "
                                        "another log was appended to this one"))
        ends = [r for r in mine if (r.record or {}).get("kind") == "audit.segment_end"]
        if not ends:
            if f.span is not None:
                problems.append(Problem(end_line, None, f"segment {f.path.name} has no audit.segment_end "
                                        "record: it was cut short or not sealed by the writer"))
            continue
        if len(ends) > 1:
            problems.append(Problem(ends[1].line, _seq(ends[1].record), f"{f.path.name} holds a second "
                                    "audit.segment_end: segments were joined"))
        end = ends[0]
        after = [r for r in mine if r.line > end.line]
        extra = [r for r in after if (r.record or {}).get("kind") != "audit.checkpoint"]
        if extra or len(after) > 1:
            bad = (extra or after[1:])[0]
            problems.append(Problem(bad.line, _seq(bad.record), f"record after the audit.segment_end of "
                                    f"{f.path.name} (only its checkpoint may follow): appended after sealing"))
        fields = end.record["fields"] if end.record is not None else {}
        expected = {"first": known[0] if known else None, "last": (_seq(end.record) or 0) - 1,
                    "bytes": end.offset, "sha256": hashlib.sha256(f.data[:end.offset]).hexdigest()}
        wrong = [k for k, v in expected.items() if not isinstance(fields, dict) or fields.get(k) != v]
        if wrong:
            detail = ", ".join(f"{k} {fields.get(k) if isinstance(fields, dict) else None!r} "
                               f"(file: {expected[k]!r})" for k in wrong)
            problems.append(Problem(end.line, _seq(end.record), f"audit.segment_end of {f.path.name} does not "
                                    f"match the bytes before it: {detail}: the segment was edited"))
        if f.span is None:
            warnings.append(f"{f.path.name} ends with audit.segment_end but was not yet renamed: a rotation "
                            "was interrupted; the writer finishes it when it next opens the log")


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
