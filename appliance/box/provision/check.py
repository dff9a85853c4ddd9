"""`provision check`: the on-site self-test, a pass/fail table and an exit code.

Every check is independent: each runs in its own ``try`` and a failure (a missing key, an
unreachable camera, a broken dependency) becomes a FAIL row with the reason, never a
traceback, and never stops the other checks. Nothing here writes pixels or envelopes; the
station probe is acknowledged by the station without storing anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.box.config import AppConfig, load_config
from appliance.common.errors import ApplianceError
from appliance.common.urls import redact_url

log = logging.getLogger(__name__)

#: No clock before this can be right: the software did not exist (2026-01-01 UTC).
EARLIEST_SANE_UNIX = 1_767_225_600
#: ... nor after this (2100-01-01 UTC): a clock that far ahead is broken, not early.
LATEST_SANE_UNIX = 4_102_444_800
MAX_STATION_SKEW_S = 30.0
FPS_FRAMES = 10
#: A camera stream wider than this many times ring.max_width wastes decoding: check says so.
OVERSIZED_STREAM = 1.5
#: The tamper reference: this many frames, one of every TAMPER_EVERY decoded (~4 s at 25 fps),
#: so corners on passers-by can be told from static ones.
TAMPER_FRAMES = 10
TAMPER_EVERY = 10


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    warning: str = ""    # passed, but someone must decide something (e.g. an AGPL model is shipped)


class CheckWarning(Exception):
    """A check passed with a caveat: ``detail`` is the result, ``warning`` what to look at."""

    def __init__(self, detail: str, warning: str):
        super().__init__(warning)
        self.detail = detail
        self.warning = warning


@dataclass
class CheckContext:
    """What one check learnt that another may use (never required: each check stands alone)."""

    cfg: AppConfig
    frames: list[np.ndarray] = field(default_factory=list)
    station_unix_ms: int | None = None
    probe_sent_unix_ms: int | None = None
    probe_received_unix_ms: int | None = None


def _camera(ctx: CheckContext) -> str:
    from appliance.box.provision.preview import grab_camera

    cam = ctx.cfg.camera
    if cam is None:
        raise ApplianceError("no [camera] in the config (fix: [camera] source = ...)")
    t0 = time.monotonic()
    sample = grab_camera(cam, ctx.cfg.ring.max_width, FPS_FRAMES, timeout_s=10.0)
    ctx.frames = sample.frames
    h, w = ctx.frames[0].shape[:2]
    detail = (f"{redact_url(cam.source)}: {len(ctx.frames)} frames decoded, {w}x{h}, "
              f"{time.monotonic() - t0:.1f} s")
    native_w, native_h = sample.native_size
    if native_w > OVERSIZED_STREAM * ctx.cfg.ring.max_width:
        # Every pixel above ring.max_width is decoded and then thrown away: on the 2-core box a
        # 1080p stream costs 57 % on top of inference, a 768x432 one 13 % (make bench).
        detail += (f"; note: the camera sends {native_w}x{native_h} and the ring keeps {w} wide - choose "
                   f"the camera's second stream at <= {ctx.cfg.ring.max_width} px wide to save CPU")
    return detail


def _fps(ctx: CheckContext) -> str:
    from appliance.box.pose.estimator import estimator_from_config

    est = estimator_from_config(ctx.cfg.pose)
    frames = ctx.frames or [np.full((540, 960, 3), 114, np.uint8)]  # camera down: a grey frame
    est(frames[0])  # warm-up (first run allocates)
    n = FPS_FRAMES
    t0 = time.perf_counter()
    for i in range(n):
        est(frames[i % len(frames)])
    fps = n / (time.perf_counter() - t0)
    source = "camera frames" if ctx.frames else "a grey frame (camera unavailable)"
    need = ctx.cfg.analysis.fps
    text = f"{fps:.1f} fps on {source} (analysis.fps = {need:g})"
    if fps < need:
        raise ApplianceError(text + ": too slow (fix: lower analysis.fps or pose.input_width, or raise pose.threads)")
    return text


def _model(ctx: CheckContext) -> str:
    """Every model this box runs matches its manifest hash; a warning names the AGPL ones."""
    from appliance.box.pose.manifest import verified_model

    cfg = ctx.cfg
    models_dir = cfg.pose.models_dir or None
    wanted = [("pose.model", cfg.pose.model)]
    if cfg.behaviour.fight_model:
        wanted.append(("behaviour.fight_model", cfg.behaviour.fight_model))
    if cfg.objects.enabled:
        wanted.append(("objects.model", cfg.objects.model))
    parts, agpl = [], []
    for key, name in wanted:
        entry, blob = verified_model(name, models_dir, purpose=key)
        parts.append(f"{entry.name}: sha256 {entry.sha256[:16]}… matches the manifest ({len(blob) / 1e6:.1f} MB)")
        if entry.agpl:
            agpl.append(f"{key} = {entry.name!r} ({entry.licence})")
    detail = "; ".join(parts)
    if agpl:
        raise CheckWarning(detail, "this box runs an AGPL-3.0 model: " + ", ".join(agpl) + "; shipping it "
                           "obliges the operator to offer the source of the whole appliance under the AGPL "
                           "(fix, if that is not acceptable: pose.model = 'movenet-multipose-lightning', "
                           "Apache-2.0; see `appliance models list` and docs/models.md)")
    return detail


def _profile_zones(ctx: CheckContext) -> str:
    from appliance.box.policy.masks import MaskSet
    from appliance.box.policy.zones import ZoneSet
    from appliance.box.provision.enrolment import allowed_profiles
    from appliance.box.provision.preview import zones_under_masks
    from appliance.contracts.profile import load_profile

    cfg = ctx.cfg
    profile = load_profile(cfg.policy.profile, cfg.policy.profiles_dir or None)
    allowed = allowed_profiles(cfg)
    if allowed is None:
        raise ApplianceError(f"profile {profile.ref.id} loads, but no station bundle is imported "
                             "(fix: appliance provision import BUNDLE)")
    if cfg.policy.profile not in allowed:
        raise ApplianceError(f"profile {cfg.policy.profile!r} is not allowed by the station "
                             f"(allowed: {', '.join(allowed)}; fix: set policy.profile)")
    h, w = ctx.frames[0].shape[:2] if ctx.frames else (540, 960)
    masked = MaskSet.from_regions(cfg.privacy_masks, w, h).masked_pixels(w, h)
    if masked.all():
        raise ApplianceError("the privacy masks cover the whole frame: nothing can be analysed")
    ZoneSet.from_regions(cfg.zones, w, h)
    for zone in cfg.zones:
        area = _polygon_area(zone.polygon)
        if area < 1e-4:
            raise ApplianceError(f"zone {zone.name!r} has no area (fix: check its polygon points)")
    hidden = zones_under_masks(cfg, w, h)
    if hidden:
        raise ApplianceError(f"zone {hidden[0]!r} lies entirely under privacy masks: it can never trigger "
                             "(fix: move the zone or shrink the masks; `provision preview` shows both)")
    zones = ", ".join(z.name for z in cfg.zones) or "whole frame"
    return (f"{profile.ref.id} v{profile.ref.version} (allowed by the station); zones: {zones}; "
            f"{len(cfg.privacy_masks)} masks cover {masked.mean():.0%} of the frame")


def _polygon_area(points) -> float:
    p = np.asarray(points, float)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _tamper_reference(ctx: CheckContext) -> str:
    """Records the camera's tamper reference for the current lighting mode (features, no image)."""
    from appliance.box.policy.masks import MaskSet
    from appliance.box.pose.estimator import estimator_from_config
    from appliance.box.provision.files import layout_for, record
    from appliance.box.provision.preview import grab_camera
    from appliance.box.tamper import TamperReference, learn_from_images, load_reference, save_reference
    from appliance.box.tamper.reference import ReferenceError

    cfg = ctx.cfg
    if not cfg.tamper.enabled:
        return "tamper detection is off ([tamper] enabled = false): no reference recorded"
    if cfg.camera is None:
        raise ApplianceError("no [camera] in the config (fix: [camera] source = ...)")
    frames = grab_camera(cfg.camera, cfg.ring.max_width, TAMPER_FRAMES, timeout_s=20.0, every=TAMPER_EVERY).frames
    h, w = frames[0].shape[:2]
    masks = MaskSet.from_regions(cfg.privacy_masks, w, h)
    images = [masks.apply(f) for f in frames]      # the detector sees masked ring frames too
    estimator = estimator_from_config(cfg.pose)
    boxes = []
    for image in images:
        dets = estimator(image)
        boxes.append(dets.boxes[dets.scores >= cfg.tracking.high_score])
    mode, ref = learn_from_images(images, boxes, source="provision", night_max_chroma=cfg.tamper.night_max_chroma)
    path = cfg.tamper_reference
    try:
        reference = load_reference(path) or TamperReference({})
    except ReferenceError:
        reference = TamperReference({})   # unreadable: replaced by this good one
    reference = reference.with_mode(mode, ref)
    save_reference(path, reference)
    layout = layout_for(cfg)
    if path.parent == layout.pixel_dir:
        layout.hand_over()
    record(layout, "tamper_reference", mode=mode, path=str(path), corners=len(ref.corners), cells=ref.static_cells)
    other = "night" if mode == "day" else "day"
    hint = ("" if other in reference.modes else
            f"; run the check again in {other} conditions to record that one too (else it is learnt after "
            f"{cfg.tamper.relearn_s:g} s untampered)")
    return (f"{mode} reference recorded in {path}: {len(ref.corners)} static corners, {ref.static_cells} of "
            f"{ref.cells.size} cells, from {len(images)} frames (features and statistics, no image){hint}")


def _keys(ctx: CheckContext) -> str:
    from appliance.box.provision.files import layout_for
    from appliance.contracts.curve import (
        curve_fingerprint,
        load_curve_keypair,
        load_curve_public,
    )
    from appliance.contracts.keys import (
        load_hpke_public_key,
        load_signing_key,
        public_key_fingerprint,
    )

    cfg = ctx.cfg
    layout = layout_for(cfg)
    signing_path = Path(cfg.seal.signing_key or layout.signing_key)
    curve_path = Path(cfg.uplink.curve_secret or layout.curve_secret)
    for path in (signing_path, curve_path):
        if path.exists() and path.stat().st_mode & 0o077:
            raise ApplianceError(f"{path}: private key readable by others (fix: chmod 600 {path})")
    key = load_signing_key(signing_path)
    public, _secret = load_curve_keypair(curve_path)
    if not cfg.seal.station_public_key or not cfg.uplink.station_curve_public:
        raise ApplianceError("station keys not configured (fix: appliance provision import BUNDLE)")
    hpke = load_hpke_public_key(cfg.seal.station_public_key)
    if hpke.kem != cfg.seal.kem:
        raise ApplianceError(f"seal.kem = {cfg.seal.kem!r} but the station key is {hpke.kem}")
    load_curve_public(cfg.uplink.station_curve_public)
    sealing = "envelope v1 (no evidence key)"
    if cfg.seal.evidence_public_key:
        evidence = load_hpke_public_key(cfg.seal.evidence_public_key)
        if evidence.fingerprint == hpke.fingerprint:
            raise ApplianceError("seal.evidence_public_key is the station HPKE key: the full video would be "
                                 "readable with the station key (fix: import a bundle from a station with "
                                 "'appliance station evidence-key init')")
        sealing = f"envelope v2, evidence key {evidence.fingerprint}"
    return (f"device signing {public_key_fingerprint(key)}, CURVE {curve_fingerprint(public)}; "
            f"station HPKE {hpke.fingerprint} ({hpke.kem}); {sealing}")


def _station(ctx: CheckContext) -> str:
    from appliance.box.provision.enrolment import device_signing_key, station_signing_public
    from appliance.box.uplink.client import ClientConfig, UplinkClient, probe
    from appliance.contracts.curve import load_curve_keypair, load_curve_public
    from appliance.contracts.protocol import now_ms

    cfg = ctx.cfg
    if not cfg.station_endpoints:
        raise ApplianceError("uplink.endpoint is empty (fix: appliance provision import BUNDLE)")
    public, secret = load_curve_keypair(cfg.uplink.curve_secret)
    results = []
    for endpoint in cfg.station_endpoints:   # every receiver the uplink may fail over to
        client = UplinkClient(ClientConfig(
            endpoint=endpoint, curve_public=public, curve_secret=secret,
            station_curve_public=load_curve_public(cfg.uplink.station_curve_public),
            station_signing_public=station_signing_public(cfg),
            ack_timeout_s=min(cfg.uplink.ack_timeout_s, 10.0)))
        try:
            sent = now_ms()
            try:
                reply = probe(client, cfg.device.id, device_signing_key(cfg))
            except ApplianceError as exc:
                hint = ("CURVE handshake failed: is this device added at the station with these keys?"
                        if client.handshake_failures else _station_hint(endpoint))
                raise ApplianceError(f"{endpoint}: {exc}; {hint}") from None
            received = now_ms()
        finally:
            client.close()
        if not reply.ok or reply.status != "probe-ok":
            raise ApplianceError(f"{endpoint} refused the probe: {reply.reason or reply.status}")
        station_ms = reply.body.get("station_unix_ms")
        if isinstance(station_ms, int) and ctx.station_unix_ms is None:
            ctx.station_unix_ms, ctx.probe_sent_unix_ms, ctx.probe_received_unix_ms = station_ms, sent, received
        results.append(f"{endpoint}: CURVE handshake ok, signed probe acknowledged (not stored), "
                       f"round trip {received - sent} ms")
    return "; ".join(results)


def _station_hint(endpoint: str, timeout_s: float = 3.0) -> str:
    """Why a probe got no reply, narrowed down by a plain TCP connection to the endpoint."""
    import socket

    from appliance.contracts.protocol import endpoint_host

    host = endpoint_host(endpoint).strip("[]")
    port = int(endpoint.rsplit(":", 1)[1])
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return (f"nothing listens on {host} port {port}: is the station receiver running "
                "(on the station: systemctl status appliance-station)? is the port in uplink.endpoint right?")
    except TimeoutError:
        return (f"no answer from {host} port {port} within {timeout_s:g} s: is a firewall in the way "
                f"(TCP {port} from this box to the station)? is the address in uplink.endpoint right?")
    except OSError as exc:
        return (f"cannot reach {host} port {port} ({exc.strerror or exc}): is the address in uplink.endpoint "
                "right (it comes from the station bundle)? is the network up?")
    return ("the station's port answers but the receiver did not reply to this device: is this device "
            "added at the station (appliance station devices list) with its current keys? after "
            "`provision init --force` it must be enrolled again (station devices add --replace)")


def _clock(ctx: CheckContext) -> str:
    now = time.time()
    if not EARLIEST_SANE_UNIX <= now <= LATEST_SANE_UNIX:
        raise ApplianceError(f"wall clock reads {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC: "
                             "not plausible (fix: enable NTP, e.g. timedatectl set-ntp true)")
    text = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC"
    if (ctx.station_unix_ms is not None and ctx.probe_sent_unix_ms is not None
            and ctx.probe_received_unix_ms is not None):
        midpoint = (ctx.probe_sent_unix_ms + ctx.probe_received_unix_ms) / 2
        skew = (midpoint - ctx.station_unix_ms) / 1000
        text += f", {skew:+.1f} s from the station"
        if abs(skew) > MAX_STATION_SKEW_S:
            raise ApplianceError(text + f" (more than {MAX_STATION_SKEW_S:g} s; fix: enable NTP)")
    else:
        text += " (station time not available)"
    return text


def _spool(ctx: CheckContext) -> str:
    cfg = ctx.cfg
    spool = cfg.spool_dir
    probe_dir = spool
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    used = sum(p.stat().st_size for p in spool.rglob("*.env")) if spool.is_dir() else 0
    free = shutil.disk_usage(probe_dir).free
    need = cfg.spool.max_bytes - used
    text = f"{spool}: {free / 1e9:.2f} GB free, spool holds {used / 1e6:.1f} MB of {cfg.spool.max_bytes / 1e9:.2f} GB"
    if not spool.is_dir():
        raise ApplianceError(f"{spool} does not exist (fix: appliance provision init)")
    if not os.access(spool, os.W_OK):
        raise ApplianceError(f"{spool} is not writable")
    if free < need:
        raise ApplianceError(text + " (fix: free disk space or lower spool.max_bytes)")
    return text


CHECKS: tuple[tuple[str, Callable[[CheckContext], str]], ...] = (
    ("camera", _camera),
    ("analysis fps", _fps),
    ("model hash", _model),
    ("profile and zones", _profile_zones),
    ("tamper reference", _tamper_reference),
    ("keys", _keys),
    ("station", _station),
    ("clock", _clock),
    ("spool space", _spool),
)


#: What the technician waits for, shown before the slow checks start.
PROGRESS = {"camera": "opening the camera and decoding 10 frames (up to 10 s)",
            "analysis fps": "running the pose model on those frames",
            "station": "probing the station (up to 10 s for a reply)"}


def run_checks(config_path: str | Path, progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Runs every check; a config that does not load fails them all with the reason.
    ``progress`` is told each check's name before it runs (the CLI shows it on stderr)."""
    try:
        cfg = load_config(config_path)
    except ApplianceError as exc:
        return [CheckResult("config", False, str(exc))] + [
            CheckResult(name, False, "not run: the config does not load") for name, _ in CHECKS]
    ctx = CheckContext(cfg)
    results = [CheckResult("config", True, f"{config_path}: valid")]
    for name, check in CHECKS:
        if progress is not None:
            progress(name)
        try:
            results.append(CheckResult(name, True, check(ctx)))
        except CheckWarning as warn:
            results.append(CheckResult(name, True, warn.detail, warn.warning))
        except (ApplianceError, OSError, ValueError) as exc:
            results.append(CheckResult(name, False, _one_line(exc)))
        except Exception as exc:  # a check must never abort the table
            log.debug("check %s crashed", name, exc_info=True)
            results.append(CheckResult(name, False, f"{type(exc).__name__}: {_one_line(exc)}"))
    return results


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def format_table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  result  detail"]
    for r in results:
        # A warning stays on its row (one line per check), after the result it qualifies.
        warning = f"; WARNING: {r.warning}" if r.warning else ""
        lines.append(f"{r.name:<{width}}  {'PASS' if r.ok else 'FAIL':<6}  {r.detail}{warning}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
