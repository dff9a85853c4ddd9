"""The per-peer rules of finding 1, with a fake clock (no sockets, no timing)."""

from __future__ import annotations

from appliance.station.peers import FLOOD_DROPS, PeerGuard


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_an_honest_uplink_is_never_dropped_and_a_flood_is_cut_then_muted():
    clock = Clock()
    guard = PeerGuard(rate=200, burst=400, mute_s=10, clock=clock)
    for _ in range(5000):          # one request in flight, ~120 acks/s: far below the bucket
        assert guard.admit("honest") is None
        clock.t += 1 / 120
    outcomes = [guard.admit("flood") for _ in range(400 + FLOOD_DROPS)]   # all at once
    assert outcomes[:400] == [None] * 400 and outcomes[-1] == "flooding"
    assert set(outcomes[400:-1]) == {"over_rate"}
    guard.cut("flood")             # no connection known: nothing to shut down, but muted
    assert guard.admit("flood") == "muted" and guard.is_muted("flood")
    clock.t += 10.1
    assert guard.admit("flood") is None           # after the mute it gets its bucket back
    assert guard.admit("honest") is None          # the honest one never noticed
