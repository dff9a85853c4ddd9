"""The one canonical JSON encoder: the bytes every hash and signature is computed over.

Sorted keys, no whitespace, no NaN or infinity. Two text encodings are fixed by the specs:

- :func:`canonical_json`: non-ASCII escaped as ``\\uXXXX``, so the bytes are ASCII. Envelope
  headers and clip metadata (docs/envelope.md), wire-protocol bodies and health statements
  (docs/wire-protocol.md), enrolment documents (docs/provisioning.md).
- :func:`canonical_json_utf8`: non-ASCII kept as UTF-8. Audit log records and checkpoints
  (docs/audit-log.md §1: the line on disk *is* the canonical form).
"""

from __future__ import annotations

import json
from typing import Any

# One encoder object each, reused: json.dumps would build a new one per call.
_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_UTF8 = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)``
    as ASCII bytes."""
    return _ASCII.encode(value).encode("ascii")


def canonical_json_utf8(value: Any) -> bytes:
    """The same with ``ensure_ascii=False``, as UTF-8 bytes."""
    return _UTF8.encode(value).encode("utf-8")
