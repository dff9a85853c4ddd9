"""Finding 1: a flooding enrolled device that never reads its replies, then disconnects.

Before: every reply to it blocked the single serving loop for 1 s (SNDTIMEO=1000), a legitimate
device's probes took ~0.8 s (median) and timed out, and the disconnect aborted the station
inside libzmq 4.3.5 (``Assertion failed: !_io_error``, SIGABRT). After: replies are sent
non-blocking, the peer is rate-limited and cut off, the station survives.
"""

from __future__ import annotations

import pytest

from bench.hostile import flood


@pytest.mark.parametrize("peer_rate", [None, 1e6], ids=["rate-limited", "not-reading"])
def test_flooding_peer_that_never_reads_neither_stalls_nor_kills_the_station(tmp_path, peer_rate):
    # peer_rate=1e6 switches the rate limit off, so the reply queue fills and the
    # "does not read its replies" rule has to cut the peer off by itself.
    r = flood(tmp_path, flood=20000, probes=10, probe_gap_s=0.1, linger_s=1.0, peer_rate=peer_rate)
    assert r["station_alive"], r["station_log_tail"]
    assert r["legit_timeouts"] == 0
    assert r["probes_after_disconnect"] == 3
    # Generous (shared CI machine): before the fix a probe waited ~1 s per queued hostile reply.
    assert r["legit_probe_ms_median"] < 500, r
    if peer_rate is None:  # 20000 requests in well under a second: far over the bucket
        assert "cut off peer" in (tmp_path / "station.log").read_text()
