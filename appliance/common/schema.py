"""The one TOML validation mechanism: frozen dataclasses whose fields declare type, bounds and a fix.

Used for the device config (appliance/box/config.py), the station's settings
(appliance/contracts/settings.py), legal profiles (appliance/contracts/profile.py) and the model
manifest (appliance/box/pose/manifest.py). Every section is a frozen dataclass; every field is declared with
:func:`opt`. Unknown keys are errors (a typo must not silently fall back to a default), and
every error names the key and says how to fix it, e.g.::

    config error in appliance.toml: analysis.fps = 0: must be >= 0.5 (fix: frames per
    second the pose model analyses, e.g. 10)

All errors in a document are collected and reported together in one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from enum import Enum
from pathlib import Path
from typing import Any

from appliance.common.errors import ApplianceError


class ConfigError(ApplianceError, ValueError):
    """Raised with one line per problem found; ``problems`` holds them separately."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(
            f"config error in {source}: " + problems[0] if len(problems) == 1
            else f"{len(problems)} config errors in {source}:\n  " + "\n  ".join(problems)
        )


def opt(default: Any = dataclasses.MISSING, *, fix: str, lo: float | None = None,
        hi: float | None = None, choices: tuple | None = None, factory: Any = None,
        span: bool = False, nonempty: bool = False, max_len: int | None = None,
        key_noun: str = "key") -> Any:
    """Declares a config field with its fix hint and bounds.

    ``lo``/``hi`` bound a number: by default "must be >= lo" / "must be <= hi" on the converted
    value; with ``span`` "must be within lo..hi" on the value as written, non-finite refused.
    ``choices`` lists the allowed values. ``nonempty`` refuses a blank string (and strips it);
    ``max_len`` bounds its length. For a ``Mapping[Enum, Section]`` field, ``nonempty`` asks for
    at least one table and ``key_noun`` names what a key is ("unknown pattern 'x'").
    """
    meta = {"fix": fix, "lo": lo, "hi": hi, "choices": choices, "span": span, "nonempty": nonempty,
            "max_len": max_len, "key_noun": key_noun}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


Polygon = tuple[tuple[float, float], ...]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Reads a TOML file; an unreadable file or bad TOML is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc} (fix: check quotes, brackets and '=' signs)"]) from None


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _check_polygon(value: Any, where: str, problems: list[str], fix: str) -> Polygon | None:
    if not isinstance(value, list) or len(value) < 3:
        problems.append(f"{where}: must be a list of at least 3 [x, y] points (fix: {fix})")
        return None
    points = []
    for i, p in enumerate(value):
        if (not isinstance(p, list) or len(p) != 2
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p)):
            problems.append(f"{where}[{i}] = {p!r}: must be [x, y] with two numbers (fix: {fix})")
            return None
        x, y = float(p[0]), float(p[1])
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            problems.append(f"{where}[{i}] = {p!r}: coordinates must lie in 0..1 (fix: {fix})")
            return None
        points.append((x, y))
    return tuple(points)


def build(cls: type, table: Any, where: str, problems: list[str], *, skip: frozenset[str] = frozenset()) -> Any:
    """``cls(**table)`` after checking every key against ``cls``'s declared fields.

    Problems are appended to ``problems`` (prefixed with ``where``); returns None when the
    section could not be built. Keys in ``skip`` are neither validated nor refused.
    """
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table, got {type(table).__name__} (fix: write it as [{where}] "
                        "with its keys)")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields and key not in skip:
            allowed = ", ".join(sorted(fields))
            name = f"{where}.{key}" if where else key
            problems.append(f"{name}: unknown key (fix: remove it or use one of: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        fix = f.metadata.get("fix", "")
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key}: missing (fix: {fix})")
            continue
        value = _convert(hints[name], table[name], key, fix, f.metadata, problems)
        if value is not None:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # a required key was missing; already reported


def _convert(tp: Any, value: Any, key: str, fix: str, meta: Any, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):  # X | None
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return _convert(inner, value, key, fix, meta, problems)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, key, problems)
    if tp == Polygon:
        return _check_polygon(value, key, problems, fix)
    if origin is tuple and typing.get_args(tp)[-1] is Ellipsis:  # tuple[Region, ...] or tuple[str, ...]
        item_tp = typing.get_args(tp)[0]
        if not (isinstance(item_tp, type) and dataclasses.is_dataclass(item_tp)):
            if not isinstance(value, list):
                problems.append(f"{key} = {value!r}: must be an array, e.g. [\"a\", \"b\"] (fix: {fix})")
                return None
            items = [_convert(item_tp, v, f"{key}[{i}]", fix, meta, problems) for i, v in enumerate(value)]
            return tuple(items) if all(i is not None for i in items) else None
        if not isinstance(value, list):
            problems.append(f"{key}: must be an array of tables, e.g. [[{key}]] (fix: {fix})")
            return None
        items = [build(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(i for i in items if i is not None)
    if origin in (dict, Mapping):   # Mapping[SomeEnum, Section]: [key.<name>] tables
        return _convert_tables(tp, value, key, fix, meta, problems)
    if tp is str:
        return _convert_str(value, key, fix, meta, problems)
    written = value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        problems.append(f"{key} = {written!r}: must be {_type_name(tp)} (fix: {fix})")
        return None
    if tp in (int, float) and not _in_range(value, key, written, fix, meta, problems):
        return None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        problems.append(f"{key} = {value!r}: must be one of {', '.join(map(repr, choices))} (fix: {fix})")
        return None
    return value


def _in_range(value: float, key: str, written: Any, fix: str, meta: Any, problems: list[str]) -> bool:
    lo, hi = meta.get("lo"), meta.get("hi")
    if meta.get("span"):
        if not math.isfinite(value) or not (lo <= value <= hi):
            problems.append(f"{key} = {written!r}: must be within {lo:g}..{hi:g} (fix: {fix})")
            return False
        return True
    if not math.isfinite(value):
        problems.append(f"{key} = {value!r}: must be a finite number (fix: {fix})")
        return False
    if lo is not None and value < lo:
        problems.append(f"{key} = {value!r}: must be >= {lo} (fix: {fix})")
        return False
    if hi is not None and value > hi:
        problems.append(f"{key} = {value!r}: must be <= {hi} (fix: {fix})")
        return False
    return True


def _convert_str(value: Any, key: str, fix: str, meta: Any, problems: list[str]) -> str | None:
    nonempty, max_len, choices = meta.get("nonempty"), meta.get("max_len"), meta.get("choices")
    if not isinstance(value, str) or (nonempty and not value.strip()):
        problems.append(f"{key} = {value!r}: must be {'a non-empty string' if nonempty else 'a string'} (fix: {fix})")
        return None
    if max_len is not None and len(value) > max_len:
        problems.append(f"{key}: longer than {max_len} characters (fix: shorten it)")
        return None
    if choices is not None and value not in choices:
        problems.append(f"{key} = {value!r}: must be one of {', '.join(map(repr, choices))} (fix: {fix})")
        return None
    return value.strip() if nonempty else value


def _convert_tables(tp: Any, value: Any, key: str, fix: str, meta: Any, problems: list[str]) -> Any:
    key_tp, section_tp = typing.get_args(tp)
    if not isinstance(value, dict) or (meta.get("nonempty") and not value):
        problems.append(f"{key}: must hold at least one [{key}.<name>] table (fix: {fix})")
        return None
    out = {}
    for name, table in value.items():
        where = f"{key}.{name}"
        try:
            k = key_tp(name)
        except ValueError:
            known = ", ".join(str(m.value) for m in key_tp) if isinstance(key_tp, type) and issubclass(key_tp, Enum) else ""
            problems.append(f"{where}: unknown {meta.get('key_noun', 'key')} {name!r} (fix: use one of: {known})")
            continue
        section = build(section_tp, table, where, problems)
        if section is not None:
            out[k] = section
    return out
