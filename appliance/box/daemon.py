"""`appliance run`: the pixel daemon (systemd unit appliance-pixel.service).

Threads:
  capture   source.frames() → Pipeline.ingest (downscale, masks, ring); never blocks on analysis
  main      every 1/analysis.fps: the ring's newest frame → Pipeline.analyse → gate → triggers;
            due clips → seal → spool; health to systemd (STATUS=, WATCHDOG=1) and to
            <spool>/health.json (signed) for the uplink's heartbeats; hourly audit counts.

When inference is slower than the analysis rate, frames are skipped, never queued. A lost
camera never ends the daemon (the source reconnects with back-off). SIGTERM: capture stops,
clips already triggered are built from what the ring holds and sealed, then every pixel is
dropped (ring zeroed) and the process exits 0.

This process has no network access beyond the camera (systemd/appliance-pixel.service):
it writes only sealed envelopes (spool), the audit log and health.json.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

from appliance import __version__
from appliance.box.capture import FileSource, open_source
from appliance.box.config import AppConfig
from appliance.box.runtime import Pipeline, analyse_video
from appliance.box.spool.spool import Spool, SpoolFullError
from appliance.box.tamper import ModeReference, ReferenceError, TamperEvent, TamperReference, load_reference
from appliance.common.errors import ApplianceError
from appliance.common.service import (
    ServiceNotifier,
    configure_logging,
    install_signal_handlers,
)
from appliance.common.urls import redact_url
from appliance.contracts.alarm import alarm_id, build_alarm, seal_alarm, skeleton_frame
from appliance.contracts.audit.log import AuditLog
from appliance.contracts.envelope import seal_clip
from appliance.contracts.health import write_signed_health
from appliance.contracts.keys import load_hpke_public_key, load_signing_key
from appliance.contracts.layout import DeviceLayout
from appliance.contracts.types import Clip, Decision, Trigger

log = logging.getLogger("appliance.daemon")

HEALTH_PERIOD_S = 2.0
COUNTS_PERIOD_S = 3600.0


def evidence_key_path(cfg: AppConfig) -> Path | None:
    """The station's evidence public key (``seal.evidence_public_key``, which `provision import`
    sets when the bundle carries one), or None: the box then seals envelope version 1."""
    return Path(cfg.seal.evidence_public_key) if cfg.seal.evidence_public_key else None


def key_paths(cfg: AppConfig) -> tuple[Path, Path]:
    """(device signing key, station HPKE public key), defaulting to the provisioned layout."""
    layout = DeviceLayout(Path(cfg.device.state_dir))
    signing = Path(cfg.seal.signing_key) if cfg.seal.signing_key else layout.signing_key
    station = Path(cfg.seal.station_public_key) if cfg.seal.station_public_key else layout.station_hpke_public
    return signing, station


class ClipSealer:
    """The daemon's alarm and clip sink.

    On a permitted trigger (:meth:`alarm`): reserve the sequence number, sign an alarm message
    (skeletons, no pixels; docs/alarm-message.md) and put it in the spool's priority lane at
    once. When the clip's post-roll is in the ring (:meth:`__call__`): seal it under the SAME
    sequence, so the alarm and its clip share one id, ``<device>#<sequence>``.
    """

    def __init__(self, cfg: AppConfig, spool: Spool, audit: AuditLog):
        signing_path, station_path = key_paths(cfg)
        self.signing_key = load_signing_key(signing_path)
        self.station_key = load_hpke_public_key(station_path)
        evidence_path = evidence_key_path(cfg)
        self.evidence_key = load_hpke_public_key(evidence_path) if evidence_path else None
        if self.evidence_key is None:
            log.info("no evidence key in the station bundle: sealing envelope version 1 (one rendition for the "
                     "station key, bystanders not pixelated); re-import a bundle from a station with "
                     "'appliance station evidence-key init' for version 2")
        else:
            log.info("sealing envelope version 2: bystanders pixelated in the station's rendition, the full one "
                     "for evidence key %s only", self.evidence_key.fingerprint)
        self.kem = cfg.seal.kem
        self.device_id = cfg.device.id
        self.spool = spool
        self.audit = audit
        self.sealed = 0
        self.refused = 0
        self.alarms = 0
        self.model_sha256 = ""
        # id(trigger) -> reserved sequence; the trigger object lives in the pipeline until its clip.
        self._reserved: dict[int, int] = {}

    def alarm(self, trigger: Trigger, skeletons: dict) -> str:
        """Sends the alarm message for a permitted trigger; returns its alarm id."""
        decision = trigger.decision
        event = decision.event
        sequence = self.spool.next_sequence(self.device_id)
        self._reserved[id(trigger)] = sequence
        offset = skeletons.get("wall_offset", 0.0)
        frames = [skeleton_frame(round(t * 1000), round((t + offset) * 1000), persons)
                  for t, persons in skeletons["frames"]]
        body = build_alarm(
            device_id=self.device_id, sequence=sequence, created_unix_ms=int(time.time() * 1000),
            pattern=event.pattern.value, confidence=float(event.confidence), explanation=event.explanation,
            rule=decision.rule, reason=decision.reason,
            profile={"id": decision.profile.id, "version": decision.profile.version,
                     "sha256": decision.profile.sha256},
            event_window_ms=(round(event.start_t * 1000), round(event.end_t * 1000)),
            event_wall_unix_ms=(round((event.start_t + offset) * 1000), round((event.end_t + offset) * 1000)),
            tracks=event.track_ids, model_sha256=self.model_sha256,
            clip_window_ms=(round(trigger.window_start_t * 1000), round(trigger.window_end_t * 1000)),
            frame_size=tuple(skeletons["frame_size"]), frames=frames)
        message = seal_alarm(body, self.signing_key)
        aid = alarm_id(self.device_id, sequence)
        self.spool.put_alarm(message, device_id=self.device_id, sequence=sequence)
        self.alarms += 1
        self.audit.append("alarm.sent", alarm_id=aid, pattern=event.pattern.value, tracks=list(event.track_ids),
                          confidence=round(float(event.confidence), 3), profile=decision.profile.id,
                          rule=decision.rule, skeleton_frames=len(frames),
                          alarm_sha256=hashlib.sha256(message).hexdigest())
        log.info("alarm %s (%s) spooled for the station at once; its clip follows", aid, event.pattern.value)
        return aid

    def __call__(self, clip: Clip) -> None:
        decision = clip.trigger.decision
        event = decision.event
        try:
            sequence = self._reserved.pop(id(clip.trigger), None) or self.spool.next_sequence(self.device_id)
            envelope = seal_clip(clip, device_id=self.device_id, sequence=sequence, signing_key=self.signing_key,
                                 station_public_key=self.station_key, kem=self.kem,
                                 evidence_public_key=self.evidence_key)
            digest = hashlib.sha256(envelope).hexdigest()
            clip_id = alarm_id(self.device_id, sequence)
            self.spool.put(envelope, device_id=self.device_id, sequence=sequence)
        except SpoolFullError as exc:
            # Never silent: the refusal is audited by the spool, logged, and reported as health.
            self.refused += 1
            log.error("%s", exc)
            return
        self.sealed += 1
        self.audit.append("trigger.permitted", pattern=event.pattern.value,
                          window=[round(clip.trigger.window_start_t, 3), round(clip.trigger.window_end_t, 3)],
                          event=[round(event.start_t, 3), round(event.end_t, 3)], tracks=list(event.track_ids),
                          confidence=round(float(event.confidence), 3), profile=decision.profile.id,
                          profile_version=decision.profile.version, profile_sha256=decision.profile.sha256,
                          rule=decision.rule, alarm_id=clip_id, clip_id=clip_id, envelope_sha256=digest,
                          model_sha256=clip.model_sha256, frames=len(clip.frame_times),
                          envelope_version=2 if self.evidence_key else 1,
                          pixelated_tracks=list(clip.redacted.pixelated_tracks) if clip.redacted else [])
        sealed_as = "envelope v1"
        if self.evidence_key is not None and clip.redacted is not None:
            tracks = ", ".join(clip.redacted.pixelated_tracks) or "none"
            sealed_as = f"envelope v2, bystander tracks pixelated for the station: {tracks}"
        log.info("sealed the clip of alarm %s (%s, %d frames, %s) into the spool", clip_id, event.pattern.value,
                 len(clip.frame_times), sealed_as)


def run_daemon(cfg: AppConfig, *, config_path: str | None = None, max_seconds: float | None = None,
               notifier: ServiceNotifier | None = None, fast: bool = False) -> int:
    """Runs until SIGTERM/SIGINT, ``max_seconds``, or the end of a video file (not looped).

    ``fast`` (a file source only): no capture thread and no wall-clock pacing; every frame is
    read in order and analysed on the analysis-rate grid of its presentation time, as
    `appliance analyze` does, so the same frames are analysed however fast the machine is.
    """
    configure_logging("appliance-pixel")
    stop = install_signal_handlers()
    notifier = notifier or ServiceNotifier()
    state = Path(cfg.device.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    signing_path, _ = key_paths(cfg)
    audit = AuditLog.from_config(cfg, signer=load_signing_key(signing_path), origin="appliance")
    spool = Spool(cfg.spool_dir, cfg.spool.max_bytes, audit=audit)
    sealer = ClipSealer(cfg, spool, audit)

    def on_decision(d: Decision) -> None:
        e = d.event
        if not d.permitted:
            # Pattern and time only: no track ids, no positions, never pixels.
            audit.append("detection.not_permitted", pattern=e.pattern.value,
                         start=round(e.start_t, 3), end=round(e.end_t, 3),
                         profile=d.profile.id, rule=d.rule)
            log.info("%s detected at %.1f-%.1f s, not permitted by %s (%s): no clip", e.pattern.value,
                     e.start_t, e.end_t, d.profile.id, d.rule)
            return
        log.warning("ALARM %s at %.1f-%.1f s (confidence %.2f, tracks %s), permitted by %s (%s): "
                    "sealing a clip for the station", e.pattern.value, e.start_t, e.end_t, e.confidence,
                    ",".join(map(str, e.track_ids)), d.profile.id, d.rule)

    def on_tamper(event: TamperEvent) -> None:
        # Not a clip trigger: the kind, times and a few figures, never pixels.
        audit.append("camera.tamper", **event.fields())
        (log.warning if event.state == "raised" else log.info)("camera tamper %s: %s", event.state, event.kind.value)

    def on_tamper_reference(mode: str, ref: ModeReference) -> None:
        audit.append("camera.tamper_reference", mode=mode, source=ref.source, corners=len(ref.corners),
                     cells=ref.static_cells)

    notifier.extend_timeout(60)   # model load + first frame can take a while on a cold box
    def on_trigger(trigger: Trigger, skeletons: dict) -> None:
        try:
            sealer.alarm(trigger, skeletons)
        except Exception:  # the clip still follows under a fresh sequence
            log.exception("sending the alarm message failed")

    pipeline = Pipeline(cfg, on_decision=on_decision, on_trigger=on_trigger,
                        tamper_reference=_tamper_reference(cfg, audit), on_tamper=on_tamper,
                        on_tamper_reference=on_tamper_reference,
                        redaction=cfg.redaction if sealer.evidence_key is not None else None)
    sealer.model_sha256 = pipeline.pose.model_sha256
    audit.append("appliance.start", version=__version__, config=config_path or "",
                 config_sha256=_sha256_file(config_path), profile=pipeline.profile.ref.id,
                 profile_version=pipeline.profile.ref.version, profile_sha256=pipeline.profile.ref.sha256,
                 model=pipeline.pose.entry.name, model_sha256=pipeline.pose.model_sha256)
    camera_cfg = cfg.camera
    if camera_cfg is None:   # `appliance run` refuses such a config before it gets here
        raise ApplianceError("a [camera] table with source = ... is required to run the daemon")
    source = open_source(camera_cfg, cfg.ring.max_width)
    is_file = isinstance(source, FileSource)
    if fast and not is_file:
        raise ApplianceError(f"--fast needs a video file as camera.source, not {redact_url(camera_cfg.source)} "
                             "(fix: drop --fast for a live camera)")
    # camera.realtime = false is the config spelling of --fast (a file only).
    fast = fast or (is_file and not camera_cfg.realtime)
    capture_stop = threading.Event()
    capture_done = threading.Event()
    health = _HealthTicker(cfg, pipeline, source, spool, sealer, audit, notifier, capture_done)

    def capture() -> None:
        try:
            for index, t, wall, image in source.frames(capture_stop):
                pipeline.ingest(index, t, wall, image)
        except ApplianceError as exc:
            log.error("camera: %s", exc)
        except Exception:
            log.exception("capture thread failed")
        finally:
            capture_done.set()

    capture_thread = None
    if not fast:
        capture_thread = threading.Thread(target=capture, name="capture", daemon=True)
        capture_thread.start()
    pace = "as fast as possible" if fast else ("paced at its frame rate" if is_file else "live")
    notifier.ready(f"analysing {redact_url(camera_cfg.source)} at {cfg.analysis.fps:g} fps, "
                   f"profile {pipeline.profile.ref.id}")
    log.info("appliance %s running: camera %s (%s), analysing at %g fps, profile %s, model %s", __version__,
             redact_url(camera_cfg.source), pace, cfg.analysis.fps, pipeline.profile.ref.id, pipeline.pose.entry.name)

    started = time.monotonic()
    last_index = -1
    finished_stream = False
    ended_at_eof = False
    try:
        if fast:
            finished_stream = ended_at_eof = _run_fast(pipeline, source, sealer, health, stop, started,
                                                       max_seconds)
        while not fast and not stop.is_set():
            loop_t = time.monotonic()
            if max_seconds is not None and loop_t - started >= max_seconds:
                break
            frame = pipeline.ring.latest()
            if frame is not None and frame.index != last_index:
                last_index = frame.index
                result = pipeline.analyse(frame)
                health.analysed(loop_t, len(result.tracked.persons))
            elif capture_done.is_set() and not finished_stream:
                # A file source ended (a live source never ends): close open episodes.
                pipeline.finish()
                finished_stream = True
                for clip in pipeline.due_clips(final=True):
                    sealer(clip)
                if is_file:
                    ended_at_eof = True
                    break
            for clip in pipeline.due_clips():
                sealer(clip)
            health.tick()
            # Sleep until the next analysis slot; never queue behind slow inference.
            stop.wait(max(0.0, pipeline.analysis_period - (time.monotonic() - loop_t)))
    finally:
        notifier.stopping("stopping: sealing triggered clips, dropping all other pixels")
        capture_stop.set()
        if capture_thread is not None:
            capture_thread.join(timeout=10)
        if not finished_stream:
            pipeline.finish()
        for clip in pipeline.due_clips(final=True):
            try:
                sealer(clip)
            except Exception:
                log.exception("sealing a triggered clip at shutdown failed")
        pipeline.drop_pixels()
        st = pipeline.stats
        health.count_frames(final=True)
        audit.append("appliance.stop", frames=st.frames, analysed=st.analysed_frames, clips=sealer.sealed,
                     refused=sealer.refused)
        audit.checkpoint()
        audit.close()
        log.info("stopped: %d frames, %d analysed, %d clips sealed", st.frames, st.analysed_frames, sealer.sealed)
    if ended_at_eof:
        st = pipeline.stats
        wall = time.monotonic() - started
        print(f"end of file {redact_url(camera_cfg.source)}: {st.seconds:.1f} s of video in {wall:.1f} s, {st.frames} frames, "
              f"{st.analysed_frames} analysed at {cfg.analysis.fps:g} fps; {st.events} events "
              f"({st.permitted} permitted, {st.not_permitted} not permitted); {sealer.sealed} clip(s) sealed "
              f"into {cfg.spool_dir}" + (f", {sealer.refused} refused (spool full)" if sealer.refused else ""),
              flush=True)
        if sealer.sealed:
            print("next: the uplink delivers them (appliance uplink); on the station: appliance station list", flush=True)
    return 0


def _tamper_reference(cfg: AppConfig, audit: AuditLog) -> TamperReference | None:
    """The provisioned reference; without one (or with a broken one, left as it is for the
    technician) every lighting mode's reference is learnt at run time."""
    if not cfg.tamper.enabled:
        return None
    try:
        reference = load_reference(cfg.tamper_reference)
    except ReferenceError as exc:
        log.error("%s; learning the reference at run time instead", exc)
        audit.append("camera.tamper_reference", mode="all", source="unreadable", detail=str(exc)[:300])
        return None
    if reference is None:
        log.warning("no tamper reference at %s (fix: appliance provision check); learning it at run time",
                    cfg.tamper_reference)
    else:
        log.info("tamper reference: %s", reference.describe())
    return reference


def _tamper_health(pipeline: Pipeline) -> dict:
    """The health statement's optional ``tamper`` field (docs/wire-protocol.md)."""
    return {"tamper": pipeline.tamper.status()} if pipeline.tamper is not None else {}


def _run_fast(pipeline: Pipeline, source, sealer: ClipSealer, health: _HealthTicker, stop: threading.Event,
              started: float, max_seconds: float | None) -> bool:
    """Reads the whole file in order (``--fast``); True when it reached the end of the file."""
    reached_end = True

    def frames():
        nonlocal reached_end
        for item in source.frames(stop):
            yield item
            health.tick()
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                reached_end = False
                return
        if stop.is_set():
            reached_end = False

    analyse_video(pipeline, frames(), on_clip=sealer,
                  on_result=lambda res: health.analysed(time.monotonic(), len(res.tracked.persons)))
    return reached_end


class _HealthTicker:
    """Health to systemd and <spool>/health.json every HEALTH_PERIOD_S; frame counts to the audit
    log every hour and at stop (so the officer's report counts every analysed frame)."""

    def __init__(self, cfg: AppConfig, pipeline: Pipeline, source, spool: Spool, sealer: ClipSealer,
                 audit: AuditLog, notifier: ServiceNotifier, capture_done: threading.Event):
        self.cfg, self.pipeline, self.source, self.spool = cfg, pipeline, source, spool
        self.sealer, self.audit, self.notifier, self.capture_done = sealer, audit, notifier, capture_done
        self.started = time.monotonic()
        self.last_health = 0.0
        self.last_counts = self.started
        self.counted_frames = self.counted_analysed = 0
        self.recent: list[float] = []
        self.persons = 0

    def analysed(self, when: float, persons: int) -> None:
        self.recent.append(when)
        self.persons = persons

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_health >= HEALTH_PERIOD_S:
            self.last_health = now
            self.recent = [r for r in self.recent if now - r <= 10.0]
            fps = len(self.recent) / min(10.0, max(1e-3, now - self.started))
            sh = self.spool.health()
            src = self.source
            camera = "ok" if src.health.connected else ("ended" if self.capture_done.is_set() else "reconnecting")
            self.notifier.health(fps=fps, persons=self.persons, spool_depth=sh.pending, camera=camera)
            st = self.pipeline.stats
            write_signed_health(self.cfg.health_file, {
                "version": __version__, "analysis_fps": round(fps, 2), "model_sha256": self.pipeline.pose.model_sha256,
                "profile": self.pipeline.profile.ref.id, "camera": camera,
                "last_frame_wall": src.health.last_frame_wall, "uptime_s": round(now - self.started, 1),
                "frames": st.frames, "analysed_frames": st.analysed_frames,
                "alarms_sent": self.sealer.alarms, "clips_sealed": self.sealer.sealed,
                "clips_refused_spool_full": self.sealer.refused,
                "written_wall": time.time(), **_tamper_health(self.pipeline)},
                device_id=self.cfg.device.id, signing_key=self.sealer.signing_key)
            # Anchor a quiet tail too: checkpoints reach the station with the heartbeats.
            self.audit.maybe_checkpoint()
        self.notifier.ping()
        if now - self.last_counts >= COUNTS_PERIOD_S:
            self.count_frames()

    def count_frames(self, *, final: bool = False) -> None:
        """Appends `frames.hourly` for the frames since the previous one (at stop: if any)."""
        st = self.pipeline.stats
        analysed = st.analysed_frames - self.counted_analysed
        decoded = st.frames - self.counted_frames
        if final and decoded == 0:
            return
        self.audit.append("frames.hourly", analysed=analysed, discarded=decoded - analysed)
        self.counted_frames, self.counted_analysed = st.frames, st.analysed_frames
        self.last_counts = time.monotonic()


def _sha256_file(path: str | None) -> str:
    if not path:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""
