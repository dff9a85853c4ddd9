"""Object stage: dangerous objects near a person's wrist (the ``weapon`` pattern's evidence).

YOLOX-Nano (Apache-2.0) on person crops, on a budget; only labels, scores and boxes leave it.
"""

from appliance.box.objects.detector import COCO_CLASSES, ObjectDetections, ObjectDetector
from appliance.box.objects.stage import ObjectStage

__all__ = ["COCO_CLASSES", "ObjectDetections", "ObjectDetector", "ObjectStage"]
