"""Capture stage: camera/file → downscaled frames → the RAM-only RingBuffer."""

from appliance.box.capture.ring import RingBuffer
from appliance.box.capture.source import (
                                      FileSource,
                                      LiveSource,
                                      SourceHealth,
                                      classify_source,
                                      downscale,
                                      open_source,
                                      probe_video,
)
from appliance.common.urls import redact_url as redact  # the camera URL for logs (one redactor)

__all__ = [
                                      "FileSource",
                                      "LiveSource",
                                      "RingBuffer",
                                      "SourceHealth",
                                      "classify_source",
                                      "downscale",
                                      "open_source",
                                      "probe_video",
                                      "redact",
]
