"""The appliance's TOML configuration, validated strictly on load.

Every section is a frozen dataclass; every field declares its type, bounds and a fix hint.
Unknown keys are errors (a typo must not silently fall back to a default), and every error
names the key and says how to fix it, e.g.::

    config error in appliance.toml: analysis.fps = 0: must be >= 0.5 (fix: frames per
    second the pose model analyses, e.g. 10)

All errors in a file are reported together. See ``provisioning/appliance.example.toml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.resources import package_root
from appliance.common.schema import ConfigError, Polygon, build, opt, read_toml
from appliance.contracts.settings import (
    LEGAL_MAX_RETENTION_HOURS,
    AuditConfig,
    PolicyConfig,
    RetentionRule,
)

__all__ = ["LEGAL_MAX_RETENTION_HOURS", "AppConfig", "AuditConfig", "ConfigError", "PolicyConfig",
           "RetentionRule", "package_root"]


@dataclass(frozen=True)
class DeviceConfig:
    id: str = opt("dev-unprovisioned", fix="a unique device id, e.g. 'mannheim-paradeplatz-03'")
    state_dir: str = opt("/var/lib/appliance", fix="directory for keys, spool and audit log")
    description: str = opt("", fix="free text: where the camera is, what it sees")


@dataclass(frozen=True)
class CameraConfig:
    source: str = opt(fix="a video file path, an rtsp:// URL, or a device such as /dev/video0 or 0")
    reconnect_initial_s: float = opt(0.5, lo=0.05, hi=60, fix="first reconnect delay in seconds, e.g. 0.5")
    reconnect_max_s: float = opt(30.0, lo=0.1, hi=3600, fix="longest reconnect delay in seconds, e.g. 30")
    loop: bool = opt(False, fix="true to replay a video file forever (demo/soak only)")
    # A video file is paced at its own frame rate by default, as a live camera would deliver it;
    # false (or `appliance run --fast`) reads it as fast as possible, still analysed at analysis.fps
    # of its own timeline. Ignored for a live camera.
    realtime: bool = opt(True, fix="true to pace a video file at its own frame rate (default), false to "
                                   "analyse it as fast as possible (same as `appliance run --fast`)")
    password_file: str = opt("", fix="path of the 0600 file holding the camera password (the URL names the user "
                                     "only); 'appliance provision init --camera rtsp://USER:PASSWORD@HOST/...' "
                                     "writes <state_dir>/pixel/camera-password")


@dataclass(frozen=True)
class RingConfig:
    seconds: float = opt(15.0, lo=1, hi=120,
                         fix="seconds of video kept in RAM; must cover pre-roll + post-roll + latency, e.g. 15")
    max_width: int = opt(960, lo=160, hi=3840,
                         fix="frames wider than this are downscaled before they enter the ring, e.g. 960")
    max_fps: float = opt(12.5, lo=1, hi=60,
                         fix="frame rate kept in the ring (and in clips), e.g. 12.5")


@dataclass(frozen=True)
class AnalysisConfig:
    fps: float = opt(10.0, lo=0.5, hi=60, fix="frames per second the pose model analyses, e.g. 10")


@dataclass(frozen=True)
class PoseConfig:
    # INT8 is the default because `make bench` shows it 2.2x faster with keypoints that agree
    # with fp32 (mean OKS 0.99, person recall 1.0) and `make eval` gives the same accuracy.
    # Any pose model of the manifest: the YOLO11n-pose pair (AGPL-3.0) or MoveNet MultiPose
    # Lightning (Apache-2.0, at most 6 persons); tracking and behaviour read the same COCO-17
    # keypoints, scores and boxes from either (docs/models.md compares them).
    model: str = opt("yolo11n-pose-int8", fix="a pose model listed in models/manifest.toml: 'yolo11n-pose-int8', "
                                                "'yolo11n-pose' (fp32; both AGPL-3.0) or "
                                                "'movenet-multipose-lightning' (Apache-2.0)")
    models_dir: str = opt("", fix="directory holding manifest.toml and the ONNX files; empty = bundled models/")
    input_width: int = opt(0, lo=0, hi=1920, fix="model input width in pixels, a multiple of 32, e.g. 640; "
                                                 "0 = the width the model was made for (640 YOLO, 256 MoveNet)")
    threads: int = opt(2, lo=1, hi=64, fix="onnxruntime intra-op threads, e.g. the number of cores")
    # Low on purpose: fighters are tangled and blurred and get low person scores; the tracker
    # only starts tracks above tracking.high_score, lower ones can only extend a track, and the
    # fight classifier was trained at 0.1 (0.67 vs 0.72 balanced accuracy, docs/behaviour.md).
    score_threshold: float = opt(0.1, lo=0.01, hi=0.99, fix="minimum person score, e.g. 0.1")
    nms_iou: float = opt(0.5, lo=0.05, hi=0.95, fix="IoU above which overlapping persons are merged, e.g. 0.5")
    max_persons: int = opt(50, lo=1, hi=300, fix="most persons kept per frame, e.g. 50")


@dataclass(frozen=True)
class TrackingConfig:
    high_score: float = opt(0.5, lo=0.05, hi=0.99, fix="detections above this start tracks, e.g. 0.5")
    low_score: float = opt(0.15, lo=0.01, hi=0.9, fix="detections above this may only extend tracks, e.g. 0.15")
    match_iou: float = opt(0.2, lo=0.01, hi=0.95, fix="minimum IoU to associate a detection with a track, e.g. 0.2")
    max_lost_s: float = opt(1.5, lo=0.1, hi=30, fix="seconds a lost track is kept for re-association, e.g. 1.5")
    max_tracks: int = opt(200, lo=1, hi=10000, fix="hard bound on live tracks, e.g. 200")
    low_match_iou: float = opt(0.5, lo=0.01, hi=0.95,
                               fix="minimum IoU to extend a track with a low-score detection, e.g. 0.5")
    keypoint_weight: float = opt(0.5, lo=0.0, hi=1.0,
                                 fix="share of keypoint similarity (OKS) in matching; 0 = boxes only, e.g. 0.5")
    confirm_hits: int = opt(2, lo=1, hi=10, fix="detections in a row before a new track gets an id, e.g. 2")


# Thresholds of the behaviour detectors; documented in docs/behaviour.md. Defined here (not in
# appliance/box/behaviour/config.py, which re-exports it) so that config and behaviour do not
# import each other. Lengths in torso lengths, speeds in torso lengths per second.
@dataclass(frozen=True)
class BehaviourConfig:
    keypoint_min_conf: float = opt(0.3, lo=0.05, hi=0.95,
                                   fix="keypoints below this confidence are ignored, e.g. 0.3")
    history_s: float = opt(3.0, lo=1.0, hi=30.0,
                           fix="seconds of skeleton history kept per track, e.g. 3")
    max_tracks: int = opt(256, lo=1, hi=10000,
                          fix="most tracks whose history is kept (oldest dropped first), e.g. 256")

    # Strike / kick: a fast limb that ends at another person's head or body.
    strike_wrist_speed: float = opt(8.0, lo=0.5, hi=100,
                                    fix="wrist speed relative to the hips that counts as a blow, "
                                        "torso lengths per second, e.g. 8")
    strike_reach: float = opt(0.6, lo=0.05, hi=5,
                              fix="how close the wrist must come to the other's head or torso, "
                                  "torso lengths, e.g. 0.6")
    kick_ankle_speed: float = opt(8.0, lo=0.5, hi=100,
                                  fix="ankle speed relative to the hips that counts as a kick, "
                                      "torso lengths per second, e.g. 8")
    kick_reach: float = opt(0.6, lo=0.05, hi=5,
                            fix="how close the ankle must come to the other's body, torso lengths, e.g. 0.6")

    # Push: hands on the other's torso, then the other is accelerated away.
    push_reach: float = opt(0.5, lo=0.05, hi=5,
                            fix="hand-to-torso distance that counts as contact, torso lengths, e.g. 0.5")
    push_speed: float = opt(3.0, lo=0.2, hi=50,
                            fix="gain in the pushed person's speed away from the pusher, "
                                "torso lengths per second, e.g. 3")

    # Strangle: both hands at the other's neck for a while.
    strangle_reach: float = opt(0.45, lo=0.05, hi=5,
                                fix="hand-to-neck distance that counts as a grip, torso lengths, e.g. 0.45")
    strangle_min_s: float = opt(1.0, lo=0.2, hi=30,
                                fix="seconds both hands must stay at the neck, e.g. 1")

    # Fight: the window classifier (appliance/box/behaviour/fight_model.py) when a model is named,
    # else the kinematic rule below (two persons close together, moving violently, for a while).
    fight_model: str = opt("fight-stage2",
                           fix="a fight classifier listed in models/manifest.toml, e.g. 'fight-stage2'; "
                               "empty = the kinematic fight rule")
    fight_threshold: float = opt(0.0, lo=0.0, hi=0.99,
                                 fix="P(fight) at or above which a candidate region's window counts, 0..0.99, "
                                     "e.g. 0.6 (lower: more fights found and more false alarms per camera-hour, "
                                     "see the DET in docs/behaviour.md); 0 = the operating point stored in the model")
    fight_distance: float = opt(3.0, lo=0.2, hi=10,
                                fix="hip-to-hip distance within which two persons interact, torso lengths, e.g. 3")
    fight_limb_speed: float = opt(5.0, lo=0.5, hi=100,
                                  fix="limb speed (wrists, ankles, relative to the hips) that counts as "
                                      "violent motion, torso lengths per second, e.g. 5")
    fight_window_s: float = opt(1.0, lo=0.3, hi=10,
                                fix="seconds over which a fight's evidence is gathered, e.g. 1")
    fight_min_fraction: float = opt(0.3, lo=0.05, hi=1.0,
                                    fix="fraction of both persons' limb steps in the window that are violent, e.g. 0.3")

    # Stage 2 (docs/behaviour.md): pixel evidence for open fight candidates, inside the pixel process.
    stage2_max_regions: int = opt(2, lo=0, hi=8,
                                  fix="most candidate regions measured per analysed frame (motion energy, "
                                      "zoomed re-pose), e.g. 2; 0 = stage 2 off (no violent pattern can fire)")
    stage2_zoom: bool = opt(True, fix="re-run the pose model on each candidate region's crop, true or false")
    violent_min_relative_motion: float = opt(
        0.1, lo=0.0, hi=5.0,
        fix="with the stage-2 classifier, every violent pattern (fight, strike, kick, push, strangle) needs the "
            "persons' relative motion (optical flow minus the body's own translation, box heights per second; "
            "the less moving one) at least this, e.g. 0.1; 0 = not required")

    # Fall / lying.
    fall_drop: float = opt(1.0, lo=0.1, hi=10,
                           fix="how far the hips must drop, torso lengths, e.g. 1")
    fall_window_s: float = opt(1.5, lo=0.2, hi=10,
                               fix="seconds within which the drop must happen, e.g. 1.5")
    collapse_drop: float = opt(1.5, lo=0.5, hi=10,
                               fix="for a fall seen end-on (towards or away from the camera, the torso still looks "
                                   "upright): how far the hips must drop, torso lengths, e.g. 1.5")
    collapse_window_s: float = opt(1.0, lo=0.2, hi=10,
                                   fix="seconds within which such a collapse must happen (sitting down takes "
                                       "longer), e.g. 1")
    lying_angle_deg: float = opt(60.0, lo=20, hi=90,
                                 fix="torso angle from vertical above which a person counts as lying, e.g. 60")
    lying_min_s: float = opt(3.0, lo=0.5, hi=600,
                             fix="seconds a person must stay down before 'lying' fires, e.g. 3")

    # Events.
    min_confidence: float = opt(0.5, lo=0.0, hi=1.0,
                                fix="an observation below this confidence is not reported, e.g. 0.5")
    episode_gap_s: float = opt(1.5, lo=0.1, hi=60,
                               fix="seconds without evidence after which an episode ends, e.g. 1.5")
    repeat_s: float = opt(10.0, lo=1.0, hi=3600,
                          fix="an ongoing episode is reported again at most this often, seconds, e.g. 10")


#: COCO classes ``objects.classes`` may name: the hand-held ones (YOLOX-Nano knows 80). knife and
#: baseball bat are the default; the harmless ones (phone, bottle, umbrella) exist so a technician
#: can test the whole chain on site with an object at hand, never for production alarms.
OBJECT_CLASSES = ("knife", "baseball bat", "scissors", "fork", "tennis racket", "bottle",
                  "umbrella", "cell phone")


@dataclass(frozen=True)
class ObjectsConfig:
    """``[objects]``: the dangerous-object detector behind the ``weapon`` pattern.

    A weak cue (docs/behaviour.md, *Weapon*): YOLOX-Nano runs on crops around persons with a
    visible wrist, on a budget, and an object counts only near a wrist in several consecutive
    scans of the same person."""

    enabled: bool = opt(False, fix="true to run the object detector (the weapon pattern), false to save its CPU")
    model: str = opt("yolox-nano", fix="an object detector listed in models/manifest.toml, e.g. 'yolox-nano'")
    threads: int = opt(2, lo=1, hi=64, fix="onnxruntime intra-op threads for the detector, e.g. 2")
    classes: tuple[str, ...] = opt(("knife", "baseball bat"), choices=OBJECT_CLASSES,
                                   fix="COCO classes that count as dangerous, e.g. [\"knife\", \"baseball bat\"]")
    min_score: float = opt(0.3, lo=0.05, hi=0.99, fix="detector score from which an object counts, e.g. 0.3")
    wrist_distance: float = opt(0.5, lo=0.0, hi=3.0,
                                fix="largest distance from a wrist to the object's box, torso lengths, e.g. 0.5")
    min_frames: int = opt(3, lo=1, hi=50,
                          fix="consecutive scans of a person with the object near a wrist before 'weapon' fires, e.g. 3")
    max_crops: int = opt(2, lo=1, hi=16,
                         fix="person crops the detector runs on per analysed frame (each costs ~22 ms), e.g. 2")
    rescan_s: float = opt(1.0, lo=0.1, hi=60,
                          fix="seconds between scans of a person without an open candidate, e.g. 1")
    crop_margin: float = opt(0.3, lo=0.0, hi=2.0,
                             fix="how far the crop reaches beyond the person's box, share of its longer side, e.g. 0.3")


# Camera tamper detection (appliance/box/tamper/, docs/tamper.md). Brightness levels are grey
# levels 0..255 of a small thumbnail; "cells" are the 8x6 grid the sharpness reference is kept on.
@dataclass(frozen=True)
class TamperConfig:
    enabled: bool = opt(True, fix="true to watch the camera for covering, blinding, defocus, turning and "
                                  "frozen frames (false only on a bench without a camera)")
    fps: float = opt(1.0, lo=0.1, hi=5.0,
                     fix="frames per second taken from the RAM ring for the tamper checks, e.g. 1")
    persist_s: float = opt(10.0, lo=1.0, hi=600.0,
                           fix="seconds a condition must last before it is raised as a tamper, e.g. 10")
    clear_s: float = opt(5.0, lo=1.0, hi=600.0,
                         fix="seconds a condition must be gone before the tamper is cleared, e.g. 5")
    dark_brightness: float = opt(30.0, lo=1.0, hi=128.0,
                                 fix="mean grey level below which, with contrast collapsed, the view counts "
                                     "as covered or dark, e.g. 30")
    min_contrast: float = opt(8.0, lo=0.5, hi=64.0,
                              fix="grey-level standard deviation below which the contrast has collapsed, e.g. 8")
    min_entropy_bits: float = opt(2.5, lo=0.1, hi=7.0,
                                  fix="histogram entropy in bits below which the view counts as covered, e.g. 2.5")
    covered_fraction: float = opt(0.35, lo=0.1, hi=1.0,
                                  fix="share of the reference's textured cells that turned flat and lost their "
                                      "edges for a partial cover, e.g. 0.35")
    saturated_fraction: float = opt(0.6, lo=0.1, hi=1.0,
                                    fix="share of saturated pixels (grey >= 250) that counts as blinded, e.g. 0.6")
    defocus_ratio: float = opt(0.5, lo=0.05, hi=0.95,
                               fix="sharpness of the static cells relative to the reference below which the "
                                   "view counts as defocused or sprayed, e.g. 0.5")
    min_inlier_ratio: float = opt(0.05, lo=0.0, hi=0.9,
                                  fix="share of the reference's visible static corners that must still match the "
                                      "view (RANSAC homography inliers), else it counts as moved, e.g. 0.05")
    max_shift: float = opt(0.04, lo=0.005, hi=0.5,
                           fix="shift of the view against the reference, as a share of the frame width, "
                               "beyond which it counts as moved, e.g. 0.04")
    max_rotation_deg: float = opt(5.0, lo=0.5, hi=90.0,
                                  fix="rotation of the view against the reference, in degrees, beyond which it "
                                      "counts as moved, e.g. 5")
    frozen_max_diff: float = opt(0.2, lo=0.0, hi=10.0,
                                 fix="mean grey-level difference between samples at or below which frames count "
                                     "as identical (frozen stream), e.g. 0.2")
    night_max_chroma: float = opt(3.0, lo=0.0, hi=50.0,
                                  fix="mean colour saturation below which the camera is in its monochrome "
                                      "(infrared night) mode and the night reference is used, e.g. 3")
    relearn_s: float = opt(60.0, lo=5.0, hi=3600.0,
                           fix="seconds a day/night mode without a reference must run untampered before its "
                               "reference is learnt, e.g. 60")
    reference_tau_s: float = opt(3600.0, lo=60.0, hi=7 * 86400.0,
                                 fix="time constant in seconds with which the long-term sharpness reference "
                                     "follows slow changes (seasons, dusk) while untampered, e.g. 3600")
    reference: str = opt("", fix="path of the tamper reference written by `provision check`; "
                                 "empty = <state_dir>/pixel/tamper-reference.json")


@dataclass(frozen=True)
class Region:
    name: str = opt(fix="a short name for the polygon, e.g. 'entrance'")
    polygon: Polygon = opt(fix="at least three [x, y] points, normalised 0..1 of the frame width/height")


@dataclass(frozen=True)
class SealConfig:
    station_public_key: str = opt("", fix="path to the station's HPKE public key (written by 'provision import')")
    signing_key: str = opt("", fix="path to the device's Ed25519 private key (written by 'provision init')")
    kem: str = opt("MLKEM768_X25519", choices=("MLKEM768_X25519", "X25519"),
                   fix="HPKE KEM: 'MLKEM768_X25519' (post-quantum hybrid, default) or 'X25519'")
    evidence_public_key: str = opt("", fix="path to the station's evidence HPKE public key (written by 'provision "
                                           "import' when the bundle has one); set = seal envelope version 2, "
                                           "empty = version 1")


@dataclass(frozen=True)
class RedactionConfig:
    """Bystander pixelation in the clip's redacted rendition (docs/clip.md); used when the box
    seals version 2 (its station bundle names an evidence key)."""

    block_px: int = opt(16, lo=4, hi=128, fix="smallest mosaic block in pixels, e.g. 16")
    blocks_per_height: int = opt(8, lo=2, hi=64,
                                 fix="a bystander's box is at most this many mosaic blocks tall (bigger people "
                                     "get bigger blocks), e.g. 8")
    margin: float = opt(0.2, lo=0.0, hi=1.0,
                        fix="fraction of a bystander's box width/height added on every side, e.g. 0.2")
    hold_s: float = opt(1.0, lo=0.0, hi=10.0,
                        fix="seconds a bystander's box is kept across missed detections (before the first and "
                            "after the last sighting too), e.g. 1.0")


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = opt("", fix="spool directory for sealed envelopes; empty = <state_dir>/spool")
    max_bytes: int = opt(2 * 1024**3, lo=1024 * 1024, fix="spool size limit in bytes, e.g. 2147483648")


@dataclass(frozen=True)
class UplinkConfig:
    endpoint: str = opt("", fix="the station's ZeroMQ endpoint, e.g. 'tcp://station.example:7100'")
    station_curve_public: str = opt("", fix="path to the station's CURVE public key (from the station bundle)")
    curve_secret: str = opt("", fix="path to the device's CURVE secret key (written by 'provision init')")
    heartbeat_s: float = opt(30.0, lo=1, hi=3600, fix="seconds between signed heartbeats, e.g. 30")
    ack_timeout_s: float = opt(10.0, lo=0.1, hi=600, fix="seconds to wait for the station's ack, e.g. 10")
    station_signing_public: str = opt("", fix="path to the station's Ed25519 public key (signs acks); "
                                              "empty = trust CURVE alone")
    retry_initial_s: float = opt(0.5, lo=0.01, hi=600, fix="first retry delay after a timeout in seconds, e.g. 0.5")
    retry_max_s: float = opt(30.0, lo=0.1, hi=3600, fix="longest retry delay in seconds, e.g. 30")
    max_envelope_bytes: int = opt(64 * 1024**2, lo=1024 * 1024, hi=2**31,
                                  fix="largest envelope the station accepts in bytes, e.g. 67108864")


@dataclass(frozen=True)
class StationConfig:
    # Several receivers behind one CURVE key set (docs/storage.md): the uplink sends to the
    # first, and fails over to the next when one stops answering, with the same spool, acks
    # and retries; the shared database stores a re-sent envelope once.
    endpoints: tuple[str, ...] = opt((), fix="the station receivers' ZeroMQ endpoints, tried in order, e.g. "
                                             "['tcp://station-a.example:7100', 'tcp://station-b.example:7100']; "
                                             "empty = uplink.endpoint alone")


#: ``tcp://HOST:PORT`` with a DNS name, an IPv4 address or a bracketed IPv6 literal.
ENDPOINT_RE = r"tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})"


@dataclass(frozen=True)
class AppConfig:
    device: DeviceConfig = opt(fix="", factory=DeviceConfig)
    camera: CameraConfig | None = opt(None, fix="a [camera] table with at least source = ...")
    ring: RingConfig = opt(fix="", factory=RingConfig)
    analysis: AnalysisConfig = opt(fix="", factory=AnalysisConfig)
    pose: PoseConfig = opt(fix="", factory=PoseConfig)
    tracking: TrackingConfig = opt(fix="", factory=TrackingConfig)
    behaviour: BehaviourConfig = opt(fix="", factory=BehaviourConfig)
    objects: ObjectsConfig = opt(fix="", factory=ObjectsConfig)
    policy: PolicyConfig = opt(fix="", factory=PolicyConfig)
    zones: tuple[Region, ...] = opt((), fix="[[zones]] tables with name and polygon; none = whole frame")
    privacy_masks: tuple[Region, ...] = opt((), fix="[[privacy_masks]] tables with name and polygon")
    seal: SealConfig = opt(fix="", factory=SealConfig)
    redaction: RedactionConfig = opt(fix="", factory=RedactionConfig)
    spool: SpoolConfig = opt(fix="", factory=SpoolConfig)
    uplink: UplinkConfig = opt(fix="", factory=UplinkConfig)
    station: StationConfig = opt(fix="", factory=StationConfig)
    audit: AuditConfig = opt(fix="", factory=AuditConfig)
    tamper: TamperConfig = opt(fix="", factory=TamperConfig)

    @property
    def station_endpoints(self) -> tuple[str, ...]:
        """Where the uplink sends, in failover order: [station] endpoints, else uplink.endpoint."""
        if self.station.endpoints:
            return self.station.endpoints
        return (self.uplink.endpoint,) if self.uplink.endpoint else ()

    # Derived paths, so every stage agrees on where things live.
    @property
    def spool_dir(self) -> Path:
        return Path(self.spool.dir or Path(self.device.state_dir) / "spool")

    @property
    def health_file(self) -> Path:
        # In the spool directory: the one place both units may access (systemd/*.service).
        # It holds a signed health statement, never pixels.
        return self.spool_dir / "health.json"

    @property
    def audit_log(self) -> Path:
        return Path(self.audit.log or Path(self.device.state_dir) / "audit.jsonl")

    @property
    def tamper_reference(self) -> Path:
        # DeviceLayout.tamper_reference: beside the device signing key, only the pixel process
        # reads it (features and statistics, never pixels).
        return Path(self.tamper.reference or Path(self.device.state_dir) / "pixel" / "tamper-reference.json")


def _cross_checks(cfg: AppConfig, problems: list[str]) -> None:
    from appliance.contracts.identifiers import DEVICE_ID_RE

    if cfg.camera is not None and ("://" in cfg.camera.source
                                   and ":" in cfg.camera.source.split("://", 1)[1].split("@", 1)[0]
                                   and "@" in cfg.camera.source.split("://", 1)[1].split("/", 1)[0]):
        problems.append("camera.source holds a password: the config is readable by other processes and kept in "
                        "appliance.toml.bak, so it must stay free of secrets (fix: 'appliance provision init "
                        "--camera URL' moves the password into camera.password_file, or write it into a 0600 file, "
                        "name it there and drop it from the URL)")
    if not DEVICE_ID_RE.fullmatch(cfg.device.id):
        problems.append(f"device.id = {cfg.device.id!r}: must match {DEVICE_ID_RE.pattern} (it names the "
                        "device's directory at the station; fix: letters, digits, '.', '_' or '-', starting "
                        "with a letter or digit, e.g. 'mannheim-paradeplatz-03')")
    if cfg.tracking.low_score >= cfg.tracking.high_score:
        problems.append(
            f"tracking.low_score = {cfg.tracking.low_score}: must be below tracking.high_score = "
            f"{cfg.tracking.high_score} (fix: e.g. low_score = 0.15, high_score = 0.5)")
    if cfg.pose.input_width % 32 or 0 < cfg.pose.input_width < 160:
        problems.append(f"pose.input_width = {cfg.pose.input_width}: must be a multiple of 32 from 160 up, "
                        "or 0 for the model's own width (fix: e.g. 640, or 0)")
    if not cfg.objects.classes:
        problems.append("objects.classes = []: names no class, so the weapon pattern could never fire "
                        "(fix: e.g. classes = [\"knife\", \"baseball bat\"], or enabled = false)")
    if cfg.camera is not None and cfg.camera.reconnect_initial_s > cfg.camera.reconnect_max_s:
        problems.append("camera.reconnect_initial_s: must not exceed camera.reconnect_max_s "
                        "(fix: e.g. 0.5 and 30)")
    if cfg.tamper.persist_s * cfg.tamper.fps < 2:
        problems.append(f"tamper.persist_s = {cfg.tamper.persist_s:g}: must span at least 2 samples at "
                        f"tamper.fps = {cfg.tamper.fps:g} (fix: raise persist_s or fps, e.g. persist_s = 10, fps = 1)")
    _check_endpoints(cfg, problems)
    for group in ("zones", "privacy_masks"):
        names = [r.name for r in getattr(cfg, group)]
        for n in {n for n in names if names.count(n) > 1}:
            problems.append(f"{group}: name {n!r} is used twice (fix: give each polygon its own name)")


def _check_endpoints(cfg: AppConfig, problems: list[str]) -> None:
    fix = "e.g. tcp://203.0.113.5:7100 or tcp://[2001:db8::5]:7100"
    for i, endpoint in enumerate(cfg.station.endpoints):
        m = re.fullmatch(ENDPOINT_RE, endpoint)
        if not m or not 0 < int(m.group(2)) < 65536:
            problems.append(f"station.endpoints[{i}] = {endpoint!r}: not a tcp://HOST:PORT endpoint (fix: {fix})")
    listed = list(cfg.station.endpoints)
    for e in {e for e in listed if listed.count(e) > 1}:
        problems.append(f"station.endpoints: {e!r} is listed twice (fix: list each receiver once)")
    if cfg.station.endpoints and cfg.uplink.endpoint and cfg.uplink.endpoint not in cfg.station.endpoints:
        problems.append(f"uplink.endpoint = {cfg.uplink.endpoint!r} is not in station.endpoints (fix: add it to "
                        f"station.endpoints, or set uplink.endpoint = \"\" and list the receivers there)")


def parse_config(data: dict[str, Any], source: str = "<config>") -> AppConfig:
    """Validates a parsed TOML document; raises :class:`ConfigError` naming every bad key."""
    problems: list[str] = []
    cfg = build(AppConfig, data, "", problems)
    if cfg is not None:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path) -> AppConfig:
    """Reads and validates a TOML config file."""
    return parse_config(read_toml(path), str(path))


def default_config(source: str | None = None, **sections: dict[str, Any]) -> AppConfig:
    """A validated config for offline tools (``appliance analyze``): defaults plus overrides."""
    data: dict[str, Any] = {k: v for k, v in sections.items()}
    if source is not None:
        data.setdefault("camera", {})["source"] = source
    return parse_config(data, "<defaults>")


