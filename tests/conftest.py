"""Shared fixtures: paths to the bundled real sample clips and a session-wide pose model."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CLIP = ROOT / "samples" / "demo_skeleton.mp4"          # Apache-2.0, 2 persons, a push
WALK_CLIP = ROOT / "samples" / "one-by-one-person-detection.mp4"  # CC BY 4.0, ordinary behaviour


@pytest.fixture(scope="session")
def pose_estimator():
    from appliance.pose import PoseEstimator
    return PoseEstimator()
