"""Allocation policy: which peers to ask, how to score their bids, when to stop trusting one.

Score of a bid (seed 003's weights, then adjustments), higher is better:

    0.5 * availability   free share of the bidder's slots after this task, and idle CPU
  + 0.3 * success rate   this manager's own record of the bidder: (successes+1) / (attempts+1), so
                         a node not tried yet counts as reliable (1.0) until it fails; with the
                         Laplace prior (s+1)/(a+2) it started at 0.5 and lost every tie to a node that
                         had already succeeded once, so work never reached it while another was free
  + 0.2 * speed          s / (1 + s), where s is how fast the bidder ran this command for us compared
                         with the other peers that ran it (`SpeedTable`; 0.5 when unknown), discounted
                         by when it expects to start and by its bid accuracy (reputation: how its
                         run-time estimates compared with the run times measured; a node that
                         overpromises loses this term)
  + 0.1 * affinity       share of the task's `prefer` labels the bidder carries
  + 0.05 * fairness      grows with how long the bidder has gone without an award from us
  + 0.02 * local         the bidder is this manager itself: award, accept and result need no
                         network hop (issue 13); worth a tie, less than one free slot of 12
  - 0.2 * avoid          the task already failed on this bidder (prefer another node)

Ties break on node id, so every manager ranks the same bids the same way.

Candidates (power of d choices): of the peers whose gossiped capacity fits and that have an unclaimed
free slot, `max_candidates` are asked, drawn at random with the ones that have more free room first
in line (half the draw by free share, half uniformly), so the messages per task stay bounded however
large the cluster is, and load still flows to the emptiest nodes.

Circuit breaker per contractor: after `BREAKER_FAILURES` consecutive failed attempts it is open (no
awards) for a cool-down that doubles on each re-opening; then half-open: one award is let through,
whose success closes the breaker and whose failure opens it again.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .messages import Bid, Load, Requirements


class _Candidate(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def slots(self) -> int: ...


C = TypeVar("C", bound=_Candidate)

W_AVAILABILITY, W_SUCCESS, W_SPEED, W_AFFINITY, W_FAIRNESS, W_AVOID = 0.5, 0.3, 0.2, 0.1, 0.05, 0.2
W_LOCAL = 0.02
FAIRNESS_HORIZON = 30.0          # seconds without an award for the full fairness bonus
BREAKER_FAILURES = 3
BREAKER_COOLDOWN = 10.0
BREAKER_MAX_COOLDOWN = 300.0
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
ACCURACY_WEIGHT = 0.2            # weight of the newest sample in the bid-accuracy average
SPEED_COMMANDS = 256             # commands whose run times per peer a manager remembers
SPEED_PEERS = 64                 # peers remembered per command
SPEED_WEIGHT = 0.2               # weight of the newest run time in a peer's average
SPEED_FLOOR_MS = 100.0           # added to run times before comparing: jitter of short tasks is not speed
SPEED_RANGE = (0.25, 4.0)


@dataclass(slots=True)
class ContractorRecord:
    """What this manager has seen of one contractor."""

    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_award: float | None = None
    breaker: str = CLOSED
    open_until: float = 0.0
    cooldown: float = BREAKER_COOLDOWN
    half_open_trial: bool = False
    accuracy: float = 1.0       # EWMA of min(1, estimated / actual run time) over its successes
    estimates: int = 0
    version: int = 0            # bumped by every change worth keeping across a restart (reputation.py)

    def observe_runtime(self, estimate_ms: int, actual_ms: int) -> None:
        """Reputation: compare a winning bid's run-time estimate with the measured run time."""
        if estimate_ms <= 0 or actual_ms <= 0:
            return
        sample = min(1.0, estimate_ms / actual_ms)
        self.accuracy = (1 - ACCURACY_WEIGHT) * self.accuracy + ACCURACY_WEIGHT * sample
        self.estimates += 1
        self.version += 1

    @property
    def success_rate(self) -> float:
        return (self.successes + 1) / (self.successes + self.failures + 1)

    def allows_award(self, now: float) -> bool:
        if self.breaker == OPEN and now >= self.open_until:
            self.breaker, self.half_open_trial = HALF_OPEN, False
        if self.breaker == OPEN:
            return False
        if self.breaker == HALF_OPEN:
            return not self.half_open_trial
        return True

    def awarded(self, now: float) -> None:
        self.last_award = now
        if self.breaker == HALF_OPEN:
            self.half_open_trial = True

    def succeeded(self) -> None:
        self.version += 1
        self.successes += 1
        self.consecutive_failures = 0
        if self.breaker != CLOSED:
            self.breaker, self.cooldown = CLOSED, BREAKER_COOLDOWN

    def failed(self, now: float) -> None:
        self.version += 1
        self.failures += 1
        self.consecutive_failures += 1
        if self.breaker == HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, BREAKER_MAX_COOLDOWN)
            self.breaker, self.open_until = OPEN, now + self.cooldown
        elif self.consecutive_failures >= BREAKER_FAILURES and self.breaker == CLOSED:
            self.breaker, self.open_until = OPEN, now + self.cooldown


class SpeedTable:
    """How fast each peer runs each command, relative to the other peers that ran it for us: the
    mean of their average run times over its own (both plus SPEED_FLOOR_MS), clamped to SPEED_RANGE;
    1.0 until at least two peers have run the command. Learnt from successful results only."""

    def __init__(self) -> None:
        self.runtimes: OrderedDict[str, dict[str, float]] = OrderedDict()   # command -> peer -> ms
        self.changed: set[str] = set()     # commands observed or forgotten since reputation.py last looked

    def observe(self, command: str, peer: str, runtime_ms: int) -> None:
        self.changed.add(command)
        peers = self.runtimes.pop(command, None)
        if peers is None:
            peers = {}
            while len(self.runtimes) >= SPEED_COMMANDS:
                self.changed.add(self.runtimes.popitem(last=False)[0])
        self.runtimes[command] = peers                  # most recently used last
        old = peers.pop(peer, None)
        peers[peer] = float(runtime_ms) if old is None else (1 - SPEED_WEIGHT) * old + SPEED_WEIGHT * runtime_ms
        if len(peers) > SPEED_PEERS:
            del peers[next(iter(peers))]

    def relative(self, command: str, peer: str) -> float:
        peers = self.runtimes.get(command)
        own = peers.get(peer) if peers else None
        if peers is None or own is None or len(peers) < 2:
            return 1.0
        mean = sum(peers.values()) / len(peers)
        return min(SPEED_RANGE[1], max(SPEED_RANGE[0], (mean + SPEED_FLOOR_MS) / (own + SPEED_FLOOR_MS)))


def unfit_reason(load: Load, req: Requirements) -> str | None:
    """Why a peer's gossiped capacity cannot take a task, or None if it might."""
    for key, value in req.labels.items():
        if load.labels.get(key) != value:
            return f"label {key}={value} missing"
    if req.cpus > max(load.cpus, load.slots):
        return f"has {load.cpus} CPUs, task needs {req.cpus:g}"
    if req.mem > load.mem_total:
        return "not enough memory in total"
    if req.gpus:
        usable = [g for g in load.gpus if g.mem_total >= req.gpu_mem]
        if len(usable) < req.gpus:
            return f"has {len(usable)} GPUs with enough memory, task needs {req.gpus}"
    return None


def affinity(labels: dict[str, str], req: Requirements) -> int:
    return sum(1 for k, v in req.prefer.items() if labels.get(k) == v)


def score(bid: Bid, record: ContractorRecord, req: Requirements, now: float, avoid: bool,
          relative_speed: float = 1.0, local: bool = False) -> float:
    availability = 0.5 * bid.slots_free / max(1, bid.slots) + 0.5 * (1 - min(100.0, bid.cpu_percent) / 100)
    speed = relative_speed / (1 + relative_speed) * record.accuracy / (1 + bid.est_start_ms / 1000)
    affinity_share = bid.affinity / len(req.prefer) if req.prefer else 0.0
    idle = now - record.last_award if record.last_award is not None else FAIRNESS_HORIZON
    fairness = min(1.0, idle / FAIRNESS_HORIZON)
    return (W_AVAILABILITY * availability + W_SUCCESS * record.success_rate + W_SPEED * speed
            + W_AFFINITY * affinity_share + W_FAIRNESS * fairness + (W_LOCAL if local else 0.0)
            - (W_AVOID if avoid else 0.0))


def sample_candidates(free: list[C], units: dict[str, int], avoid: set[str], d: int,
                      rng: random.Random) -> list[C]:
    """Power of d choices: at most `d` of the `free` candidates, preferring ones not in `avoid`.

    Half of the picks go to the candidates with the largest share of unclaimed slots (ties broken at
    random), the rest are drawn uniformly from the others, so a manager does not always ask the same
    few nodes and the cost per task is O(d), not O(peers).
    """
    pool = [c for c in free if c.id not in avoid] or list(free)
    if len(pool) <= d:
        return pool
    keyed = sorted(pool, key=lambda c: (-units.get(c.id, 0) / max(1, c.slots), rng.random()))
    best = keyed[: (d + 1) // 2]
    rest = keyed[(d + 1) // 2:]
    return best + rng.sample(rest, d - len(best))


def rank(scored: dict[str, float]) -> list[str]:
    """Node ids, best first; deterministic tie-break on id."""
    return sorted(scored, key=lambda node: (-scored[node], node))
