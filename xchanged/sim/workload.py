"""Workloads for `xchanged sim`, and the omniscient scheduler its results are compared with.

A workload is drawn from a seed, so the same seed gives the same workload:
- nodes of heterogeneous sizes (slots drawn from SLOT_CHOICES);
- tasks arriving as a Poisson process whose rate keeps the cluster busy at the target utilisation
  (load = arrival rate x mean duration / total slots), each submitted to a random node (its manager),
  with heterogeneous durations (a mix of short and long tasks, lognormal);
- node crashes at `crash_rate` a second (cluster-wide), each node coming back after `downtime`
  (a restart from its store: it rejoins), and fresh nodes joining at `join_rate` a second.

The omniscient scheduler knows every slot of every node at every instant and starts each task, in
arrival order, at the earliest free slot anywhere (no messages, no delay, no failures): a lower bound
for the mean response time of any scheduler on the same tasks and slots.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

SLOT_CHOICES = ((1, 0.2), (2, 0.3), (4, 0.3), (8, 0.2))      # slots, probability
SHORT, LONG = (1.0, 0.5), (4.0, 0.5)                          # lognormal (median s, sigma) of the two kinds
LONG_SHARE = 0.3
MAX_DURATION = 10.0                                           # seconds: the longest task


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    duration: float
    node: int                   # index of the node it is submitted to (its manager)


@dataclass(frozen=True, slots=True)
class Crash:
    at: float
    node: int
    downtime: float


@dataclass
class Workload:
    slots: list[int]                                    # per initial node
    arrivals: list[Arrival]
    crashes: list[Crash] = field(default_factory=list)
    joins: list[tuple[float, int]] = field(default_factory=list)   # (when, slots) of fresh nodes

    @property
    def mean_duration(self) -> float:
        return sum(a.duration for a in self.arrivals) / max(1, len(self.arrivals))

    @property
    def span(self) -> float:
        return self.arrivals[-1].at if self.arrivals else 0.0


def draw_slots(rng: random.Random) -> int:
    return rng.choices([s for s, _ in SLOT_CHOICES], [p for _, p in SLOT_CHOICES])[0]


def draw_duration(rng: random.Random) -> float:
    median, sigma = LONG if rng.random() < LONG_SHARE else SHORT
    return round(min(MAX_DURATION, max(0.05, rng.lognormvariate(math.log(median), sigma))), 3)


def make(nodes: int, tasks: int, load: float, seed: int, crash_rate: float = 0.0, downtime: float = 5.0,
         join_rate: float = 0.0, start: float = 0.0) -> Workload:
    """Draw a workload. Arrivals begin at `start`; crashes and joins happen while tasks arrive."""
    if nodes < 2 or tasks < 1 or not 0 < load <= 1.0:
        raise ValueError("need nodes >= 2, tasks >= 1 and 0 < load <= 1")
    rng = random.Random(seed)
    slots = [draw_slots(rng) for _ in range(nodes)]
    durations = [draw_duration(rng) for _ in range(tasks)]
    mean = sum(durations) / tasks
    rate = load * sum(slots) / mean                      # arrivals a second that keep `load` of the slots busy
    at, arrivals = start, []
    for duration in durations:
        at += rng.expovariate(rate)
        arrivals.append(Arrival(round(at, 4), duration, rng.randrange(nodes)))
    end = at
    crashes: list[Crash] = []
    if crash_rate > 0:
        t = start + rng.expovariate(crash_rate)
        while t < end:
            crashes.append(Crash(round(t, 4), rng.randrange(nodes), downtime))
            t += rng.expovariate(crash_rate)
    joins: list[tuple[float, int]] = []
    if join_rate > 0:
        t = start + rng.expovariate(join_rate)
        while t < end:
            joins.append((round(t, 4), draw_slots(rng)))
            t += rng.expovariate(join_rate)
    return Workload(slots, arrivals, crashes, joins)


def omniscient(workload: Workload) -> list[float]:
    """Response times (finish - arrival) when every task starts, in arrival order, at the earliest
    free slot of the initial nodes (slots of nodes that join later are not counted: a bound that
    only favours the omniscient scheduler)."""
    free = [0.0] * sum(workload.slots)                   # when each slot is next free
    heapq.heapify(free)
    out = []
    for a in workload.arrivals:
        start = max(a.at, heapq.heappop(free))
        heapq.heappush(free, start + a.duration)
        out.append(start + a.duration - a.at)
    return out
