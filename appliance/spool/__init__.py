"""Atomic, bounded on-disk queue of sealed envelopes (see appliance/spool/spool.py)."""

from appliance.spool.spool import Spool, SpoolEntry, SpoolFullError, SpoolHealth

__all__ = ["Spool", "SpoolEntry", "SpoolFullError", "SpoolHealth"]
