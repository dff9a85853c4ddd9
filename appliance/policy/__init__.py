"""Legal profiles, analysis zones, privacy masks and the gate that decides what may be recorded.

See docs/legal-profiles.md.
"""

from appliance.policy.gate import PolicyGate, Positions
from appliance.policy.masks import MaskSet
from appliance.policy.profile import (
    FORMAT_VERSION,
    LegalProfile,
    PatternRule,
    available_profiles,
    load_profile,
    parse_profile,
)
from appliance.policy.zones import ZoneSet

__all__ = [
    "FORMAT_VERSION", "LegalProfile", "MaskSet", "PatternRule", "PolicyGate", "Positions", "ZoneSet",
    "available_profiles", "load_profile", "parse_profile",
]
