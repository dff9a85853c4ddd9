"""Thresholds of the behaviour detectors: the ``[behaviour]`` section of appliance.toml.

All lengths are in *torso lengths* (mid-shoulder to mid-hip of the person concerned, see
docs/behaviour.md) and all speeds in torso lengths per second, so one setting works for a
person near the camera and one far from it. The dataclass lives in :mod:`appliance.box.config`
with the other sections (so the two modules do not import each other); this module is its
home for the behaviour stage.
"""

from appliance.box.config import BehaviourConfig

__all__ = ["BehaviourConfig"]
