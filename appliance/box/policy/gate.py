"""The policy gate: Event → Decision (by the legal profile and the zones) → Trigger.

The only place in the pixel pipeline that decides whether pixels may leave RAM. Checks run
in a fixed order and the first failing one decides, so ``Decision.rule`` and
``Decision.reason`` always name one concrete rule (docs/legal-profiles.md, *Gate semantics*).

>>> gate = PolicyGate(load_profile("bw-polg-44-4"), ZoneSet.from_regions(cfg.zones))
>>> decision = gate.decide(event, {7: (0.41, 0.88), 9: (0.47, 0.90)})
>>> trigger = gate.trigger_for(decision)     # None unless permitted
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from appliance.box.policy.zones import ZoneSet
from appliance.contracts.profile import LegalProfile
from appliance.contracts.types import Decision, Event, Trigger

#: track id → foot point (x, y) normalised 0..1 of the frame (bottom centre of the person's box).
Positions = Mapping[int, tuple[float, float]]


class PolicyGate:
    def __init__(self, profile: LegalProfile, zones: ZoneSet | None = None):
        self.profile = profile
        self.zones = zones if zones is not None else ZoneSet()

    def decide(self, event: Event, positions: Positions | None = None) -> Decision:
        """Judges one event. ``positions`` are needed only when zones are configured
        (without them the gate fails closed)."""
        profile = self.profile
        name = event.pattern.value
        rule = profile.rule_for(event.pattern)

        def verdict(permitted: bool, rule_name: str, reason: str) -> Decision:
            return Decision(event, permitted, profile.ref, rule_name, reason)

        if rule is None:
            return verdict(False, "not-listed",
                           f"pattern {name} is not listed in {profile.id} (unlisted patterns never trigger)")
        if not rule.permitted:
            return verdict(False, f"patterns.{name}.permitted", f"pattern {name} not permitted by {profile.id}")
        confidence = float(event.confidence)
        if not math.isfinite(confidence) or confidence < rule.min_confidence:
            return verdict(False, f"patterns.{name}.min_confidence",
                           f"confidence {confidence:.2f} < min {rule.min_confidence:.2f}")
        duration = float(event.end_t - event.start_t)
        if not math.isfinite(duration) or duration < rule.min_duration_s:
            return verdict(False, f"patterns.{name}.min_duration_s",
                           f"duration {duration:.2f} s < min {rule.min_duration_s:.2f} s")
        in_zone, where = self._zone_check(event, positions)
        if not in_zone:
            return verdict(False, "zones", where)
        return verdict(True, f"patterns.{name}",
                       f"{name} permitted by {profile.id}: confidence {confidence:.2f} >= {rule.min_confidence:.2f}, "
                       f"duration {duration:.2f} s >= {rule.min_duration_s:.2f} s, {where}")

    def _zone_check(self, event: Event, positions: Positions | None) -> tuple[bool, str]:
        """(counts, where it happened or why it does not count)."""
        if self.zones.whole_frame:
            return True, "no zones configured (whole frame)"
        if positions is None:
            return False, "zones configured but no person positions given (fail closed)"
        outside = []
        for track_id in event.track_ids:
            pos = positions.get(track_id)
            if pos is None or len(pos) != 2 or not all(math.isfinite(float(c)) for c in pos):
                outside.append(f"track {track_id} has no position" if pos is None
                               else f"track {track_id} has an invalid position {tuple(pos)!r}")
                continue
            zone = self.zones.zone_of(*pos)
            if zone is not None:
                return True, f"track {track_id} in zone {zone!r}"
            outside.append(f"track {track_id} at ({pos[0]:.2f}, {pos[1]:.2f})")
        if not event.track_ids:
            return False, "event names no tracks, so no position inside a zone"
        return False, "no involved person inside an analysis zone: " + ", ".join(outside)

    def trigger_for(self, decision: Decision) -> Trigger | None:
        """The clip window for a permitted decision; None when it was not permitted."""
        if decision.profile != self.profile.ref:
            raise ValueError(f"decision was made under profile {decision.profile.id} "
                             f"{decision.profile.version}, not {self.profile.id} {self.profile.version}")
        if not decision.permitted:
            return None
        event = decision.event
        return Trigger(decision, event.start_t - self.profile.pre_roll_s, event.end_t + self.profile.post_roll_s)
