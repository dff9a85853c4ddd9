"""Per-peer limits for the station's one serving loop (issue 12, docs/wire-protocol.md).

The loop serves every device from one thread, so no single peer may make it wait or fill its
memory. Three rules, each cheap enough to apply *before* a message is parsed:

- **Rate.** A token bucket per CURVE identity (ZAP ``User-Id``): an honest uplink has one
  request in flight, so ``rate`` requests per second with a ``burst`` leaves it ample room;
  a request beyond that is dropped unread (no reply, no audit record per message).
- **Not reading.** Replies are sent non-blocking; a reply that cannot be queued (``EAGAIN``:
  its queue of ``SNDHWM`` replies is full) means the peer does not read them.
- **Consequence.** A peer that does not read, or keeps flooding past its bucket, is cut off:
  its TCP connection is shut down underneath libzmq (the descriptor comes from the message's
  ``ZMQ_SRCFD``) and its identity is muted for ``mute_s`` seconds (anything it sends meanwhile
  is dropped and its new connections cut again). One ``station.peer_dropped`` audit record per
  cut, not one per dropped message.

The same cut closes a disabled or revoked device's open session (``devices revoke``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field

#: Requests per second one identity may send on average, and the burst above that.
DEFAULT_RATE = 200.0     # the station ingests ~120 1-MB clips/s (`python -m bench uplink`)
DEFAULT_BURST = 400.0
#: How long a cut-off identity stays muted.
DEFAULT_MUTE_S = 10.0
#: Requests dropped over the bucket within FLOOD_WINDOW_S before the peer is cut off as flooding
#: (an honest uplink, one request in flight, never has one dropped).
FLOOD_DROPS = 200
FLOOD_WINDOW_S = 2.0
#: Identities remembered (oldest forgotten first): bounds the guard's own memory.
MAX_PEERS = 4096


@dataclass
class PeerState:
    tokens: float
    updated: float
    muted_until: float = 0.0
    dropped: int = 0
    window_start: float = 0.0
    connections: dict[int, tuple] = field(default_factory=dict)  # fd -> peer address when seen


class PeerGuard:
    """Decides, per incoming message, whether the loop may spend time on it."""

    def __init__(self, *, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST,
                 mute_s: float = DEFAULT_MUTE_S, clock=time.monotonic):
        self.rate, self.burst, self.mute_s, self.clock = rate, burst, mute_s, clock
        self._peers: OrderedDict[str, PeerState] = OrderedDict()
        self.cuts = 0
        self.dropped = 0

    def _state(self, identity: str) -> PeerState:
        state = self._peers.get(identity)
        if state is None:
            state = self._peers[identity] = PeerState(self.burst, self.clock())
            while len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(identity)
        return state

    def note_connection(self, identity: str, fd: int) -> None:
        """Remembers which TCP connection carried this identity's message (for a later cut)."""
        if fd < 0:
            return
        state = self._state(identity)
        if fd not in state.connections:
            address = _peer_address(fd)
            if address is not None:
                state.connections[fd] = address
                if len(state.connections) > 8:  # reconnects: keep the newest few
                    state.connections.pop(next(iter(state.connections)))

    def admit(self, identity: str) -> str | None:
        """None to serve the message; otherwise why it is dropped unread ("muted", "flooding")."""
        state = self._state(identity)
        now = self.clock()
        if now < state.muted_until:
            self.dropped += 1
            return "muted"
        state.tokens = min(self.burst, state.tokens + (now - state.updated) * self.rate)
        state.updated = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return None
        if now - state.window_start > FLOOD_WINDOW_S:
            state.window_start, state.dropped = now, 0
        state.dropped += 1
        self.dropped += 1
        return "flooding" if state.dropped >= FLOOD_DROPS else "over_rate"

    def is_muted(self, identity: str) -> bool:
        state = self._peers.get(identity)
        return state is not None and self.clock() < state.muted_until

    def cut(self, identity: str, *, mute: bool = True) -> int:
        """Shuts down every known connection of ``identity``; returns how many were cut."""
        state = self._state(identity)
        if mute:
            state.muted_until = self.clock() + self.mute_s
            state.dropped = 0
        cut = 0
        for fd, address in list(state.connections.items()):
            if shutdown_connection(fd, address):
                cut += 1
            state.connections.pop(fd, None)
        self.cuts += 1
        return cut


def _peer_address(fd: int) -> tuple | None:
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        with socket.socket(fileno=dup) as s:
            return s.getpeername()
    except OSError:
        return None


def shutdown_connection(fd: int, expected_address: tuple) -> bool:
    """Shuts the TCP connection on ``fd`` down if it still is the one to ``expected_address``.

    libzmq owns the descriptor; ``shutdown(2)`` (not ``close``) makes its engine see the
    connection end and tear the session down by its ordinary error path. The address check
    guards against a descriptor number that libzmq has meanwhile reused for another peer.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    with socket.socket(fileno=dup) as s:
        try:
            if s.getpeername() != expected_address:
                return False
        except OSError:
            return False
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
            return True
    return False
