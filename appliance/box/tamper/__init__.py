"""Camera tamper detection on the box: covered, blinded, defocused, moved, frozen (docs/tamper.md).

Runs at a low rate on frames already in the RAM ring; keeps a reference of the view as ORB
features and statistics only, never an image. Raised and cleared tampers become audit records
(``camera.tamper``) and the ``tamper`` object of the signed health statement: not clip triggers.
"""

from appliance.box.tamper.detector import (
    KindState,
    SampleResult,
    TamperDetector,
    TamperEvent,
    TamperKind,
    TamperStateMachine,
)
from appliance.box.tamper.reference import (
    ModeReference,
    ReferenceError,
    TamperReference,
    learn_from_images,
    load_reference,
    save_reference,
)

__all__ = ["KindState", "ModeReference", "ReferenceError", "SampleResult", "TamperDetector", "TamperEvent",
           "TamperKind", "TamperReference", "TamperStateMachine", "learn_from_images", "load_reference",
           "save_reference"]
