"""ByteTrack-style multi-person tracker: Detections → TrackedFrame with stable track ids.

Per analysed frame (ByteTrack, Zhang et al., ECCV 2022, with keypoints as an extra cue):

1. Every track's box is predicted to the frame's time by a constant-velocity Kalman
   filter (:mod:`appliance.box.tracking.kalman`) using the real time step, so skipped frames
   are handled.
2. High-score detections are matched to all confirmed tracks, seen and lost, by optimal
   assignment on a similarity that mixes box IoU with keypoint similarity (OKS of the
   track's last skeleton moved with its predicted box). Two grappling persons have nearly
   the same box, but their skeletons still differ; that is what keeps their ids apart.
3. Confirmed tracks still unmatched are offered the low-score detections (IoU only: a
   low score usually means an occluded person whose keypoints are unreliable).
4. Tentative tracks are matched to the remaining high-score detections; a tentative track
   gets its id after ``confirm_hits`` detections in a row (at once on the first frame of
   the stream) and is dropped at its first miss.
5. Remaining high-score detections start tentative tracks. Lost tracks unseen for longer
   than ``max_lost_s`` are dropped at the start of each frame, before any matching.

Memory is bounded: at most ``max_tracks`` tracks of all kinds exist; when full, the lost
tracks unseen the longest make room for new persons, and if every slot holds a person seen
in this frame, the weakest new detections are not tracked. Ids count up from 1 and are
never reused within a run (until :meth:`Tracker.reset`).

Persons are emitted with their *detected* box and keypoints (not the filtered box), so the
behaviour stage measures motion from what the model saw; the filter only serves matching.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import cast

import numpy as np

from appliance.box.config import TrackingConfig
from appliance.box.tracking import kalman
from appliance.box.tracking.assignment import linear_assignment
from appliance.box.tracking.similarity import iou_matrix, oks_matrix
from appliance.contracts.types import NUM_KEYPOINTS, Detections, TrackedFrame, TrackedPerson


class TrackState(enum.Enum):
    TENTATIVE = "tentative"   # not yet confirmed; has no id
    TRACKED = "tracked"       # confirmed and matched in the latest frame
    LOST = "lost"             # confirmed, unmatched since last_seen_t


@dataclass(eq=False)
class _Track:
    """Mutable per-track state, private to the tracker."""

    state: TrackState
    mean: np.ndarray            # float64[8] Kalman state
    cov: np.ndarray             # float64[8, 8]
    birth_frame: int            # tracker frame count when first detected
    last_seen_t: float
    box: np.ndarray             # float32[4] last detected box
    keypoints: np.ndarray       # float32[17, 3] last detected keypoints
    score: float
    measured_center: np.ndarray  # float64[2] centre of the last detected box (keypoints' anchor)
    hits: int = 1
    track_id: int = 0           # 0 until confirmed


_DEFAULT_CONFIG = TrackingConfig()


class Tracker:
    """Multi-person tracker; feed it every analysed frame's :class:`Detections` in time order.

    >>> tracker = Tracker(TrackingConfig(), frame_size=(1920, 1080))
    >>> tracked = tracker.update(detections)     # TrackedFrame: persons seen in this frame

    ``frame_size`` (width, height) is only copied into each TrackedFrame; (0, 0) when not
    given. It may be set later (``tracker.frame_size = (w, h)``) once the first frame is known.
    """

    def __init__(self, cfg: TrackingConfig = _DEFAULT_CONFIG, frame_size: tuple[int, int] | None = None):
        if cfg.low_score >= cfg.high_score:
            raise ValueError(f"tracking.low_score {cfg.low_score} must be below high_score {cfg.high_score}")
        self.cfg = cfg
        self.frame_size = cast(tuple[int, int], tuple(frame_size)) if frame_size is not None else (0, 0)
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        """Forgets every track; the next frame starts a new stream (ids keep counting up)."""
        self._tracks: list[_Track] = []
        self._frames = 0
        self._last_t: float | None = None

    @property
    def live_tracks(self) -> int:
        """Tracks held in memory now (tentative, tracked and lost)."""
        return len(self._tracks)

    @property
    def ids_issued(self) -> int:
        return self._next_id - 1

    # -----------------------------------------------------------------------------------

    def update(self, dets: Detections) -> TrackedFrame:
        cfg = self.cfg
        t = float(dets.t)
        if self._last_t is not None and t < self._last_t - cfg.max_lost_s:
            # The clock jumped back (a looped file, a new source): a new stream.
            self.reset()
        self._frames += 1
        # Small backward jitter is treated as no motion, never as negative time.
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t if self._last_t is None else max(t, self._last_t)
        # Lost tracks whose time is up go before matching, so they can never come back.
        self._tracks = [tr for tr in self._tracks
                        if tr.state is not TrackState.LOST or t - tr.last_seen_t <= cfg.max_lost_s]
        self._predict(dt)

        boxes = np.asarray(dets.boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(dets.scores, np.float32).reshape(-1)
        keypoints = np.asarray(dets.keypoints, np.float32).reshape(len(scores), NUM_KEYPOINTS, 3)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(1)
        high = np.flatnonzero(valid & (scores >= cfg.high_score))
        low = np.flatnonzero(valid & (scores >= cfg.low_score) & (scores < cfg.high_score))

        confirmed = [tr for tr in self._tracks if tr.state is not TrackState.TENTATIVE]
        tentative = [tr for tr in self._tracks if tr.state is TrackState.TENTATIVE]
        matched: list[tuple[_Track, int]] = []   # (track, detection index) in this frame

        # 1. high-score detections vs. all confirmed tracks (seen and lost), IoU + OKS
        m, free_tracks, free_high = self._associate(
            confirmed, boxes[high], keypoints[high], 1.0 - cfg.match_iou, cfg.keypoint_weight)
        matched += [(confirmed[ti], int(high[di])) for ti, di in m]
        remaining_high = high[free_high]

        # 2. low-score detections vs. tracks seen in the previous frame, IoU only
        still_tracked = [confirmed[i] for i in free_tracks if confirmed[i].state is TrackState.TRACKED]
        m, free_tracked, _ = self._associate(
            still_tracked, boxes[low], keypoints[low], 1.0 - cfg.low_match_iou, 0.0)
        matched += [(still_tracked[ti], int(low[di])) for ti, di in m]
        for i in free_tracked:
            still_tracked[i].state = TrackState.LOST

        # 3. tentative tracks vs. remaining high-score detections; unmatched ones are dropped
        m, free_tentative, free_high = self._associate(
            tentative, boxes[remaining_high], keypoints[remaining_high], 1.0 - cfg.match_iou,
            cfg.keypoint_weight)
        matched += [(tentative[ti], int(remaining_high[di])) for ti, di in m]
        remaining_high = remaining_high[free_high]
        dropped = {id(tentative[i]) for i in free_tentative}
        self._tracks = [tr for tr in self._tracks if id(tr) not in dropped]

        self._correct([tr for tr, _ in matched], np.array([di for _, di in matched], np.int64),
                      boxes, keypoints, scores, t)
        emitted: list[tuple[_Track, int]] = []
        for track, di in matched:
            track.hits += 1
            if track.state is TrackState.TENTATIVE:
                if track.hits < cfg.confirm_hits:
                    continue
                self._confirm(track)
            track.state = TrackState.TRACKED
            emitted.append((track, di))

        # 4. start new tracks within the memory bound
        emitted += self._start_tracks(remaining_high, boxes, keypoints, scores, t)

        emitted.sort(key=lambda pair: pair[0].track_id)
        persons = tuple(
            TrackedPerson(
                track_id=track.track_id,
                box=boxes[di].copy(),
                score=float(scores[di]),
                keypoints=keypoints[di].copy(),
                age=self._frames - track.birth_frame,
                lost_frames=0,
            )
            for track, di in emitted
        )
        return TrackedFrame(frame_index=dets.frame_index, t=t, persons=persons,
                            frame_size=self.frame_size)

    # -----------------------------------------------------------------------------------

    def _predict(self, dt: float) -> None:
        if not self._tracks:
            return
        mean = np.stack([tr.mean for tr in self._tracks])
        cov = np.stack([tr.cov for tr in self._tracks])
        # As in ByteTrack: a lost track keeps moving but stops growing or shrinking.
        lost = np.array([tr.state is TrackState.LOST for tr in self._tracks])
        mean[lost, 6:] = 0.0
        mean, cov = kalman.predict(mean, cov, dt)
        for tr, m_, c_ in zip(self._tracks, mean, cov):
            tr.mean, tr.cov = m_, c_

    def _associate(self, tracks: list[_Track], det_boxes: np.ndarray, det_keypoints: np.ndarray,
                   cost_limit: float, keypoint_weight: float):
        if not tracks or det_boxes.shape[0] == 0:
            return (np.zeros((0, 2), np.int64), np.arange(len(tracks)), np.arange(det_boxes.shape[0]))
        pred = np.stack([tr.mean[:4] for tr in tracks])
        pred_xyxy = kalman.cxcywh_to_xyxy(pred)
        iou = iou_matrix(pred_xyxy, det_boxes)
        similarity = iou
        if keypoint_weight > 0:
            # The last skeleton, carried along by the box's predicted motion.
            shift = pred[:, :2] - np.stack([tr.measured_center for tr in tracks])
            moved = np.stack([tr.keypoints for tr in tracks]).astype(np.float64)
            moved[:, :, :2] += shift[:, None, :]
            oks, oks_valid = oks_matrix(moved, det_keypoints, pred[:, 2] * pred[:, 3])
            mixed = (1.0 - keypoint_weight) * iou + keypoint_weight * oks
            # Keypoints may re-rank overlapping candidates but never join disjoint boxes.
            similarity = np.where(oks_valid & (iou > 0), mixed, iou)
        cost = 1.0 - similarity
        cost[iou <= 0] = np.inf
        return linear_assignment(cost, cost_limit)

    def _correct(self, tracks: list[_Track], det_index: np.ndarray, boxes: np.ndarray,
                 keypoints: np.ndarray, scores: np.ndarray, t: float) -> None:
        """Kalman-corrects the tracks with their matched detections, all in one batch."""
        if not tracks:
            return
        measurements = kalman.xyxy_to_cxcywh(boxes[det_index])
        mean, cov = kalman.update(np.stack([tr.mean for tr in tracks]), np.stack([tr.cov for tr in tracks]),
                                  measurements)
        for k, (track, di) in enumerate(zip(tracks, det_index)):
            track.mean, track.cov = mean[k], cov[k]
            track.box = boxes[di].copy()
            track.keypoints = keypoints[di].copy()
            track.score = float(scores[di])
            track.last_seen_t = t
            # Keypoints are later moved with the box; anchor them to the detected box's centre.
            track.measured_center = measurements[k, :2].copy()

    def _confirm(self, track: _Track) -> None:
        track.state = TrackState.TRACKED
        track.track_id = self._next_id
        self._next_id += 1

    def _start_tracks(self, candidates: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray,
                      scores: np.ndarray, t: float) -> list[tuple[_Track, int]]:
        if candidates.size == 0:
            return []
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        free = self.cfg.max_tracks - len(self._tracks)
        if free < candidates.size:
            free += self._evict(candidates.size - free)
            candidates = candidates[:max(free, 0)]
        first_frame = self._frames == 1
        started = []
        measurements = kalman.xyxy_to_cxcywh(boxes[candidates])
        means, covs = kalman.initiate(measurements)
        for di, mean, cov, meas in zip(candidates, means, covs, measurements):
            track = _Track(state=TrackState.TENTATIVE, mean=mean, cov=cov, birth_frame=self._frames,
                           last_seen_t=t, box=boxes[di].copy(), keypoints=keypoints[di].copy(),
                           score=float(scores[di]), measured_center=meas[:2].copy())
            self._tracks.append(track)
            if first_frame or self.cfg.confirm_hits <= 1:
                self._confirm(track)
                started.append((track, int(di)))
        return started

    def _evict(self, wanted: int) -> int:
        """Frees up to ``wanted`` slots: lost tracks unseen longest first. Returns slots freed."""
        lost = sorted((tr for tr in self._tracks if tr.state is TrackState.LOST), key=lambda tr: tr.last_seen_t)
        victims = {id(tr) for tr in lost[:wanted]}
        self._tracks = [tr for tr in self._tracks if id(tr) not in victims]
        return len(victims)
