"""Atomic, bounded on-disk queue of sealed envelopes (see appliance/box/spool/spool.py)."""

from appliance.box.spool.spool import Spool, SpoolEntry, SpoolFullError, SpoolHealth

__all__ = ["Spool", "SpoolEntry", "SpoolFullError", "SpoolHealth"]
