"""Behaviour stage: TrackedFrame → Event (strike, kick, push, strangle, fight, fall, lying).

Skeletons only, no pixels. See docs/behaviour.md for what each detector measures.
"""

from appliance.box.behaviour.analyzer import BehaviourAnalyzer, Observation
from appliance.box.behaviour.config import BehaviourConfig

__all__ = ["BehaviourAnalyzer", "BehaviourConfig", "Observation"]
