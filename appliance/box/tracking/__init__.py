"""Tracking stage: Detections → TrackedFrame (persons with stable track ids).

See :mod:`appliance.box.tracking.tracker` for the algorithm (ByteTrack with a keypoint cue).
"""

from appliance.box.tracking.assignment import linear_assignment
from appliance.box.tracking.tracker import Tracker, TrackState

__all__ = ["TrackState", "Tracker", "linear_assignment"]
