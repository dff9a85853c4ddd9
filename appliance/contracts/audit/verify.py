"""Verifies an audit log: chain, signatures, and consistency with the station's checkpoints.

:func:`verify_log` never stops at the first problem, but sorts what it found by position,
so ``result.first`` is the first bad record with the reason (docs/audit-log.md §3).

It streams: the files are read line by line, segment by segment, and only bounded state is
kept (the previous record, per-file bookkeeping, the keys trusted so far, the station's
checkpoints with the few record hashes they need, a window of recent records, and at most
:data:`MAX_PROBLEMS` problems), so memory does not grow with the size of the log.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.common.errors import InputError
from appliance.contracts.audit.canonical import (
    FORMAT_VERSION,
    GENESIS_PREV,
    RECORD_DOMAIN,
    canonical,
    key_id,
    public_key_from_raw_b64,
    record_hash,
)
from appliance.contracts.audit.checkpoints import (
    Checkpoint,
    check_signature,
    parse_checkpoint,
    sequence_problems,
)
from appliance.contracts.audit.segments import list_segments, stray_files

RECORD_KEYS = frozenset({"v", "seq", "time", "kind", "fields", "prev", "hash"})
#: Problems kept (the first ones by position); more are only counted (``VerifyResult.omitted``).
MAX_PROBLEMS = 1000
#: Recent records whose seq → hash/line verify remembers, for a checkpoint's ``head`` (the
#: record just before it) and a key rotation's line; the station's checkpoints' records are
#: remembered wherever they are.
RECENT_RECORDS = 1024


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
    problems: tuple[Problem, ...]    # the first MAX_PROBLEMS, by position
    warnings: tuple[str, ...] = field(default=())
    files: tuple[str, ...] = field(default=())   # sealed segments then the active file, as read
    omitted: int = 0                 # further problems found but not kept

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    @property
    def problem_count(self) -> int:
        return len(self.problems) + self.omitted

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "ok": self.ok, "records": self.records, "log": self.log_id,
               "origin": self.origin, "device": self.device,
               "log_checkpoints_verified": self.log_checkpoints,
               "station_checkpoints_matched": self.station_checkpoints,
               "trusted_keys": list(self.trusted_keys), "key_source": self.key_source,
               "first_problem": str(self.first) if self.first else None,
               "problems": [str(p) for p in self.problems], "warnings": list(self.warnings),
               "files": list(self.files)}
        if self.omitted:
            out["problems_omitted"] = self.omitted
        return out

    def summary(self) -> str:
        if self.ok:
            segs = f" in {len(self.files)} files" if len(self.files) > 1 else ""
            return (f"OK {self.path}: {self.records} records{segs}, {self.log_checkpoints} signed checkpoints, "
                    f"{self.station_checkpoints} station checkpoints matched; keys {', '.join(self.trusted_keys) or '-'}"
                    f" ({self.key_source})")
        return f"TAMPERED {self.path}: first bad record at {self.first}"


# -- bounded state ------------------------------------------------------------------------


class _Problems:
    """The first ``cap`` problems in report order; the rest are counted. Report order is by
    line, then: record checks (in the order found), segment checks (by file, then check),
    end-of-log and station checks (in the order found)."""

    def __init__(self, cap: int | None = None):
        self._cap = MAX_PROBLEMS if cap is None else cap
        self._heap: list[tuple[tuple[int, int, int, int, int], Any]] = []   # max-heap via negated keys
        self._counter = itertools.count()
        self.omitted = 0

    def add(self, item: Problem | _Gap, phase: int = 0, file: int = 0, check: int = 0) -> None:
        line = item.line
        entry = ((-line, -phase, -file, -check, -next(self._counter)), item)
        if len(self._heap) < self._cap:
            heapq.heappush(self._heap, entry)
            return
        self.omitted += 1
        if entry[0] > self._heap[0][0]:          # comes before the last one kept
            dropped = heapq.heapreplace(self._heap, entry)[1]
        else:
            dropped = item
        if isinstance(dropped, _Gap):
            dropped.dead = True

    def __bool__(self) -> bool:
        return bool(self._heap)

    def sorted(self) -> list[Problem]:
        items = [item for _, item in sorted(self._heap, reverse=True)]
        return [item.problem() if isinstance(item, _Gap) else item for item in items]


@dataclass
class _Gap:
    """A seq jump forward at ``line``: records ``expected..seq-1`` were deleted, unless one of
    them turns up later in the log (then the records were reordered). Settled at the end."""
    line: int
    seq: int
    expected: int
    otherwise: str                       # the message when none turns up later
    later: tuple[int, int] | None = None     # (seq, line) of the lowest missing seq seen later
    dead: bool = False                   # dropped from the problems kept

    def see(self, seq: int, line: int) -> None:
        if self.expected <= seq < self.seq and (self.later is None or seq < self.later[0]):
            self.later = (seq, line)

    @property
    def settled(self) -> bool:
        return self.dead or (self.later is not None and self.later[0] == self.expected)

    def problem(self) -> Problem:
        if self.later is not None:
            return Problem(self.line, self.seq, f"out of order: seq {self.seq} where {self.expected} was "
                           f"expected, and seq {self.expected} comes later (line {self.later[1]}): "
                           "records reordered")
        return Problem(self.line, self.seq, self.otherwise)


class _Index:
    """seq → (hash, line) of the record that claims it: the last one whose seq was in order,
    else the first. Exact for the ``pinned`` seqs (the station's checkpoints need them at the
    end), and for the last :data:`RECENT_RECORDS` records otherwise."""

    def __init__(self, pinned: Iterable[int] = ()):
        self._pinned: dict[int, tuple[str, int] | None] = dict.fromkeys(pinned)
        self._recent: OrderedDict[int, tuple[str, int]] = OrderedDict()

    def note(self, seq: int, digest: str, line: int, out_of_order: bool) -> None:
        pinned, recent = self._pinned, self._recent
        if seq in pinned and (not out_of_order or pinned[seq] is None):
            pinned[seq] = (digest, line)
        if not out_of_order or seq not in recent:
            recent[seq] = (digest, line)
            recent.move_to_end(seq)
            if len(recent) > RECENT_RECORDS:
                recent.popitem(last=False)

    def pin(self, seq: int) -> None:
        if seq not in self._pinned:
            self._pinned[seq] = self._recent.get(seq)

    def get(self, seq: int) -> tuple[str, int] | None:
        return self._pinned[seq] if seq in self._pinned else self._recent.get(seq)

    def hash_at(self, seq: int) -> str | None:
        at = self.get(seq)
        return at[0] if at else None

    def line_at(self, seq: int, default: int) -> int:
        at = self.get(seq)
        return at[1] if at else default


@dataclass
class _File:
    path: Path
    index: int
    span: tuple[int, int] | None = None    # (first, last) from a sealed segment's name
    first_line: int = 0      # global line number of its first line
    lines: int = 0           # lines read, a torn last line included
    rows: int = 0            # lines verified
    head: tuple[int, dict[str, Any] | None] | None = None    # its first row: (line, record)
    first_seq: int | None = None
    last_seq: int | None = None
    end: tuple[int, dict[str, Any], int, str] | None = None  # first audit.segment_end: line, record, offset, sha256
    end2: tuple[int, int | None] | None = None     # a second audit.segment_end: line, seq
    after: int = 0                                 # rows after the first audit.segment_end
    extra: tuple[int, int | None] | None = None    # the first of them that is not a checkpoint
    after2: tuple[int, int | None] | None = None   # the second of them
    digest: Any = field(default_factory=hashlib.sha256)   # of the bytes before audit.segment_end


def _files(path: Path) -> list[_File]:
    files = [_File(s.path, i, (s.first, s.last)) for i, s in enumerate(list_segments(path))]
    if path.is_file() or not files:
        files.append(_File(path, len(files)))
    return files


def _read(f: _File) -> Iterator[tuple[bytes, int, bool]]:
    """(line without its newline, byte offset, torn) for each line of ``f``, split as
    ``bytes.splitlines`` splits; ``torn``: the file's last line, without a newline."""
    try:
        with open(f.path, "rb") as fh:
            offset = 0
            for chunk in fh:
                pieces = chunk.splitlines(keepends=True) if b"\r" in chunk else (chunk,)
                last = len(pieces) - 1
                for i, raw in enumerate(pieces):
                    terminated = raw.endswith(b"\n")
                    yield (raw[:-1] if terminated else raw), offset, i == last and not chunk.endswith(b"\n")
                    if f.end is None:
                        f.digest.update(raw)
                    offset += len(raw)
    except OSError as exc:
        raise InputError(f"cannot read audit log {f.path}: {exc.strerror or exc}") from None


def _parse_station(items: list[Any]) -> list[Checkpoint | str]:
    parsed: list[Checkpoint | str] = []
    for item in items:
        try:
            parsed.append(parse_checkpoint(item))
        except ValueError as exc:
            parsed.append(str(exc))
    return parsed


# -- verify -------------------------------------------------------------------------------


def verify_log(path: str | Path, keys: Sequence[Ed25519PublicKey] = (),
               station_checkpoints: Iterable[Any] | None = None) -> VerifyResult:
    """Checks the log at ``path``. ``keys`` are the trusted device keys (none = the key the
    genesis record names, self-asserted); ``station_checkpoints`` are the checkpoint objects
    the station holds for this device (JSON, as received)."""
    return _Verifier(Path(path), keys, station_checkpoints).run()


class _Verifier:
    """One streaming pass over a log's files: each line is checked as a record (shape, bytes,
    hash, sequence, chain), then handed to the handler of its kind; the end-of-log and station
    checks run once all lines are read. Problems are added in the order they are found; their
    report order is :class:`_Problems`'."""

    def __init__(self, path: Path, keys: Sequence[Ed25519PublicKey], station_checkpoints: Iterable[Any] | None):
        self.path = path
        self.keys = keys
        self.files = _files(path)
        self.station = None if station_checkpoints is None else _parse_station(list(station_checkpoints))
        station_cps = [c for c in self.station or () if isinstance(c, Checkpoint)]
        self.station_ns = {c.n for c in station_cps}
        self.index = _Index({0, *(c.count for c in station_cps), *(c.count - 1 for c in station_cps)})
        self.problems = _Problems()
        self.stray_notes = [f"{stray.name} beside the log is not a segment name and was not read "
                            "(a renamed segment or a copy?)" for stray in stray_files(path)]
        self.torn_notes: list[str] = []
        self.genesis_notes: list[str] = []
        self.segment_notes: list[str] = []
        self.segmented = len(self.files) > 1 or self.files[0].span is not None

        self.log_id: Any = None
        self.origin: Any = None
        self.device: Any = None
        self.trusted: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}
        self.key_source = "given" if keys else "none"
        self.log_cps: dict[int, Checkpoint] = {}   # verified log checkpoints the station also holds
        self.last_cover = 0                       # the highest count a verified log checkpoint covers
        self.pending_keys: list[tuple[int, dict[str, Any], int]] = []   # rotations not yet anchored
        self.gaps: list[_Gap] = []                # seq jumps not yet known to be deletions or moves
        self.gaps_below = 0                       # the highest seq a gap is waiting for, + 1
        self.verified_cps = 0
        self.expected_seq = 0
        self.prev_hash: str | None = GENESIS_PREV
        self.prev_line: int | None = None
        self.expected_n = 0
        self.resync_n = False    # after deleted records, the next checkpoint's index is a consequence
        self.lines = self.rows = 0
        self.on_kind: dict[str, Callable[[dict[str, Any], int, int], None]] = {
            "audit.key_rotation": self._key_rotation,
            "audit.checkpoint": self._checkpoint,
        }

    def run(self) -> VerifyResult:
        for f in self.files:
            f.first_line = self.lines + 1
            for raw, offset, torn in _read(f):
                self._line(f, raw, offset, torn)
            _file_end(f, self.log_id, self.problems, self.segment_notes)
        if not self.rows:
            return VerifyResult(str(self.path), 0, None, None, None, 0, 0, (), "none",
                                (Problem(1, None, "the log is empty: no genesis record"),),
                                files=tuple(f.path.name for f in self.files))
        return self._result()

    # -- one line -----------------------------------------------------------------------

    def _line(self, f: _File, raw: bytes, offset: int, torn: bool) -> None:
        self.lines += 1
        f.lines += 1
        line = self.lines
        rec = _parse(raw)
        if rec is None and torn and f.span is None:
            # Power lost inside the last write: not an edit; the writer cuts it off (and
            # records audit.recovered) on its next append.
            self.torn_notes.append(f"line {line} is an incomplete, unterminated record ({len(raw)} bytes): "
                                   "an interrupted write, ignored")
            return
        self.rows += 1
        f.rows += 1
        claimed = rec.get("seq") if rec is not None else None
        if not isinstance(claimed, int):
            claimed = None
        _file_row(f, line, rec, claimed, offset, self.problems)
        if self.rows == 1:
            self._genesis(rec)
        self._settle_gaps(claimed, line)

        if rec is None:
            self.problems.add(Problem(line, None, "not a JSON object: edited or corrupted"))
            self._chain_broken(self.expected_seq + 1)
            return
        shape = _shape_problem(rec)
        if shape:
            self.problems.add(Problem(line, claimed, shape))
            self._chain_broken((claimed if claimed is not None else self.expected_seq) + 1)
            return
        seq: int = rec["seq"]
        self._check_bytes(raw, rec, line, seq)
        reported = self._check_order(f, rec, line, seq)
        self.index.note(seq, rec["hash"], line, reported)
        self.expected_seq, self.prev_hash, self.prev_line = seq + 1, rec["hash"], line
        handler = self.on_kind.get(rec["kind"])
        if handler is not None:
            handler(rec, seq, line)

    def _chain_broken(self, next_seq: int) -> None:
        self.expected_seq, self.prev_hash, self.prev_line = next_seq, None, None

    def _settle_gaps(self, claimed: int | None, line: int) -> None:
        """A record whose seq a gap is missing turns that gap from a deletion into a move."""
        if not self.gaps or claimed is None or claimed >= self.gaps_below:
            return
        for gap in self.gaps:
            gap.see(claimed, line)
        if any(gap.settled for gap in self.gaps):
            self.gaps = [gap for gap in self.gaps if not gap.settled]
            self.gaps_below = max((gap.seq for gap in self.gaps), default=0)

    def _check_bytes(self, raw: bytes, rec: dict[str, Any], line: int, seq: int) -> None:
        if canonical(rec) != raw:
            self.problems.add(Problem(line, seq, "not in canonical form (bytes changed after writing): edited"))
        elif _hash_of_line(raw, rec) != rec["hash"]:
            self.problems.add(Problem(line, seq, f"{rec['kind']} record: content does not match its hash: edited"))

    def _check_order(self, f: _File, rec: dict[str, Any], line: int, seq: int) -> bool:
        """Sequence and chain; True when the seq was out of order (already reported)."""
        expected, prev_hash, prev_line = self.expected_seq, self.prev_hash, self.prev_line
        if seq > expected:
            if f.first_line == line and self.segmented:
                otherwise = _missing_segment(rec, expected, seq, self.path)
            else:
                otherwise = (f"record {expected} is" if seq == expected + 1
                             else f"records {expected}..{seq - 1} are") + " missing before this one: deleted"
            gap = _Gap(line, seq, expected, otherwise)
            self.problems.add(gap)
            if not gap.dead:
                self.gaps.append(gap)
                self.gaps_below = max(self.gaps_below, seq)
            self.resync_n = True
            return True
        if seq < expected:
            self.problems.add(Problem(line, seq, f"out of order: seq {seq} after seq {expected - 1}: "
                                      "records reordered or duplicated"))
            return True
        if prev_hash is not None and rec["prev"] != prev_hash and prev_line is None:
            # Only the first record has no predecessor: its prev must be the all-zero hash.
            self.problems.add(Problem(line, seq, f"first record: prev is not {prev_hash[:8]}…: edited "
                                      "(a log starts from the all-zero hash)"))
        elif prev_hash is not None and rec["prev"] != prev_hash:
            assert prev_line is not None
            self.problems.add(Problem(prev_line, seq - 1, f"chain broken: record {seq} (line {line}) does "
                                      f"not chain to this record's hash: this record (or the next) was edited "
                                      "and re-hashed, or a record was replaced"))
        return False

    # -- handlers per record kind -------------------------------------------------------

    def _genesis(self, genesis: dict[str, Any] | None) -> None:
        """The first row: the log's id, origin and device, and (without keys) its key."""
        if genesis is not None and genesis.get("kind") == "audit.genesis" and isinstance(genesis.get("fields"), dict):
            g = genesis["fields"]
            self.log_id, self.origin, self.device = g.get("log"), g.get("origin"), g.get("device")
            if not self.keys and isinstance(g.get("public_key"), str):
                try:
                    k = public_key_from_raw_b64(g["public_key"])
                    self.trusted[key_id(k)] = k
                    self.key_source = "genesis (self-asserted)"
                    self.genesis_notes.append("no --key given: signatures were checked against the key the log "
                                              "itself names, which proves consistency, not who wrote it")
                except ValueError:
                    self.problems.add(Problem(1, 0, "genesis public_key is not an Ed25519 key"))
            return
        self.problems.add(Problem(1, _seq(genesis), "the first record is not an audit.genesis record: "
                                  "the log's beginning was removed or replaced"))
        if genesis is not None and genesis.get("kind") == "audit.segment_start" \
                and isinstance(genesis.get("fields"), dict):
            self.log_id = genesis["fields"].get("log")     # so the checkpoints can still be checked

    def _key_rotation(self, rec: dict[str, Any], seq: int, line: int) -> None:
        """Trusted only once a checkpoint signed with an already trusted key covers it."""
        self.pending_keys.append((seq, rec["fields"], line))

    def _checkpoint(self, rec: dict[str, Any], seq: int, line: int) -> None:
        n = rec["fields"].get("n")
        if self.resync_n and isinstance(n, int) and not isinstance(n, bool) and n > self.expected_n:
            self.expected_n = n            # already reported as deleted records; do not repeat it
        self.resync_n = False
        self.expected_n, ok = _check_log_checkpoint(line, rec, seq, self.log_id, self.expected_n, self.index,
                                                    self.trusted, self.problems)
        if not ok:
            return
        self.verified_cps += 1
        self.last_cover = max(self.last_cover, ok.count)
        if ok.n in self.station_ns:
            self.log_cps[ok.n] = ok
            self.index.pin(ok.count)
        for rot_seq, fields, rot_line in list(self.pending_keys):
            if rot_seq < ok.count:
                try:
                    k = public_key_from_raw_b64(fields.get("public_key", ""))
                    self.trusted[key_id(k)] = k
                except (ValueError, TypeError):
                    self.problems.add(Problem(self.index.line_at(rot_seq, rot_line), rot_seq,
                                              "key rotation names a malformed public key"))
                self.pending_keys.remove((rot_seq, fields, rot_line))

    # -- end of the log -----------------------------------------------------------------

    def _result(self) -> VerifyResult:
        warnings = self.stray_notes + self.torn_notes + self.genesis_notes + self.segment_notes
        total = self.expected_seq
        tail = self.rows - (self.last_cover + 1) if self.verified_cps else self.rows
        if tail > 0:
            warnings.append(f"{tail} record(s) after the last valid checkpoint are not yet covered by a signature")
        matched = 0
        if self.station is None:
            warnings.append("no --checkpoints given: a truncated tail or a rollback cannot be detected "
                            "without the station's checkpoints")
        else:
            matched = _check_station(self.station, self.log_id, self.rows + 1, total, self.index, self.log_cps,
                                     self.trusted, self.problems, warnings)
        found = self.problems.sorted()
        if self.segmented:
            starts = [f.first_line for f in self.files]
            found = [_localise(p, self.files, starts) for p in found]
        return VerifyResult(str(self.path), self.rows, self.log_id, self.origin, self.device, self.verified_cps,
                            matched, tuple(sorted(self.trusted)), self.key_source, tuple(found), tuple(warnings),
                            tuple(f.path.name for f in self.files), self.problems.omitted)


def _localise(p: Problem, files: list[_File], starts: list[int]) -> Problem:
    """A global line number → (file, line in that file), for a segmented log."""
    if p.file:
        return Problem(1, p.seq, p.what, p.file)
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


# §9 checks, in the order they are reported for the same line.
_SPAN, _START_LOG, _START, _INSIDE, _END2, _AFTER_END, _END_FIELDS, _NO_END = range(8)


def _file_row(f: _File, line: int, rec: dict[str, Any] | None, seq: int | None, offset: int,
              problems: _Problems) -> None:
    """Per-file bookkeeping for the §9 checks, and those that one row settles."""
    kind = (rec or {}).get("kind")
    if seq is not None:
        if f.first_seq is None:
            f.first_seq = seq
        f.last_seq = seq
    if f.head is None:
        f.head = (line, rec)
    elif kind == "audit.segment_start":
        problems.add(Problem(line, seq, "audit.segment_start inside a file: segments were joined or a record "
                             "was moved"), 1, f.index, _INSIDE)
    elif kind == "audit.genesis":
        problems.add(Problem(line, seq, "a second audit.genesis record: another log was appended to this one"),
                     1, f.index, _INSIDE)
    if f.end is not None:
        f.after += 1
        if f.after == 2:
            f.after2 = (line, seq)
        if kind != "audit.checkpoint" and f.extra is None:
            f.extra = (line, seq)
        if kind == "audit.segment_end" and f.end2 is None:
            f.end2 = (line, seq)
    elif kind == "audit.segment_end":
        assert rec is not None
        f.end = (line, rec, offset, f.digest.hexdigest())


def _file_end(f: _File, log_id: str | None, problems: _Problems, warnings: list[str]) -> None:
    """§9: every sealed segment holds what its name says, closes with audit.segment_end whose
    hash matches the bytes before it, and has nothing but a checkpoint after it; every file
    after the first starts with audit.segment_start."""
    def add(line: int, seq: int | None, what: str, check: int, file: str = "") -> None:
        problems.add(Problem(line, seq, what, file), 1, f.index, check)

    name = f.path.name
    if f.span is not None:
        if not f.rows:
            add(f.first_line, None, f"segment {name} is empty: truncated", _SPAN, name)
            return
        if f.first_seq is not None and (f.first_seq, f.last_seq) != f.span:
            assert f.head is not None
            add(f.head[0], f.first_seq, f"segment {name} is named for seq {f.span[0]}..{f.span[1]} but holds "
                f"seq {f.first_seq}..{f.last_seq}: renamed, truncated or extended", _SPAN)
    if f.head is not None:
        line, start = f.head
        if start is not None and start.get("kind") == "audit.segment_start" \
                and isinstance(start.get("fields"), dict) and start["fields"].get("log") != log_id:
            add(line, _seq(start), f"{name} starts a segment of log {start['fields'].get('log')}, this log "
                f"is {log_id}: copied from another log", _START_LOG)
        if f.index > 0 and (start or {}).get("kind") != "audit.segment_start":
            add(line, _seq(start), f"{name} does not start with audit.segment_start: its beginning was "
                "removed or it is not a segment", _START)
    if f.end is None:
        if f.span is not None:
            add(f.first_line + max(f.lines, 1) - 1, None, f"segment {name} has no audit.segment_end record: "
                "it was cut short or not sealed by the writer", _NO_END)
        return
    if f.end2 is not None:
        add(*f.end2, f"{name} holds a second audit.segment_end: segments were joined", _END2)
    if f.extra is not None or f.after > 1:
        bad = f.extra or f.after2
        assert bad is not None
        add(*bad, f"record after the audit.segment_end of {name} (only its checkpoint may follow): "
            "appended after sealing", _AFTER_END)
    end_line, end, offset, digest = f.end
    fields = end.get("fields")
    end_seq = _seq(end)
    expected = {"first": f.first_seq, "last": (end_seq or 0) - 1, "bytes": offset, "sha256": digest}
    wrong = [k for k, v in expected.items() if not isinstance(fields, dict) or fields.get(k) != v]
    if wrong:
        detail = ", ".join(f"{k} {fields.get(k) if isinstance(fields, dict) else None!r} "
                           f"(file: {expected[k]!r})" for k in wrong)
        add(end_line, end_seq, f"audit.segment_end of {name} does not match the bytes before it: {detail}: "
            "the segment was edited", _END_FIELDS)
    if f.span is None:
        warnings.append(f"{name} ends with audit.segment_end but was not yet renamed: a rotation "
                        "was interrupted; the writer finishes it when it next opens the log")


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _hash_of_line(raw: bytes, rec: dict[str, Any]) -> str:
    """``record_hash(rec)`` for a line already known to be ``canonical(rec)``, without
    serialising again: the canonical form of the record without ``hash`` is the line without
    its ``,"hash":…`` member. Members are sorted, so that member follows ``fields`` and is the
    last one of that name at the top level; after it come only ``kind``/``prev``/``seq``/
    ``time``/``v``, whose string values cannot hold an unescaped quote, so searching from the
    right finds it."""
    member = b',"hash":' + canonical(rec["hash"]) + b',"kind":'
    at = raw.rfind(member)
    if at < 0:
        return record_hash(rec)
    body = raw[:at] + raw[at + len(member) - len(b',"kind":'):]
    return hashlib.sha256(RECORD_DOMAIN + body).hexdigest()


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


def _check_log_checkpoint(line: int, rec: dict[str, Any], seq: int, log_id: str | None, expected_n: int,
                          index: _Index, trusted: dict[str, Ed25519PublicKey],
                          problems: _Problems) -> tuple[int, Checkpoint | None]:
    def bad(what: str) -> tuple[int, None]:
        problems.add(Problem(line, seq, what))
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
    if index.hash_at(cp.count - 1) != cp.head:
        return bad(f"{cp.describe()}: head {cp.head[:12]} is not the hash of record {cp.count - 1}: "
                   "records before it were altered after signing")
    why = check_signature(cp, trusted)
    if why:
        return bad(f"{cp.describe()}: {why}")
    return cp.n + 1, cp


def _check_station(parsed_items: list[Checkpoint | str], log_id: str | None, end_line: int, total: int,
                   index: _Index, log_cps: dict[int, Checkpoint], trusted: dict[str, Ed25519PublicKey],
                   problems: _Problems, warnings: list[str]) -> int:
    def add(line: int, seq: int | None, what: str) -> None:
        problems.add(Problem(line, seq, what), 2)

    parsed: list[Checkpoint] = []
    for i, item in enumerate(parsed_items):
        if isinstance(item, Checkpoint):
            parsed.append(item)
        else:
            add(end_line, None, f"station checkpoint item {i} is malformed: {item}")
    if not parsed:
        warnings.append("the station holds no checkpoints for this log: a truncated tail or a rollback "
                        "cannot be detected")
        return 0
    mine = [c for c in parsed if c.log == log_id]
    others = sorted({c.log for c in parsed if c.log != log_id})
    if others and not mine:
        add(1, 0, f"the station holds checkpoints only of other log(s) {', '.join(others)}, "
            f"none of this log {log_id}: the log was replaced")
        return 0
    if others:
        warnings.append(f"ignored station checkpoints of other log(s): {', '.join(others)}")
    signed = []
    for cp in mine:
        why = check_signature(cp, trusted)
        if why:
            add(end_line, None, f"station's {cp.describe()}: {why}")
        else:
            signed.append(cp)
    for msg in sequence_problems(signed):
        add(end_line, None, msg)
    matched = 0
    last_good = 0   # records known to match a station checkpoint
    for cp in sorted(signed, key=lambda c: (c.count, c.n)):
        own = log_cps.get(cp.n)
        if own is not None and own != cp:
            add(index.line_at(own.count, end_line), own.count,
                f"checkpoint rollback: the log's {own.describe()} differs from the station's {cp.describe()}")
        if cp.count > total:
            add(end_line, total, f"truncated tail: the station holds {cp.describe()}, the log ends after "
                f"{total} records: records {total}..{cp.count - 1} were cut off")
        elif index.hash_at(cp.count - 1) != cp.head:
            first = last_good
            add(index.line_at(first, end_line), first,
                f"log diverges from the station's {cp.describe()}: record {cp.count - 1} has another hash; "
                f"records before seq {first} match the station, so the log was rolled back or rewritten "
                f"somewhere in seq {first}..{cp.count - 1}")
        else:
            matched += 1
            last_good = max(last_good, cp.count)
    return matched
