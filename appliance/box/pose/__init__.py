"""Pose stage: Frame → Detections (boxes, scores, COCO-17 keypoints in frame pixels)."""

from appliance.box.pose.estimator import (
           PoseEstimator,
           estimator_from_config,
           letterbox_geometry,
)
from appliance.box.pose.manifest import ModelEntry, load_manifest, verified_model

__all__ = [
           "ModelEntry",
           "PoseEstimator",
           "estimator_from_config",
           "letterbox_geometry",
           "load_manifest",
           "verified_model",
]
