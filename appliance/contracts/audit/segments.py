"""Sealed segments of an audit log (docs/audit-log.md §9).

The active file is ``<dir>/<name>`` (e.g. ``audit.jsonl``); a sealed segment is
``<dir>/<name>.<first>-<last>`` with the first and last ``seq`` it holds as 12 zero-padded
digits, so the names sort in log order. The logical log is the concatenation of the sealed
segments in order, then the active file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEGMENT_DIGITS = 12


@dataclass(frozen=True)
class Segment:
    first: int
    last: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def segment_path(active: str | Path, first: int, last: int) -> Path:
    """Where the active file is renamed to when it is sealed holding ``first..last``."""
    active = Path(active)
    return active.with_name(f"{active.name}.{first:0{SEGMENT_DIGITS}d}-{last:0{SEGMENT_DIGITS}d}")


def _pattern(active: Path) -> re.Pattern[str]:
    return re.compile(re.escape(active.name) + rf"\.(\d{{{SEGMENT_DIGITS}}})-(\d{{{SEGMENT_DIGITS}}})")


def parse_segment_name(active: str | Path, name: str) -> tuple[int, int] | None:
    """(first, last) if ``name`` is a sealed-segment name of the log ``active``, else None."""
    m = _pattern(Path(active)).fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def list_segments(active: str | Path) -> list[Segment]:
    """The sealed segments beside ``active``, in log order (by first, then last seq)."""
    active = Path(active)
    try:
        names = [p.name for p in active.parent.iterdir()]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        span = parse_segment_name(active, name)
        if span is not None:
            found.append(Segment(span[0], span[1], active.parent / name))
    return sorted(found, key=lambda s: (s.first, s.last))


def stray_files(active: str | Path) -> list[Path]:
    """Files named like ``<name>.*`` beside the log that are not segment names (a renamed
    segment, a backup copy): verify names them, because it does not read them."""
    active = Path(active)
    try:
        entries = sorted(active.parent.iterdir())
    except FileNotFoundError:
        return []
    prefix = active.name + "."
    return [p for p in entries if p.name.startswith(prefix) and parse_segment_name(active, p.name) is None
            and p.is_file()]


def log_files(active: str | Path) -> list[Path]:
    """Every file of the logical log in order: the sealed segments, then the active file
    (when it exists; after a crash right after a rename it may not yet)."""
    active = Path(active)
    files = [s.path for s in list_segments(active)]
    if active.is_file():
        files.append(active)
    return files
