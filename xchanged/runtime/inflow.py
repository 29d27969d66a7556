"""Per-peer limits on received frames, before any of them is verified or parsed: rate, queue, fairness.

    inflow = Inflow(rate=5000, burst=10000, queue=1000, stranger_rate=20)
    reason = inflow.offer(peer, frame, now)     # None: queued; else the drop reason (counted)
    peer, frame = inflow.take()                 # the next frame to handle, peers served in turn

Why: a peer that floods us (hostile, or broken) must not starve the others or grow our memory. So,
per peer (the connection's authenticated Curve key; all unknown clients share one "stranger" peer):
- a token bucket: `rate` frames per second, bursts of up to `burst`; beyond it frames are dropped
  (`rate_limited`) at the cost of a dict lookup;
- a bounded queue: at most `queue` frames and QUEUE_BYTES bytes wait; beyond it frames are dropped
  (`peer_queue_full`);
- fair service: `take` serves the peers with waiting frames in turn, one frame each, so a peer with
  a thousand frames waiting delays another peer's next frame by one frame, not a thousand.
Memory held here is bounded by (peers + 1) * QUEUE_BYTES, and the peers by MAX_PEERS (the least
recently heard one is forgotten first; a peer with frames waiting is never forgotten).

Time is passed in (`now`, monotonic seconds), so a test moves it by hand.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

STRANGER = "stranger"          # the shared peer of every client whose key is not trusted
QUEUE_BYTES = 8 << 20          # bytes waiting per peer
MAX_PEERS = 4096               # peers remembered (buckets, queues)
RATE_LIMITED, QUEUE_FULL = "rate_limited", "peer_queue_full"


@dataclass(slots=True)
class _Peer:
    tokens: float
    stamp: float
    frames: deque[bytes] = field(default_factory=deque)
    size: int = 0


class Inflow:
    def __init__(self, rate: float, burst: float, queue: int, stranger_rate: float, stranger_burst: float = 0.0,
                 queue_bytes: int = QUEUE_BYTES, max_peers: int = MAX_PEERS):
        self.rate, self.burst, self.queue, self.queue_bytes = rate, max(burst, 1.0), queue, queue_bytes
        self.stranger_rate = stranger_rate
        self.stranger_burst = max(stranger_burst or 2 * stranger_rate, 1.0)
        self.max_peers = max_peers
        self.peers: OrderedDict[str, _Peer] = OrderedDict()
        self.ready: deque[str] = deque()           # peers with frames waiting, in service order
        self.drops: Counter[str] = Counter()       # by reason
        self.drops_by_peer: Counter[str] = Counter()
        self.waiting = 0                           # frames queued, all peers
        self.bytes_waiting = 0

    def offer(self, peer: str, frame: bytes, now: float) -> str | None:
        """Queue a received frame of `peer` (STRANGER for any untrusted client); None, or why it was
        dropped (counted in `drops`)."""
        stranger = peer == STRANGER
        state = self.peers.get(peer)
        if state is None:
            state = self._new_peer(peer, now, stranger)
        else:
            self.peers.move_to_end(peer)
        rate, burst = (self.stranger_rate, self.stranger_burst) if stranger else (self.rate, self.burst)
        state.tokens = min(burst, state.tokens + (now - state.stamp) * rate)
        state.stamp = now
        if state.tokens < 1.0:
            return self._drop(peer, RATE_LIMITED)
        state.tokens -= 1.0
        if len(state.frames) >= self.queue or state.size + len(frame) > self.queue_bytes:
            return self._drop(peer, QUEUE_FULL)
        if not state.frames:
            self.ready.append(peer)
        state.frames.append(frame)
        state.size += len(frame)
        self.waiting += 1
        self.bytes_waiting += len(frame)
        return None

    def take(self) -> tuple[str, bytes] | None:
        """The next frame to handle: the oldest of the peer whose turn it is; None when none waits."""
        if not self.ready:
            return None
        peer = self.ready.popleft()
        state = self.peers[peer]
        frame = state.frames.popleft()
        state.size -= len(frame)
        self.waiting -= 1
        self.bytes_waiting -= len(frame)
        if state.frames:
            self.ready.append(peer)            # back of the line: the others go first
        return peer, frame

    def __len__(self) -> int:
        return self.waiting

    def _new_peer(self, peer: str, now: float, stranger: bool) -> _Peer:
        if len(self.peers) >= self.max_peers:
            for old, state in self.peers.items():       # least recently heard first
                if not state.frames:
                    del self.peers[old]
                    break
        state = _Peer(tokens=self.stranger_burst if stranger else self.burst, stamp=now)
        self.peers[peer] = state
        return state

    def _drop(self, peer: str, reason: str) -> str:
        self.drops[reason] += 1
        self.drops_by_peer[peer] += 1
        if len(self.drops_by_peer) > self.max_peers:
            del self.drops_by_peer[next(iter(self.drops_by_peer))]
        return reason
