"""What membership holds of each peer, and the settings that time it (membership.py uses them; so do
probing.py, dissemination.py and own_load.py, which share its table).

A peer's health is one of ALIVE, SUSPECT, DEAD; its life is (incarnation, refutes) of its loads: a
restart raises the incarnation, a refuted suspicion the refutes (membership.py says how each moves).
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Load
from .suspicion import Suspicion

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"

Target = tuple[str, str]       # (node id, address)
Life = tuple[int, int]         # (incarnation, refutes)


@dataclass(frozen=True, slots=True)
class GossipSettings:
    interval: float = 0.5      # one probe and one gossip round
    fanout: int = 3            # members each gossip batch and each of our loads goes to
    suspect_after: float = 1.5 # a silent peer is dead this long after the probe that found it silent,
    dead_after: float = 4.0    # ... or this long when no other node confirms the suspicion (Lifeguard)
    probe_k: int = 3           # members asked to probe a silent peer for us
    max_batch: int = 32        # frames in one gossip batch or welcome (messages.MAX_GOSSIP_FRAMES at most)
    view_size: int = 64        # peers probed and gossiped with (everyone, in a cluster this small)
    sample_size: int = 64      # peers with the freshest loads: those offered work
    piggyback: int = 2         # queued frames a ping or pong carries besides the sender's own load
    refresh_rounds: int = 4    # rounds between two of our loads when nothing changed
    queue: int = 256           # frames waiting to be passed on (broadcasts.py)


@dataclass(slots=True)
class Peer:
    id: str
    key: bytes
    address: str = ""
    health: str = ALIVE
    last_heard: float = 0.0
    load: Load | None = None
    load_version: tuple[int, int] = (-1, -1)   # (incarnation, seq) of `load`
    load_frame: bytes = b""
    load_received: float = 0.0
    incarnation: int = -1
    refutes: int = 0
    suspicion: Suspicion | None = None
    direct_version: tuple[int, int] = (-1, -1)  # (incarnation, seq) of the latest frame straight from it
    pair_hash: int = -1                          # overlay.pair_hash(us, it), once worked out

    @property
    def name(self) -> str:
        return self.load.name if self.load else ""

    @property
    def life(self) -> Life:
        return self.incarnation, self.refutes


@dataclass(slots=True)
class Transition:
    peer: Peer
    health: str
