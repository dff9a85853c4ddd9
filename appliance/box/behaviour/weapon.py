"""The ``weapon`` pattern: a dangerous object near the same person's wrist in consecutive scans.

Input is the object stage's :class:`~appliance.types.HandScan` per analysed frame (labels,
scores, boxes; no pixels). The detector is a weak cue (docs/behaviour.md, *Weapon*): a single
frame's "knife" is as often a phone, a pen or a shadow, so one observation needs
``min_frames`` consecutive scans of the person in which an object of the *same class* lies
near a wrist. A scan of the person without it ends the streak; a frame in which the person was
not scanned (the detector's budget went elsewhere) neither extends nor ends it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from appliance.contracts.types import HandScan, Pattern

#: A streak whose person was not scanned for this long is dropped (the person left, or the
#: budget never came back to them): consecutive means consecutive, not "now and then".
STALE_S = 3.0


@dataclass
class _Streak:
    start_t: float
    last_t: float
    scores: list[float] = field(default_factory=list)
    hands: list[str] = field(default_factory=list)


class WeaponCounter:
    """Feed :meth:`update` every analysed frame's scan; it returns the observations to report
    as ``(pattern, t, start_t, track_ids, confidence, explanation)`` tuples."""

    def __init__(self, min_frames: int, min_score: float):
        self.min_frames = min_frames
        self.min_score = min_score
        self._streaks: dict[tuple[int, str], _Streak] = {}

    @property
    def candidate_tracks(self) -> set[int]:
        """Tracks with an open streak: the object stage scans them every frame."""
        return {tid for tid, _ in self._streaks}

    def update(self, scan: HandScan) -> list[tuple]:
        t = scan.t
        best: dict[tuple[int, str], tuple[float, str]] = {}
        for obj in scan.objects:
            key = (obj.track_id, obj.label)
            if key not in best or obj.score > best[key][0]:
                best[key] = (obj.score, obj.hand)
        scanned = set(scan.scanned)
        for key in list(self._streaks):
            streak = self._streaks[key]
            if (key[0] in scanned and key not in best) or t - streak.last_t > STALE_S:
                del self._streaks[key]
        out = []
        for key, (score, hand) in best.items():
            if key not in self._streaks:
                self._streaks[key] = _Streak(t, t)
            streak = self._streaks[key]
            streak.last_t = t
            streak.scores.append(score)
            streak.hands.append(hand)
            del streak.scores[:-50], streak.hands[:-50]       # bounded
            frames = len(streak.scores)
            if frames < self.min_frames:
                continue
            recent = streak.scores[-self.min_frames:]
            mean = sum(recent) / len(recent)
            # 0.5 when the mean score is at the detector floor, 1.0 at twice it (docs/behaviour.md).
            confidence = 0.5 + 0.5 * min(max(mean / self.min_score - 1.0, 0.0), 1.0)
            hand = Counter(streak.hands[-self.min_frames:]).most_common(1)[0][0]
            out.append((Pattern.WEAPON, t, streak.start_t, (key[0],), confidence, {
                "object": key[1],
                "score": round(max(recent), 3),
                "mean_score": round(mean, 3),
                "hand": hand,
                "frames": frames,
                "holder_track": key[0],
            }))
        return out
