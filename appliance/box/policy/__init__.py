"""Legal profiles, analysis zones, privacy masks and the gate that decides what may be recorded.

See docs/legal-profiles.md.
"""

from appliance.box.policy.gate import PolicyGate, Positions
from appliance.box.policy.masks import MaskSet
from appliance.box.policy.zones import ZoneSet
from appliance.contracts.profile import (
    FORMAT_VERSION,
    LegalProfile,
    PatternRule,
    available_profiles,
    load_profile,
    parse_profile,
)

__all__ = [
    "FORMAT_VERSION", "LegalProfile", "MaskSet", "PatternRule", "PolicyGate", "Positions", "ZoneSet",
    "available_profiles", "load_profile", "parse_profile",
]
