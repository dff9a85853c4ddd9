"""Where a frame goes next: the wiring of the pixel pipeline, in one file.

    source ──(index, t, wall, image)──► downscale (capture) ──► privacy masks (policy.MaskSet)
        ──► RingBuffer (RAM only; clip frame rate)
        ──► at the analysis rate, newest frame only:
              PoseEstimator ─Detections─► Tracker ─TrackedFrame─┬─► CandidateGate (stage 1)
              ─► only while a candidate is open: Stage2 (motion energy from this and the previous
                 analysed ring frame, zoomed re-pose of the candidate's crop) ─RegionEvidence─┐
                          ([objects] enabled) ObjectStage ─HandScan─┴─► BehaviourAnalyzer ─Event─►
              PolicyGate ─Decision─► (permitted) Trigger, waiting for its post-roll
              and every 1/tamper.fps s the same frame (person boxes masked out) ──►
              TamperDetector ─TamperEvent─► on_tamper (audit, health; never a clip trigger)
        ──► once the ring holds the post-roll: build_clip ─Clip─► clip sink
            (sealing v2: build_clip also pixelates the bystanders — everyone the pose stage saw
             who is not in the event — into the clip's redacted rendition: box/clip/bystanders.py)
            (the daemon's sink seals into the spool: see appliance/box/daemon.py)

Masks are applied before the ring and before inference, so nobody inside a mask is analysed
and every clip already has the masks burned in. Stage 2 reads ring frames and returns numbers
and skeletons only: no crop or difference image outlives the call. A detection that is not permitted produces a
Decision (counted, logged, shown by `analyze`) and nothing else: no clip, no pixels.

Two drivers use :class:`Pipeline`: :func:`analyse_video` (offline, every frame in order,
deterministic) and the daemon (live capture thread + analysis loop that always takes the
newest frame and never queues behind slow inference).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.box.behaviour import BehaviourAnalyzer
from appliance.box.behaviour.stage2 import CandidateGate, RegionEvidence, Stage2
from appliance.box.capture import RingBuffer
from appliance.box.clip import build_clip
from appliance.box.clip.bystanders import SeenPersons, head_box
from appliance.box.config import AppConfig, RedactionConfig
from appliance.box.policy import MaskSet, PolicyGate, ZoneSet, load_profile
from appliance.box.pose import PoseEstimator, estimator_from_config
from appliance.box.tamper import ModeReference, TamperDetector, TamperEvent, TamperReference
from appliance.box.tracking import Tracker
from appliance.contracts.types import (
    NUM_KEYPOINTS,
    Clip,
    Decision,
    Detections,
    Event,
    Frame,
    HandScan,
    TrackedFrame,
    Trigger,
)

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counters reported by `analyze`, STATUS= and heartbeats."""

    frames: int = 0              # frames decoded from the source
    analysed_frames: int = 0     # frames that went through pose
    persons_max: int = 0
    track_ids: set[int] = field(default_factory=set)
    events: int = 0
    permitted: int = 0
    not_permitted: int = 0
    clips: int = 0
    first_t: float | None = None
    last_t: float = 0.0
    inference_s: float = 0.0     # time spent inside pose inference
    objects_s: float = 0.0       # time spent in the object stage (person crops through YOLOX)
    analysis_s: float = 0.0      # time spent in the whole analysis step (pose+track+behaviour+gate)
    stage2_frames: int = 0       # analysed frames with an open candidate (stage 2 ran)
    stage2_s: float = 0.0        # time spent in stage 2 (motion energy + zoomed re-pose)
    tamper_samples: int = 0      # frames the tamper stage looked at
    tamper_s: float = 0.0        # time spent in the tamper stage
    tamper_raised: int = 0

    @property
    def triggered(self) -> bool:
        return self.permitted > 0

    @property
    def seconds(self) -> float:
        return 0.0 if self.first_t is None else self.last_t - self.first_t


@dataclass(frozen=True)
class AnalysisResult:
    """What one analysis step produced (for `analyze --json`, overlays and tests)."""

    frame: Frame
    tracked: TrackedFrame
    decisions: tuple[Decision, ...]
    scan: HandScan | None = None     # the object stage's result, when [objects] is enabled
    tamper_events: tuple[TamperEvent, ...] = ()


class Pipeline:
    """One camera's pixel pipeline. Thread use: ``ingest`` from the capture thread,
    everything else from the analysis thread (the ring is the only shared object)."""

    def __init__(self, cfg: AppConfig, *, profile: str | None = None,
                 estimator: PoseEstimator | None = None,
                 on_decision: Callable[[Decision], None] | None = None,
                 tamper_reference: TamperReference | None = None,
                 on_tamper: Callable[[TamperEvent], None] | None = None,
                 on_tamper_reference: Callable[[str, ModeReference], None] | None = None,
                 on_trigger: Callable[[Trigger, dict[str, Any]], None] | None = None,
                 redaction: RedactionConfig | None = None):
        self.cfg = cfg
        # Set (the daemon does when it seals v2): each clip also gets its redacted rendition.
        self.redaction = redaction
        self.ring = RingBuffer(cfg.ring.seconds, cfg.ring.max_fps)
        self.pose = estimator or estimator_from_config(cfg.pose)
        self.tracker = Tracker(cfg.tracking)
        self.behaviour = BehaviourAnalyzer(cfg.behaviour, objects=cfg.objects)
        self.candidates = CandidateGate()
        self.stage2 = Stage2(self.pose, max_regions=cfg.behaviour.stage2_max_regions, zoom=cfg.behaviour.stage2_zoom)
        self._prev_analysed_t: float | None = None
        self.objects = None
        if cfg.objects.enabled:
            from appliance.box.objects import ObjectStage

            self.objects = ObjectStage(cfg.objects, models_dir=cfg.pose.models_dir or None)
        self.profile = load_profile(profile or cfg.policy.profile, cfg.policy.profiles_dir or None)
        self._masks: MaskSet | None = None
        self._gate: PolicyGate | None = None
        self._frame_size: tuple[int, int] | None = None
        self.on_decision = on_decision
        # Called at once when a permitted trigger fires (before its clip exists) with the
        # involved tracks' skeletons so far: the daemon sends the alarm message from it.
        self.on_trigger = on_trigger
        self.stats = PipelineStats()
        self.pending: list[Trigger] = []
        # Skeletons kept for clip metadata: as long as the ring, so any clip window is covered.
        self._tracked_history: collections.deque[TrackedFrame] = collections.deque(
            maxlen=max(2, math.ceil(cfg.ring.seconds * cfg.analysis.fps) + 2))
        # Everyone the pose stage saw (tracked or not), as long as the ring: the bystanders to pixelate.
        self._seen_history: collections.deque[SeenPersons] = collections.deque(maxlen=self._tracked_history.maxlen)
        self.analysis_period = 1.0 / cfg.analysis.fps
        # Without a provisioned reference the detector learns each lighting mode's own.
        self.tamper = (TamperDetector(cfg.tamper, tamper_reference, on_reference=on_tamper_reference)
                       if cfg.tamper.enabled else None)
        self.on_tamper = on_tamper
        self._wall_offset = 0.0   # wall - stream time of the newest analysed frame

    # -- geometry-dependent parts are built on the first frame -------------------------

    def _on_frame_size(self, width: int, height: int) -> None:
        if self._frame_size == (width, height):
            return
        self._frame_size = (width, height)
        self.tracker.frame_size = (width, height)
        self._masks = MaskSet.from_regions(self.cfg.privacy_masks, width, height)
        self._gate = PolicyGate(self.profile, ZoneSet.from_regions(self.cfg.zones, width, height))

    # Masks and gate depend on the frame size, so they exist from the first frame on; nothing
    # below runs before a frame was ingested.
    def _mask_set(self) -> MaskSet:
        assert self._masks is not None, "no frame ingested yet"
        return self._masks

    def _policy_gate(self) -> PolicyGate:
        assert self._gate is not None, "no frame ingested yet"
        return self._gate

    # -- capture side -------------------------------------------------------------------

    def ingest(self, index: int, t: float, wall: float, image: np.ndarray) -> np.ndarray:
        """Masks a (downscaled) frame and stores it in the ring. Returns the masked image."""
        self._on_frame_size(image.shape[1], image.shape[0])
        masked = self._mask_set().apply(image)
        self.ring.push(masked, index, t, wall)
        st = self.stats
        st.frames += 1
        if st.first_t is None:
            st.first_t = t
        st.last_t = t
        return masked

    # -- analysis side ------------------------------------------------------------------

    def analyse(self, frame: Frame) -> AnalysisResult:
        """Pose → tracking → behaviour → gate on one (masked) frame."""
        t0 = time.perf_counter()
        dets = self.pose(frame)
        t1 = time.perf_counter()
        tracked = self.tracker.update(dets)
        self._tracked_history.append(tracked)
        if self.redaction is not None:   # only a box that seals v2 needs to know who the bystanders are
            self._seen_history.append(self._seen(dets, tracked))
        self._wall_offset = frame.wall - frame.t
        st = self.stats
        evidence: tuple[RegionEvidence, ...] = ()
        candidates = self.candidates.update(tracked)
        if candidates and self.stage2.max_regions:
            t2 = time.perf_counter()
            prev = self._previous_analysed_frame()
            evidence = self.stage2.measure(frame.image, prev.image if prev else None, candidates, tracked,
                                           frame.t - prev.t if prev else None)
            st.stage2_frames += 1
            st.stage2_s += time.perf_counter() - t2
        self._prev_analysed_t = frame.t
        t3 = time.perf_counter()
        scan = self.objects.update(frame.image, tracked, self.behaviour.focus_tracks()) if self.objects else None
        st.objects_s += time.perf_counter() - t3
        events = self.behaviour.update(tracked, evidence, scan)
        decisions = tuple(self._decide(e, tracked) for e in events)
        tamper_events = self._check_tamper(frame, tracked)
        st.analysed_frames += 1
        st.persons_max = max(st.persons_max, len(tracked.persons))
        st.track_ids.update(p.track_id for p in tracked.persons)
        st.inference_s += t1 - t0
        st.analysis_s += time.perf_counter() - t0
        return AnalysisResult(frame, tracked, decisions, scan, tamper_events)

    @property
    def seen_history(self) -> tuple[SeenPersons, ...]:
        """Who the pose stage saw in each analysed frame still covered by the ring (oldest first)."""
        return tuple(self._seen_history)

    def _seen(self, dets: Detections, tracked: TrackedFrame) -> SeenPersons:
        """Tracked persons by id, plus the detections no confirmed track took (a tentative
        track's first frames, a low-score detection): bystanders are pixelated either way.
        Per person its body box and head box (from the face keypoints)."""
        boxes = np.asarray(dets.boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(dets.scores, np.float32).reshape(-1)
        keypoints = np.asarray(dets.keypoints, np.float32).reshape(len(scores), NUM_KEYPOINTS, 3)
        taken = np.array([p.box for p in tracked.persons], np.float32).reshape(-1, 4)
        loose = [np.stack([b, head_box(b, k)]) for b, s, k in zip(boxes, scores, keypoints, strict=True)
                 if s >= self.cfg.tracking.low_score and not (taken == b).all(axis=1).any()]
        return SeenPersons(tracked.t, {p.track_id: np.stack([p.box, head_box(p.box, p.keypoints)])
                                       for p in tracked.persons},
                           np.array(loose, np.float32).reshape(-1, 2, 4))

    def _check_tamper(self, frame: Frame, tracked: TrackedFrame) -> tuple[TamperEvent, ...]:
        """At tamper.fps, the analysed ring frame with its persons' boxes masked out."""
        if self.tamper is None or not self.tamper.due(frame.t):
            return ()
        t0 = time.perf_counter()
        boxes = np.array([p.box for p in tracked.persons], np.float32).reshape(-1, 4)
        events = tuple(self.tamper.update(frame.image, frame.t, frame.wall, boxes))
        st = self.stats
        st.tamper_samples += 1
        st.tamper_s += time.perf_counter() - t0
        st.tamper_raised += sum(e.state == "raised" for e in events)
        if self.on_tamper:
            for event in events:
                self.on_tamper(event)
        return events

    def _previous_analysed_frame(self) -> Frame | None:
        """The ring's copy of the previous analysed frame (motion's reference), if held."""
        if self._prev_analysed_t is None:
            return None
        # The ring keeps frames at the clip rate: the analysed frame itself, or the one just before.
        frames = self.ring.window(self._prev_analysed_t - 0.5 * self.analysis_period, self._prev_analysed_t + 1e-6)
        return frames[-1] if frames else None

    def finish(self) -> tuple[Decision, ...]:
        """End of stream: lets the behaviour stage close open episodes."""
        last = self._tracked_history[-1] if self._tracked_history else None
        return tuple(self._decide(e, last) for e in self.behaviour.flush())

    def _decide(self, event: Event, tracked: TrackedFrame | None) -> Decision:
        gate = self._policy_gate()
        decision = gate.decide(event, self._positions(tracked))
        st = self.stats
        st.events += 1
        if decision.permitted:
            st.permitted += 1
            trigger = gate.trigger_for(decision)
            if trigger is not None:
                self.pending.append(trigger)
                if self.on_trigger is not None:
                    self.on_trigger(trigger, self.alarm_skeletons(trigger))
        else:
            st.not_permitted += 1
        if self.on_decision:
            self.on_decision(decision)
        return decision

    @staticmethod
    def _positions(tracked: TrackedFrame | None) -> dict[int, tuple[float, float]]:
        """Foot point (box bottom centre) of each person, normalised 0..1, for zone checks."""
        if tracked is None:
            return {}
        w, h = tracked.frame_size
        return {p.track_id: (float((p.box[0] + p.box[2]) / 2 / w), float(p.box[3] / h))
                for p in tracked.persons}

    # -- clips --------------------------------------------------------------------------

    def due_clips(self, *, final: bool = False) -> list[Clip]:
        """Builds the clips whose post-roll is in the ring (all pending ones when ``final``)."""
        span = self.ring.time_span()
        if span is None:
            return []
        newest = span[1]
        ready = [tr for tr in self.pending if final or newest >= tr.window_end_t]
        self.pending = [tr for tr in self.pending if tr not in ready]
        clips = []
        for trigger in ready:
            with self.ring.pinned_window(trigger.window_start_t, trigger.window_end_t) as frames:
                if not frames:
                    log.warning("trigger %s: no frames left in the ring for its window", trigger.event.pattern)
                    continue
                clips.append(build_clip(trigger, frames, self._tracks_json(trigger), self.pose.model_sha256,
                                        self._mask_set(), self.cfg.ring.max_fps, redaction=self.redaction,
                                        seen=self.seen_history))
            self.stats.clips += 1
        return clips

    def _tracks_json(self, trigger: Trigger) -> dict[str, Any]:
        """Skeletons of every person inside the clip window, per track."""
        tracks: dict[str, list] = {}
        for tf in self._tracked_history:
            if trigger.window_start_t <= tf.t <= trigger.window_end_t:
                for p in tf.persons:
                    tracks.setdefault(str(p.track_id), []).append({
                        "t": round(tf.t, 3), "box": np.round(p.box, 1).tolist(),
                        "score": round(float(p.score), 3),
                        "keypoints": np.round(p.keypoints, 2).tolist(),
                    })
        return {"keypoint_order": "coco17", "event_tracks": list(trigger.event.track_ids), "tracks": tracks}

    def alarm_skeletons(self, trigger: Trigger) -> dict[str, Any]:
        """The involved tracks' skeletons from the clip window's start until now (no bystanders).

        ``{"frame_size": (w, h), "frames": [(t, [(track, box[4], keypoints[17][3]), ...]), ...],
        "wall_offset": wall - t}``
        """
        involved = set(trigger.event.track_ids)
        frames = []
        for tf in self._tracked_history:
            if tf.t >= trigger.window_start_t:
                persons = [(p.track_id, p.box.tolist(), p.keypoints.tolist())
                           for p in tf.persons if p.track_id in involved]
                if persons:
                    frames.append((tf.t, persons))
        return {"frame_size": self._frame_size or (0, 0), "frames": frames, "wall_offset": self._wall_offset}

    def drop_pixels(self) -> None:
        """Shutdown: forget pending triggers' frames and zero the ring."""
        self.ring.clear()


def analyse_video(pipeline: Pipeline, frames: Iterable[tuple[int, float, float, np.ndarray]], *,
                  on_result: Callable[[AnalysisResult], None] | None = None,
                  on_clip: Callable[[Clip], None] | None = None,
                  on_ingest: Callable[[np.ndarray], None] | None = None,
                  on_final: Callable[[tuple[Decision, ...]], None] | None = None) -> PipelineStats:
    """Offline driver: every frame in order, analysing on the analysis-rate grid.

    Deterministic for a file (times are presentation times), so `analyze` gives the same
    output on any machine, however fast.
    """
    next_analysis_t: float | None = None
    for index, t, wall, image in frames:
        masked = pipeline.ingest(index, t, wall, image)
        if on_ingest:
            on_ingest(masked)
        if next_analysis_t is None or t >= next_analysis_t - 1e-6:
            result = pipeline.analyse(Frame(index, t, wall, masked))
            if on_result:
                on_result(result)
            next_analysis_t = (t if next_analysis_t is None else next_analysis_t) + pipeline.analysis_period
            if next_analysis_t <= t:  # a gap in the stream: restart the grid
                next_analysis_t = t + pipeline.analysis_period
        for clip in pipeline.due_clips():
            if on_clip:
                on_clip(clip)
    final = pipeline.finish()
    if on_final:
        on_final(final)
    for clip in pipeline.due_clips(final=True):
        if on_clip:
            on_clip(clip)
    return pipeline.stats
