"""The policy gate: same events, different profiles → different triggers; zones; windows."""

from __future__ import annotations

import math

import pytest

from appliance.box.config import Region
from appliance.box.policy import PolicyGate, ZoneSet, load_profile
from appliance.contracts.types import VIOLENT_PATTERNS, Event, Pattern

BW = load_profile("bw-polg-44-4")
HELPLESS = load_profile("helpless-person")


def event(pattern: Pattern, start: float = 10.0, end: float = 12.0, tracks=(1, 2), confidence: float = 0.9) -> Event:
    return Event(pattern, start, end, tuple(tracks), confidence, {"test": True})


#: One recorded afternoon: the same events judged by each profile.
EVENTS = (
    event(Pattern.PUSH, 3.0, 3.6, (4, 5), 0.82),
    event(Pattern.STRIKE, 20.0, 20.4, (7, 8), 0.41),     # too unsure for any profile
    event(Pattern.FALL, 31.0, 31.8, (9,), 0.93),
    event(Pattern.LYING, 32.0, 45.0, (9,), 0.88),
    event(Pattern.LYING, 46.0, 47.5, (11,), 0.90),      # down too briefly (min 3 s)
    event(Pattern.FIGHT, 50.0, 50.3, (1, 2), 0.95),     # too short for fight (min 0.5 s)
    event(Pattern.KICK, 60.0, 60.3, (3, 6), 0.71),
)


def test_same_events_different_profiles_different_triggers():
    results = {}
    for profile in (BW, HELPLESS):
        gate = PolicyGate(profile, ZoneSet())
        triggers = [gate.trigger_for(gate.decide(e)) for e in EVENTS]
        results[profile.id] = [t.event.pattern.value if t else None for t in triggers]
    assert results["bw-polg-44-4"] == ["push", None, None, None, None, None, "kick"]
    assert results["helpless-person"] == ["push", None, "fall", "lying", None, None, "kick"]


def test_fall_is_counted_but_never_triggers_under_bw_polg():
    gate = PolicyGate(BW, ZoneSet())
    for confidence in (0.0, 0.5, 0.99, 1.0):
        for pattern in (Pattern.FALL, Pattern.LYING):
            d = gate.decide(event(pattern, 0.0, 60.0, (1,), confidence))
            assert not d.permitted
            assert d.rule == f"patterns.{pattern.value}.permitted"
            assert d.reason == f"pattern {pattern.value} not permitted by bw-polg-44-4"
            assert gate.trigger_for(d) is None


def test_every_violent_pattern_triggers_under_bw_polg():
    gate = PolicyGate(BW, ZoneSet())
    for pattern in VIOLENT_PATTERNS:
        d = gate.decide(event(pattern, 10.0, 12.0, (1, 2), 0.9))
        assert d.permitted, d.reason
        assert d.rule == f"patterns.{pattern.value}"
        assert d.profile == BW.ref


def test_reasons_name_the_threshold():
    gate = PolicyGate(BW, ZoneSet())
    d = gate.decide(event(Pattern.STRIKE, confidence=0.41))
    assert (d.permitted, d.rule, d.reason) == (False, "patterns.strike.min_confidence", "confidence 0.41 < min 0.50")
    d = gate.decide(event(Pattern.FIGHT, 50.0, 50.3))
    assert (d.permitted, d.rule) == (False, "patterns.fight.min_duration_s")
    assert d.reason == "duration 0.30 s < min 0.50 s"
    d = gate.decide(event(Pattern.STRIKE, confidence=0.5))          # exactly at the floor passes
    assert d.permitted and "confidence 0.50 >= 0.50" in d.reason


def test_non_finite_confidence_or_times_never_trigger():
    gate = PolicyGate(HELPLESS, ZoneSet())
    assert not gate.decide(event(Pattern.STRIKE, confidence=math.nan)).permitted
    assert not gate.decide(event(Pattern.FIGHT, 0.0, math.nan)).permitted


def test_unlisted_pattern_is_denied(tmp_path):
    (tmp_path / "strike-only.toml").write_text(
        'format = 1\nid = "strike-only"\nversion = "1"\ntitle = "t"\njurisdiction = "x"\n'
        'purpose = "crime"\nlegal_basis = "tests"\npre_roll_s = 2\npost_roll_s = 3.5\n'
        '[patterns.strike]\npermitted = true\n', encoding="utf-8")
    gate = PolicyGate(load_profile("strike-only", tmp_path), ZoneSet())
    d = gate.decide(event(Pattern.KICK))
    assert (d.permitted, d.rule) == (False, "not-listed")
    assert d.reason == "pattern kick is not listed in strike-only (unlisted patterns never trigger)"
    trigger = gate.trigger_for(gate.decide(event(Pattern.STRIKE, 10.0, 12.0)))
    assert (trigger.window_start_t, trigger.window_end_t) == (8.0, 15.5)   # the profile's own rolls


def test_trigger_window_is_pre_and_post_roll_around_the_event():
    gate = PolicyGate(BW, ZoneSet())
    d = gate.decide(event(Pattern.PUSH, 103.25, 104.0))
    trigger = gate.trigger_for(d)
    assert trigger.decision is d and trigger.event is d.event
    assert trigger.window_start_t == pytest.approx(98.25)
    assert trigger.window_end_t == pytest.approx(109.0)


def test_trigger_for_refuses_a_decision_from_another_profile():
    decision = PolicyGate(HELPLESS, ZoneSet()).decide(event(Pattern.FALL))
    assert decision.permitted
    with pytest.raises(ValueError, match="made under profile helpless-person"):
        PolicyGate(BW, ZoneSet()).trigger_for(decision)


# -- zones ------------------------------------------------------------------------------

LEFT_HALF = Region("left", ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)))
RIGHT_BOTTOM = Region("right-bottom", ((0.7, 0.7), (1.0, 0.7), (1.0, 1.0), (0.7, 1.0)))


def test_no_zones_means_whole_frame():
    zones = ZoneSet.from_regions((), 960, 540)
    assert zones.whole_frame and zones.contains(0.99, 0.01)
    d = PolicyGate(BW, zones).decide(event(Pattern.PUSH), positions=None)
    assert d.permitted and "whole frame" in d.reason


def test_zone_membership_uses_the_foot_point():
    zones = ZoneSet.from_regions((LEFT_HALF, RIGHT_BOTTOM), 960, 540)
    assert zones.zone_of(0.25, 0.9) == "left"
    assert zones.zone_of(0.5, 0.5) == "left"              # on the border counts as inside
    assert zones.zone_of(0.8, 0.8) == "right-bottom"
    assert zones.zone_of(0.8, 0.2) is None


def test_event_counts_when_any_involved_person_is_inside_a_zone():
    gate = PolicyGate(BW, ZoneSet.from_regions((LEFT_HALF,)))
    push = event(Pattern.PUSH, tracks=(1, 2))
    inside = gate.decide(push, {1: (0.6, 0.9), 2: (0.45, 0.9)})
    assert inside.permitted and "track 2 in zone 'left'" in inside.reason
    outside = gate.decide(push, {1: (0.6, 0.9), 2: (0.9, 0.9), 3: (0.1, 0.9)})   # track 3 is a bystander
    assert (outside.permitted, outside.rule) == (False, "zones")
    assert outside.reason == ("no involved person inside an analysis zone: "
                              "track 1 at (0.60, 0.90), track 2 at (0.90, 0.90)")
    assert gate.trigger_for(outside) is None


def test_zones_fail_closed_without_positions():
    gate = PolicyGate(BW, ZoneSet.from_regions((LEFT_HALF,)))
    d = gate.decide(event(Pattern.PUSH))
    assert (d.permitted, d.rule) == (False, "zones")
    assert "fail closed" in d.reason
    d = gate.decide(event(Pattern.PUSH, tracks=(1, 2)), {})
    assert not d.permitted and "track 1 has no position" in d.reason
    # a frame size of 0 upstream gives inf/nan positions: outside, never an exception
    d = gate.decide(event(Pattern.PUSH, tracks=(1, 2)), {1: (math.inf, math.inf), 2: (math.nan, 0.5)})
    assert not d.permitted and "track 1 has an invalid position (inf, inf)" in d.reason


def test_profile_rules_are_checked_before_zones():
    gate = PolicyGate(BW, ZoneSet.from_regions((LEFT_HALF,)))
    d = gate.decide(event(Pattern.FALL, tracks=(1,)), {1: (0.1, 0.9)})
    assert d.rule == "patterns.fall.permitted"


def test_zone_polygon_needs_three_points():
    with pytest.raises(ValueError, match="zone 'bad'"):
        ZoneSet.from_regions((Region("bad", ((0.0, 0.0), (1.0, 1.0))),))
