"""What a driver may read of a Node: copies and frozen views, never the live structures.

The control socket's documents, /metrics and the simulator's reports read a node through these
functions only, so the core's internals can change without them, and so a reader on another
thread (the metrics server) never walks a dict the event loop is changing: the daemon takes a
`Counters` snapshot on its loop and hands that over.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import operations, policy
from .lifecycle import TERMINAL, TaskState
from .messages import Bid, Load, PartResult, Requirements
from .observe import HistogramView

if TYPE_CHECKING:
    from .node import Node


@dataclass(frozen=True, slots=True)
class Reputation:
    """This node's record, as a manager, of one contractor (policy.ContractorRecord)."""

    success_rate: float
    successes: int
    failures: int
    breaker: str
    bid_accuracy: float | None      # None until one of its run-time estimates could be checked


@dataclass(frozen=True, slots=True)
class PeerView:
    id: str
    name: str
    address: str
    health: str                     # alive | suspect | dead (ourselves: alive)
    last_seen_s: float | None       # seconds since we last heard from it (ourselves: 0)
    load: Load | None               # its last load signal (ourselves: a fresh one)
    reputation: Reputation | None   # None: it never bid or ran for us
    score: float | None             # what a bid matching its load would score with us now
    audit: str                      # self | unknown | checking | ok | forked
    audit_size: int | None          # the size of its last audit head we checked (ours: our head's)
    is_self: bool


@dataclass(frozen=True, slots=True)
class Counters:
    """The figures that change with every input, taken at one instant."""

    tasks_by_state: dict[str, int]  # this node's unfinished tasks (finished ones: the store counts them)
    manager: dict[str, int]         # manager events: submitted, succeeded, failed, retries, awards, ...
    frames_dropped: dict[str, int]  # by reason
    peers_by_health: dict[str, int]
    slots: int
    slots_free: int                 # not held by a started attempt or a bid
    started: int                    # attempts whose process runs here
    queued: int                     # accepted attempts waiting here for a slot (prefetch)
    attempts_completed: int
    audit_forks: int
    audit_forked_nodes: tuple[str, ...]
    timings: dict[str, HistogramView]   # observe.py: queue_wait, bid_window, award_to_start, run_time
    refusals: dict[str, int]        # refuse and reject messages this node's contractor sent, by code
    draining: bool
    attempts_failed: int            # attempts run here that did not exit 0
    run_ms: int                     # their total run time, with the successful ones


def task_doc(node: Node, task_id: str) -> dict[str, Any] | None:
    """A task's status document, or None when not in memory (unknown, or finished long ago)."""
    task = node.manager.tasks.get(task_id)
    return task.to_doc() if task is not None else None


def parts(node: Node, task_id: str) -> list[PartResult] | None:
    """A composite's parts that ended, as its manager keeps them while it runs; None when not in memory
    (ended composites keep them in the store only)."""
    task = node.manager.tasks.get(task_id)
    return None if task is None or task.state in TERMINAL else list(task.parts.values())


def task_docs(node: Node, state: str | None = None) -> list[dict[str, Any]]:
    """The documents of the tasks in memory (every unfinished one), in submission order."""
    return [t.to_doc() for t in sorted(node.manager.tasks.values(), key=lambda t: t.order)
            if state in (None, "", t.state)]


def reputation(record: policy.ContractorRecord | None) -> Reputation | None:
    if record is None:
        return None
    return Reputation(round(record.success_rate, 3), record.successes, record.failures, record.breaker,
                      round(record.accuracy, 3) if record.estimates else None)


def score_of(load: Load | None, record: policy.ContractorRecord | None, now: float) -> float | None:
    """The score a bid matching `load` would get from us at `now` (policy.score)."""
    if load is None:
        return None
    bid = Bid("", 0, slots=load.slots, slots_free=load.slots_free, cpu_percent=load.cpu_percent,
              mem_available=load.mem_available)
    return round(policy.score(bid, record or policy.ContractorRecord(), Requirements(), now, False), 4)


def peers(node: Node, now: float) -> list[PeerView]:
    """Ourselves first, then every peer in the membership table, by name."""
    records = node.manager.records
    own = node.load_signal(now)
    out = [PeerView(node.id, own.name, own.address, "alive", 0.0, own, reputation(records.get(node.id)),
                    score_of(own, records.get(node.id), now), "self", (node.audit_head or {}).get("size"), True)]
    watch = node.audit_watch
    for peer in sorted(node.membership.peers.values(), key=lambda p: p.name):
        watched = watch.nodes.get(peer.id)
        out.append(PeerView(peer.id, peer.name, peer.address, peer.health, now - peer.last_heard, peer.load,
                            reputation(records.get(peer.id)), score_of(peer.load, records.get(peer.id), now),
                            watch.status(peer.id),
                            watched.head.size if watched is not None and watched.head is not None else None,
                            False))
    return out


def counters(node: Node) -> Counters:
    c, watch = node.contractor, node.audit_watch
    return Counters(
        tasks_by_state={str(s): n for s, n in node.manager.index.counts.items() if n},
        manager=dict(node.manager.stats), frames_dropped=dict(node.drops),
        peers_by_health=dict(Counter(p.health for p in node.membership.peers.values())),
        slots=node.settings.slots, slots_free=c.slots_free, started=c.started, queued=len(c.waiting),
        attempts_completed=c.completed, audit_forks=watch.forks, audit_forked_nodes=tuple(watch.forked()),
        timings=node.manager.observed.snapshot(), refusals=dict(c.refusals), draining=c.draining,
        attempts_failed=c.failed_runs, run_ms=c.run_ms)


@dataclass(frozen=True, slots=True)
class Occupancy:
    """What this node's contractor holds now (for `drain --wait`)."""

    draining: bool
    running: int                    # attempts whose process runs here
    queued: int                     # accepted attempts waiting here for a slot

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.queued == 0


def occupancy(node: Node) -> Occupancy:
    c = node.contractor
    return Occupancy(c.draining, c.started, len(c.waiting))


def unacknowledged(node: Node) -> int:
    """Results this node's contractor sent and their managers have not acknowledged yet."""
    return len(node.contractor.pending)


def totals(node: Node) -> dict[str, dict[str, int]]:
    """The running totals to save (the store) and hand back at the next start (StateRecovered.totals)."""
    return operations.totals(node)


def audit_evidence(node: Node, wanted: str = "") -> list[dict[str, Any]]:
    """What we saw of `wanted`'s (a node id or name; "": every node's) audit heads, with the evidence
    of a fork where we found one."""
    found = [w for w in node.audit_watch.nodes.values()
             if wanted in ("", w.node_id) or node.lookup(w.node_id)[1] == wanted]
    return [dict(w.doc(), name=node.lookup(w.node_id)[1], evidence=w.evidence) for w in found]


UNFINISHED_STATES = tuple(str(s) for s in (TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING))
