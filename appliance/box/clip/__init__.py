"""Builds the masked WebM clip for a permitted trigger, in RAM only. Spec: docs/clip.md."""

from appliance.box.clip.builder import (
    CONTENT_TYPE,
    ClipError,
    build_clip,
    decode_frame_hashes,
    decode_frames,
    decoded_frame_sha256,
    find_ram_dir,
)

__all__ = ["CONTENT_TYPE", "ClipError", "build_clip", "decode_frame_hashes", "decode_frames",
           "decoded_frame_sha256", "find_ram_dir"]
