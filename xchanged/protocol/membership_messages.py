"""Membership messages (SWIM, docs/membership.md): load signals, probes, suspicions, death
verdicts, and the gossip batches that relay them.

Rules:
* A node's `load`, and a `suspect` or `dead` verdict, are relayable (`RELAYABLE`): they travel as their
  origin's original signed bytes, in a `gossip` batch or piggybacked on a `ping`/`pong`, and every
  receiver verifies each against its origin's key as if it had arrived alone.
* A life of a node is `(incarnation, refutes)` of its load; a suspicion or verdict names the life it
  is about, and only a load of a higher life refutes it.
* Relayed batches are bounded (`MAX_GOSSIP_FRAMES`, `MAX_GOSSIP_BYTES`; 64 frames on a probe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from .wire import Limit


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    mem_total: int
    mem_free: int
    util_percent: float


LOAD_HEARTBEAT, LOAD_CHANGE, LOAD_NEWS = 0, 1, 2      # Load.news


@dataclass(frozen=True, slots=True)
class Load:
    """A node's signed load signal, gossiped and relayed as the original bytes."""

    TYPE: ClassVar[str] = "load"
    name: str
    address: str                      # host:port of the node's peer socket
    slots: int
    slots_free: int
    running: int
    queued: int                       # tasks this node manages that wait for a contractor
    cpus: int
    cpu_percent: float
    mem_total: int
    mem_available: int
    gpus: list[GpuInfo] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    audit_head: dict[str, Any] | None = None
    queue_free: int = 0               # room in the local queue of accepted tasks waiting for a slot
    coord_free: int = 0               # composites it would coordinate on top of those it does
    draining: bool = False            # finishing what it runs, taking nothing new: managers do not ask it
    cert: bytes = b""                 # the node's certificate from a cluster CA (certs.py), if it has one
    refutes: int = 0                  # suspicions of this node it has refuted in this incarnation (SWIM's
                                      # incarnation number: (incarnation, refutes) orders its lives)
    news: int = 0                     # LOAD_HEARTBEAT: nothing changed (not relayed); LOAD_CHANGE: relayed;
                                      # LOAD_NEWS: every node should hear of it at once (a refutation, or what
                                      # this node is changed: address, slots, labels, resources)
    joining: bool = False             # the sender knows no live peer yet: answer it with a welcome (our table's loads)

@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe (SWIM). `reply_via` is set when probing on behalf of another node. `reply_to`
    and `via_address` are the addresses to answer at (the prober may not be in the target's table:
    views are partial). `gossip` piggybacks relayable signed frames (the sender's load first)."""

    TYPE: ClassVar[str] = "ping"
    nonce: int
    reply_via: str | None = None
    reply_to: str = ""                # where the pong goes: the sender's own address
    via_address: str = ""             # with reply_via: the asker's address (the pong is forwarded there)
    gossip: Annotated[list[bytes], Limit(64)] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a third node to probe `target` for us (indirect probe, as in SWIM)."""

    TYPE: ClassVar[str] = "ping_req"
    target: str
    nonce: int
    target_address: str = ""          # where the target is (the helper may not know it)
    reply_to: str = ""                # the asker's address


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ping; forwarded unchanged (signed by the target) for indirect probes."""

    TYPE: ClassVar[str] = "pong"
    nonce: int
    for_node: str
    for_address: str = ""             # the asker's address, for the helper that forwards it
    gossip: Annotated[list[bytes], Limit(64)] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Suspect:
    """The sender's probes of `node` went unanswered: it suspects that life of it ((incarnation,
    refutes) of its load). Relayed as the sender's signed bytes; `node` refutes it with a load of a
    higher life; independent suspicions of one life shorten the time to a verdict (Lifeguard)."""

    TYPE: ClassVar[str] = "suspect"
    node: str
    incarnation: int
    refutes: int


@dataclass(frozen=True, slots=True)
class Dead:
    """The sender's suspicion of `node` ran out unrefuted: that life of it is dead. Relayed like
    `suspect`; only a load of a higher life (a refutation, a restart) brings `node` back."""

    TYPE: ClassVar[str] = "dead"
    node: str
    incarnation: int
    refutes: int


MAX_GOSSIP_FRAMES = 256        # relayed frames in one gossip batch
MAX_GOSSIP_BYTES = 1 << 20     # their total size


@dataclass(frozen=True, slots=True)
class Gossip:
    """A batch of relayed signed frames: loads, suspicions and death verdicts (`RELAYABLE`), each
    another node's original signed frame.

    The batch's own signature proves only who relayed it (and that the relayer is alive); the
    receiver's driver verifies every entry on its own, against its origin's key, as if it had
    arrived alone (and drops any entry that is not relayable)."""

    TYPE: ClassVar[str] = "gossip"
    frames: list[bytes]

    def __post_init__(self) -> None:
        if len(self.frames) > MAX_GOSSIP_FRAMES or sum(len(f) for f in self.frames) > MAX_GOSSIP_BYTES:
            raise ValueError(f"a gossip batch is at most {MAX_GOSSIP_FRAMES} frames of {MAX_GOSSIP_BYTES} bytes")

RELAYABLE = frozenset({"load", "suspect", "dead"})    # frame types a gossip batch or a probe may carry


def carried_frames(message: Any) -> list[bytes]:
    """The relayable signed frames a message carries: a gossip batch's, or a probe's piggyback."""
    if isinstance(message, Gossip):
        return message.frames
    if isinstance(message, (Ping, Pong)):
        return message.gossip
    return []
