"""Identifiers that cross the wire or name files, checked the same way at every entry point.

Standard library only: the spool (and anything else on the box) may import it without the
crypto stack. docs/envelope.md (device_id) and docs/wire-protocol.md.
"""

from __future__ import annotations

import re

#: Device ids name directories at the station and files in the spool: they start with a letter
#: or digit, so ".", ".." and hidden names can never be one.
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A stored clip's id: the first 16 hex digits of its envelope's SHA-256.
CLIP_ID_RE = re.compile(r"[0-9a-f]{16}")
