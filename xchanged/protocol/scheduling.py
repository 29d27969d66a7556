"""The manager's scheduling decision: which waiting tasks to announce now, to whom, and why the
others wait. Pure functions over the manager's tasks and its beliefs about its peers; the manager
carries the decisions out (manager.py: `pump`).

Rules:
- Announcing is pull-based: a task is announced only to peers believed to have an unclaimed free
  slot (their last load, corrected by free_slots.PeerBeliefs), so bids rarely collide. A slot is
  claimed by each peer asked in an open round and each standby bid of ours, and by an award of ours
  to our own contractor not yet answered.
- Waiting tasks go best first: highest level (priority, plus one per failure, plus one per
  AGING_STEP waited), then earliest deadline, then submission order.
- Each peer asked holds a unit of room until it answers, so when more tasks wait than slots are
  free, every task asks one peer (and all free slots fill in one round trip); with room to spare a
  task asks up to `max_candidates` and the bids pick the best (policy.sample_candidates).
- A lone candidate that has succeeded for us before (breaker closed) gets a direct award, with no
  cfp/bid round, unless that task's direct award was rejected before.
- Contractors' local queues (prefetch) are offered only while the backlog is deep and of one
  priority (`use_queues`).
- A round whose best bidder could serve a waiting task of a higher level is outranked: its bids are
  released and that task goes first (`outranked`).
- A task that cannot go says why (`reason`): no peer can run it (and why not), or how many could
  and why they are busy, or why its last round had no bids.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import policy
from .lifecycle import TaskState, Why
from .messages import Load
from .tasks import Round, Task

COORDINATOR_CANDIDATES = 3     # peers asked to coordinate one composite
MAX_LOOKED_AT = 256            # waiting tasks looked at per pump, at most
AGING_RESORT = 5.0             # seconds between re-sorting the backlog for aging (a level per AGING_STEP)


@dataclass(slots=True)
class Candidate:
    """A peer as the manager sees it when choosing whom to ask."""

    id: str
    name: str
    address: str
    slots: int
    free: int
    labels: dict[str, str]
    load: Load                  # its last load signal (for fit checks)
    queue: int = 0              # room in its local queue: used only while our own queue is deep
    coord: int = 0              # composites it would coordinate on top of those it does


@dataclass(slots=True)
class Announcement:
    task: Task
    chosen: list[Candidate]
    direct: bool                # award at once, without a cfp/bid round


class Backlog:
    """The tasks waiting to be announced, best first, kept as tasks change rather than sorted anew at
    every pump (a deep queue made each pump O(tasks log tasks)). Entries are lazy: an entry whose task
    was pushed again, announced or ended is skipped when it comes up. A task that may be waiting must
    be `push`ed whenever it becomes so (queued, or its round closed); `live` names the task ids with a
    current entry, so Node.validate_state can check none was forgotten. Aging (a level per AGING_STEP
    waited) re-sorts the entries every AGING_RESORT seconds."""

    def __init__(self) -> None:
        self._ready: list[tuple[tuple[int, float, int], int, Task]] = []
        self._later: list[tuple[float, int, Task]] = []      # backing off: by not_before
        self.live: dict[str, int] = {}                        # task id -> its current entry
        self._seq = 0
        self._sorted_at = -math.inf

    def push(self, task: Task, now: float) -> None:
        self._seq += 1
        self.live[task.id] = self._seq
        if task.not_before > now:
            heapq.heappush(self._later, (task.not_before, self._seq, task))
        else:
            heapq.heappush(self._ready, (_rank(task, now), self._seq, task))

    def take(self, now: float, most: int) -> Iterator[Task]:
        """Up to `most` waiting tasks, best first. A task taken and not announced must be pushed again."""
        self._ripen(now)
        while self._ready and most > 0:
            _, seq, task = heapq.heappop(self._ready)
            if self._current(seq, task):
                del self.live[task.id]
                most -= 1
                yield task

    def _ripen(self, now: float) -> None:
        while self._later and self._later[0][0] <= now:
            _, seq, task = heapq.heappop(self._later)
            if self._current(seq, task):
                heapq.heappush(self._ready, (_rank(task, now), seq, task))
        if now - self._sorted_at >= AGING_RESORT:
            self._ready = [(_rank(t, now), seq, t) for _, seq, t in self._ready if self._current(seq, t)]
            heapq.heapify(self._ready)
            self._sorted_at = now

    def _current(self, seq: int, task: Task) -> bool:
        return self.live.get(task.id) == seq and task.state is TaskState.QUEUED and task.round is None


def _rank(task: Task, now: float) -> tuple[int, float, int]:
    return -task.level(now), task.spec.deadline_ms or math.inf, task.order


def free_units(candidates: list[Candidate], claims: Counter[str], self_id: str,
               awarded_to_self: int) -> dict[str, int]:
    """Free slots per peer not yet claimed by our open rounds and standby bids (`claims`), nor by
    awards to our own contractor it has not answered yet (it counts them once they arrive)."""
    units = {c.id: c.free - claims[c.id] for c in candidates}
    if awarded_to_self:
        units[self_id] = units.get(self_id, 0) - awarded_to_self
    return units


def use_queues(candidates: list[Candidate], units: dict[str, int], waiting: int, mixed: bool,
               queued_at: Callable[[str], int], turned_away: set[str]) -> bool:
    """Offer contractors' local queues (prefetch) only while the backlog is deep: more tasks wait than
    there are free slots plus two rounds of every slot we know. Then a queued task starts the moment
    a slot frees, and many tasks still follow it. Toward the tail of a workload, a task queued behind
    a busy node while another idles would lengthen it, so free slots alone are used. And only while
    every waiting task has the same priority: a task queued on one node cannot be overtaken there,
    but a less urgent one given a slot that frees elsewhere would start first (`mixed`). Adds the
    queue room (less our attempts awarded or waiting there, `queued_at`) to `units`."""
    if mixed or not any(c.queue for c in candidates):
        return False
    if waiting <= sum(u for u in units.values() if u > 0) + 2 * sum(c.slots for c in candidates):
        return False
    used = False
    for c in candidates:
        room = 0 if c.id in turned_away else c.queue - queued_at(c.id)
        if room > 0:
            units[c.id] = units.get(c.id, 0) + room
            used = True
    return used


def plan(backlog: Backlog, waiting: int, candidates: list[Candidate], units: dict[str, int],
         record: Callable[[str], policy.ContractorRecord], may_award_directly: Callable[[Task, Candidate], bool],
         max_candidates: int, rng: random.Random, now: float,
         local_first: Callable[[Task, list[Candidate]], Candidate | None] = lambda task, chosen: None,
         ) -> list[Announcement]:
    """Whom each waiting task asks, best task first, while unclaimed room lasts (`waiting`: how many
    wait); sets the reason of each task looked at that cannot go yet. At most MAX_LOOKED_AT tasks are
    looked at per pump, so a long queue of tasks no free peer can take costs no more. When the manager
    itself is among those chosen (alone, or with others) and `local_first` finds it the best of them,
    it takes the task at once: no cfp round, no network hop (negotiation.Negotiation._local_first)."""
    room = sum(u for u in units.values() if u > 0)     # unclaimed units, kept up to date below
    out: list[Announcement] = []
    if room <= 0:
        return out
    passed: list[Task] = []
    for left, task in enumerate(backlog.take(now, MAX_LOOKED_AT)):
        fitting: list[Candidate] = []
        reasons: Counter[str] = Counter()
        for c in candidates:
            why = policy.unfit_reason(c.load, task.spec.requirements)
            if why is None and not record(c.id).allows_award(now):
                why = "circuit breaker open"
            if why is None:
                fitting.append(c)
            else:
                reasons[why] += 1
        free = [c for c in fitting if units.get(c.id, 0) > 0]
        if not free:
            task.says(*waiting_reason(fitting, reasons, task))
            passed.append(task)
            continue
        d = max(1, min(max_candidates, room // max(1, waiting - left)))
        chosen = policy.sample_candidates(free, units, task.avoid, d, rng)
        own = local_first(task, chosen)
        if own is not None:
            chosen = [own]
        for c in chosen:
            units[c.id] -= 1
        room -= len(chosen)                             # each was a free (positive) unit
        direct = own is not None or (len(chosen) == 1 and may_award_directly(task, chosen[0]))
        out.append(Announcement(task, chosen, direct))
        if room <= 0:
            break
    for task in passed:                                 # still waiting, in their turn
        backlog.push(task, now)
    return out


def plan_coordinators(backlog: Backlog, candidates: list[Candidate],
                      record: Callable[[str], policy.ContractorRecord],
                      may_award_directly: Callable[[Task, Candidate], bool], rng: random.Random,
                      now: float) -> list[Announcement]:
    """Whom each waiting composite asks to coordinate it: peers with room for one more coordination
    (no slot is needed), those with the most room first; COORDINATOR_CANDIDATES of them bid."""
    room = {c.id: c.coord for c in candidates if c.coord > 0 and record(c.id).allows_award(now)}
    out: list[Announcement] = []
    passed: list[Task] = []
    for task in backlog.take(now, MAX_LOOKED_AT):
        free = [c for c in candidates if room.get(c.id, 0) > 0]
        if not free:
            task.says(Why.BUSY, "waiting for a peer with room to coordinate it")
            passed.append(task)
            continue
        chosen = policy.sample_candidates(free, room, task.avoid, COORDINATOR_CANDIDATES, rng)
        for c in chosen:
            room[c.id] -= 1
        out.append(Announcement(task, chosen, len(chosen) == 1 and may_award_directly(task, chosen[0])))
    for task in passed:
        backlog.push(task, now)
    return out


def waiting_reason(fitting: list[Candidate], reasons: Counter[str], task: Task) -> tuple[str, str]:
    """Why a task that no free peer can take waits: (code, sentence)."""
    if not fitting:
        if not reasons:
            return Why.NO_PEERS, "no peers known yet"
        return Why.NO_PEER_FITS, "no peer can run it: " + "; ".join(f"{n} {why}" for why, n in reasons.items())
    if task.why == Why.NO_BIDS:
        return task.why, task.reason        # what its last round heard says more
    withheld = sum(1 for c in fitting if c.load.slots_free == 0 and c.load.running < c.slots)
    parts = [f"{len(fitting) - withheld} busy"] if len(fitting) > withheld else []
    if withheld:
        parts.append(f"{withheld} not taking work (cpu or memory overloaded)")
    parts += [f"{n} {why}" for why, n in reasons.items()]
    return Why.BUSY, f"waiting for a free slot: {len(fitting)} peers can run it; " + "; ".join(parts)


def outranked(task: Task, best: Candidate | None, active: Iterable[Task], now: float) -> bool:
    """Is a waiting task of a higher level than `task` able to use the best bidder's room?"""
    if best is None or best.load is None:
        return False
    level = task.level(now)
    for other in active:
        if other is task or other.state is not TaskState.QUEUED or other.round is not None or other.not_before > now:
            continue
        if other.level(now) > level and policy.unfit_reason(best.load, other.spec.requirements) is None:
            return True
    return False


def why_no_bids(rnd: Round) -> str:
    silent = len(rnd.candidates) - len(rnd.refusals)
    counts = Counter(r.reason for r in rnd.refusals.values())
    parts = [f"{n} refused: {why}" for why, n in counts.most_common()]
    if silent > 0:
        parts.append(f"{silent} did not answer")
    return "no bids (" + "; ".join(parts) + ")" if parts else "no bids"
