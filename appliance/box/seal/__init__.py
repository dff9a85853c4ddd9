"""Sealing clips for the station: HPKE encryption + Ed25519 device signature (docs/envelope.md)."""

from appliance.contracts.envelope import (
    EnvelopeError,
    EnvelopeHeader,
    OpenedEnvelope,
    ParsedEnvelope,
    open_envelope,
    parse_envelope,
    seal_bytes,
    seal_clip,
    verify_envelope,
)

__all__ = ["EnvelopeError", "EnvelopeHeader", "OpenedEnvelope", "ParsedEnvelope", "open_envelope",
           "parse_envelope", "seal_bytes", "seal_clip", "verify_envelope"]
