"""The device: the stages that run on the box beside the camera."""
