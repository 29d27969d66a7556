"""The manager's negotiation: announce a task to candidates, collect their bids, award the best.

`Manager` (manager.py) builds on this class: it holds the manager's state, and the half of its work
that ends with an award; what follows an award (accepts, heartbeats, results, timeouts, retries) is
in manager.py. Whom to ask and in what order is decided in scheduling.py.

Rules:
- Every round and every award has its own attempt number (fencing): a bid for another round than
  the task's open one, or one after its window, is answered with `reject_bid`.
- The round closes when every candidate answered or the bid window ends; the best bid wins, the
  others stay on standby until the winner accepts (a `reject` or no answer within the award timeout
  awards the next standby bid). If a waiting task of a higher level fits the best bidder by then, the
  bids are released and that task goes first (priority beats an open round).
- A lone free candidate that has succeeded for us before (breaker closed) gets a direct award, with
  no cfp/bid round: the contractor's admission check on the award stands in for its bid.
- Refusals and rejects for lack of room ("busy") put a task back without back-off; other ones back
  off (NO_BID_BACKOFF), and a task whose direct award was rejected asks with a cfp from then on.
- Every award is audited (with the winning bid's signed frame) and persisted before it is sent.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable

from . import policy, scheduling
from .codec import Envelope
from .effects import BEFORE, Audit, Outbox, PersistTask, Send
from .free_slots import PeerBeliefs
from .lifecycle import AttemptState, TaskState, Why
from .messages import BUSY_CODES, Award, Bid, Cfp, PartResult, RefusalCode, Refuse, Reject, RejectBid
from .observe import Observations
from .scheduling import Candidate
from .tasks import FINISHED_RETENTION, Attempt, Round, Task, TaskIndex

A, T, W = AttemptState, TaskState, Why
NO_BID_BACKOFF = (0.2, 5.0)     # re-announce delay after a round without bids: first, cap
DONE_TAILS_MAX = 1 << 20        # characters of output tails an award may carry with a composite's done parts


def done_parts(task: Task) -> list[PartResult]:
    """A composite's finished parts, for its next coordinator; without output tails when keeping
    them would make the award too large for one frame (the tails stay with the manager)."""
    parts = list(task.parts.values())
    if sum(len(p.stdout_tail) + len(p.stderr_tail) for p in parts) > DONE_TAILS_MAX:
        parts = [replace(p, stdout_tail="", stderr_tail="") for p in parts]
    return parts


@dataclass(slots=True)
class ManagerSettings:
    self_id: str
    bid_window: float
    award_timeout: float
    heartbeat_timeout: float
    max_candidates: int
    direct_award: bool = True       # one candidate only: award without a cfp/bid round (see _award_direct)
    finished_retention: int = FINISHED_RETENTION   # finished tasks kept in memory (see tasks.TaskIndex)


class Negotiation:
    """The manager's state, and the negotiating half of its work: announce, collect bids, award."""

    def __init__(self, settings: ManagerSettings, outbox: Outbox, rng: random.Random,
                 lookup: Callable[[str], tuple[str, str]]):
        self.settings = settings
        self.lookup = lookup                           # peer id -> (address, name)
        self.out = outbox
        self.rng = rng
        self.index = TaskIndex(settings.finished_retention)
        self.beliefs = PeerBeliefs()
        self.records: dict[str, policy.ContractorRecord] = {}
        self.speeds = policy.SpeedTable()
        self.known: dict[str, Candidate] = {}          # the candidates of the last pump, by id
        self.queue_ok = False                          # our queue is deep: contractors may queue our tasks
        self.bid_first: set[str] = set()               # tasks whose direct award was rejected: cfp from now on
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._order = 0
        self.stats: Counter[str] = Counter()
        self.finished_parts: list[Task] = []           # parts that ended since the coordinator last looked
        self.backlog = scheduling.Backlog()            # tasks waiting to be announced, best first
        self.composites = scheduling.Backlog()         # composites waiting for a coordinator
        self.claims: Counter[str] = Counter()          # peer -> slots held there by our open rounds and standby bids
        self.open_rounds = 0                           # of tasks that take a slot
        self.observed = Observations()                 # timings for /metrics and stats (observe.py)

    @property
    def tasks(self) -> dict[str, Task]:
        """Every task in memory: the unfinished ones and the most recently finished (read-only use)."""
        return self.index.tasks

    def queued(self) -> int:
        return self.index.count(T.QUEUED)

    # -- announcing -----------------------------------------------------------------------------------

    def pump(self, candidates: list[Candidate], now: float, wall_ms: int) -> None:
        """Announce queued tasks, best first, while some fitting peer has an unclaimed free slot
        (the decision: scheduling.py)."""
        self.known = {c.id: c for c in candidates}
        self_id, index = self.settings.self_id, self.index
        units = scheduling.free_units(candidates, self.claims, self_id, index.live[A.AWARDED][self_id])
        waiting = sum(index.queued_levels.values()) - self.open_rounds       # queued, not being announced
        self.queue_ok = scheduling.use_queues(candidates, units, waiting, len(index.queued_levels) > 1,
                                              index.queued_at, self.beliefs.turned_away)
        announcements = scheduling.plan(self.backlog, waiting, candidates, units, self._record,
                                        self._may_award_directly, self.settings.max_candidates, self.rng, now,
                                        lambda task, chosen: self._local_first(task, chosen, now))
        if self.composites.live:
            announcements += scheduling.plan_coordinators(self.composites, candidates, self._record,
                                                          self._may_award_directly, self.rng, now)
        for a in announcements:
            with self.out.caused_by(a.task.stimulus):
                if a.direct:
                    self._award_direct(a.task, a.chosen[0], now, wall_ms)
                else:
                    self._announce(a.task, a.chosen, now, wall_ms)

    def _may_award_directly(self, task: Task, cand: Candidate) -> bool:
        """A peer we may award to without a bid: it has run tasks for us and its breaker is closed."""
        record = self.records.get(cand.id)
        return (self.settings.direct_award and task.id not in self.bid_first and record is not None
                and record.successes > 0 and record.breaker == policy.CLOSED)

    def _local_first(self, task: Task, chosen: list[Candidate], now: float) -> Candidate | None:
        """This node, if it is among `chosen` and the best of them by the score their bids would get
        from the loads we hold (ours is current; theirs as last gossiped): it is then the best bidder
        without asking, so the task is awarded to it at once, recorded and audited as any award, and
        award, accept and result never leave the host (issue 13). Alone, it is trivially the best: a
        bid from itself would only cost two passes through the loop (and, on a loaded host, a bid
        window missed and a back-off). Its contractor checks admission on
        the award as on a cfp; a reject sends the task through cfp rounds from then on (bid_first)."""
        own = next((c for c in chosen if c.id == self.settings.self_id), None)
        if own is None or not self.settings.direct_award or task.id in self.bid_first:
            return None
        estimates = {c.id: self._estimate(task, c, now) for c in chosen}
        return own if policy.rank(estimates)[0] == own.id else None

    def _estimate(self, task: Task, cand: Candidate, now: float) -> float:
        """The score of the bid `cand` would make for `task`, from its load."""
        req, load = task.spec.requirements, cand.load
        offer = Bid(task.id, 0, slots=cand.slots, slots_free=max(0, cand.free - 1),
                    cpu_percent=load.cpu_percent if load else 0.0, mem_available=load.mem_available if load else 0,
                    affinity=policy.affinity(cand.labels, req))
        return policy.score(offer, self._record(cand.id), req, now, cand.id in task.avoid,
                            self.speeds.relative(task.spec.command, cand.id), cand.id == self.settings.self_id)

    def _announce(self, task: Task, chosen: list[Candidate], now: float, wall_ms: int) -> None:
        attempt = task.new_attempt()
        task.round = Round(attempt, {c.id for c in chosen}, now + self.settings.bid_window)
        if task.holds_slots:
            self.claims.update(task.round.candidates)
            self.open_rounds += 1
        spec = task.spec
        deadline_in = spec.deadline_ms - wall_ms if spec.deadline_ms is not None else None
        cfp = Cfp(task.id, attempt, spec.requirements, task.level(now), int(self.settings.bid_window * 1000),
                  queue_ok=self.queue_ok,
                  command=spec.command, est_runtime_ms=int(spec.est_runtime * 1000) if spec.est_runtime else None,
                  deadline_in_ms=deadline_in, composite=spec.composite is not None, user=spec.user,
                  cwd=spec.cwd)
        self.out.emit(Send, targets=tuple((c.id, c.address) for c in chosen), message=cfp)
        self._arm(task, task.round.deadline)
        self.stats["announcements"] += 1

    def _award_direct(self, task: Task, cand: Candidate, now: float, wall_ms: int) -> None:
        """Only one peer (one we know) can take the task now, so there is nothing to compare: skip the
        cfp/bid round trip and award at once. The award is the offer and its accept the bid; the
        contractor checks admission on the award as it would on a cfp and rejects what does not fit.
        This halves the hops between a freed slot and its next start (pull-based work stealing)."""
        self._set_standby(task, [(cand.id, self._estimate(task, cand, now), None)])
        self.stats["direct_awards"] += 1
        self._award_next(task, now, wall_ms)

    # -- bids and awards ------------------------------------------------------------------------------

    def on_bid(self, env: Envelope, now: float, wall_ms: int) -> None:
        bid: Bid = env.message
        task = self.tasks.get(bid.task_id)
        rnd = task.round if task else None
        if task is None or rnd is None or rnd.attempt != bid.attempt or env.sender not in rnd.candidates \
                or now > rnd.deadline:
            self.stats["late_bids"] += 1
            self._send(env.sender, RejectBid(bid.task_id, bid.attempt, "bid window closed"))
            return
        rnd.bids[env.sender] = env
        if task.holds_slots:                    # a coordinator's bid speaks of coordinations, not slots
            self.beliefs.on_bid(env.sender, bid.slots_free, bid.queued)
        if len(rnd.bids) + len(rnd.refusals) >= len(rnd.candidates):
            self._close_round(task, now, wall_ms)

    def on_refuse(self, env: Envelope, now: float, wall_ms: int) -> None:
        refuse: Refuse = env.message
        task = self.tasks.get(refuse.task_id)
        rnd = task.round if task else None
        if task is None or rnd is None or rnd.attempt != refuse.attempt or env.sender not in rnd.candidates:
            return
        rnd.refusals[env.sender] = refuse
        if refuse.code in BUSY_CODES and task.holds_slots:
            self.beliefs.busy(env.sender)
        if len(rnd.bids) + len(rnd.refusals) >= len(rnd.candidates):
            self._close_round(task, now, wall_ms)

    def _close_round(self, task: Task, now: float, wall_ms: int) -> None:
        rnd = self._drop_round(task)
        if rnd is None:
            return
        self.observed.observe("bid_window", now - (rnd.deadline - self.settings.bid_window))
        req = task.spec.requirements
        command = task.spec.command
        scored = {peer: policy.score(env.message, self._record(peer), req, now, peer in task.avoid,
                                     self.speeds.relative(command, peer), peer == self.settings.self_id)
                  for peer, env in rnd.bids.items()}
        order = policy.rank(scored)
        if not order:
            policy_only = bool(rnd.refusals) and len(rnd.refusals) == len(rnd.candidates) and all(
                r.code == RefusalCode.POLICY for r in rnd.refusals.values())
            task.says(W.POLICY if policy_only else W.NO_BIDS, scheduling.why_no_bids(rnd))
            if len(rnd.refusals) == len(rnd.candidates) and all(r.code in BUSY_CODES for r in rnd.refusals.values()):
                task.not_before = now           # they are full, not unable: wait for the next free slot
            else:
                self._back_off(task, now)
            self._wait(task, now)
            return
        if scheduling.outranked(task, self.known.get(order[0]), self.index.active.values(), now):
            for peer in rnd.bids:               # a more urgent task arrived: it gets the room instead
                self._send(peer, RejectBid(task.id, rnd.attempt, "a higher-priority task came first"))
            task.not_before = now
            self.stats["outranked"] += 1
            self._wait(task, now)
            return
        self._set_standby(task, [(peer, scored[peer], rnd.bids[peer]) for peer in order])
        self._award_next(task, now, wall_ms, attempt=rnd.attempt)

    def on_reject(self, env: Envelope, now: float, wall_ms: int) -> None:
        rej: Reject = env.message
        task, att = self._attempt_of(env, rej.task_id, rej.attempt)
        if task is None or att is None or att.state is not A.AWARDED:
            return
        self.index.move_attempt(task, att, A.REJECTED, rej.code, f"{rej.code}: {rej.reason}", wall_ms)
        if task.holds_slots:
            self.beliefs.busy(env.sender)
        task.stimulus = self.out.stimulus_id
        self._audit(task, "reject", wall_ms, att, message=env.raw)
        self._award_next(task, now, wall_ms)

    def _award_next(self, task: Task, now: float, wall_ms: int, attempt: int | None = None) -> None:
        task.award_deadline = None
        if not task.standby:
            last = task.attempts[-1] if task.attempts else None
            if task.state is not T.QUEUED:
                self.index.move(task, T.QUEUED)
            task.says(W.ALL_REJECTED,
                      "every bidder rejected the award" + (f" (last: {last.reason})" if last and last.reason else ""))
            task.not_before = now
            if last is not None and last.state is A.REJECTED and last.why not in BUSY_CODES:
                self._back_off(task, now)                 # it cannot run there: don't hammer it
                self.bid_first.add(task.id)               # and ask with a cfp next time (a refusal adds no attempt)
            self._wait(task, now)
            self._persist(task)
            return
        peer, score, bid_env = task.standby.pop(0)
        if task.holds_slots:
            self.claims[peer] -= 1
        attempt = attempt if attempt is not None else task.new_attempt()
        taken = (bid_env.incarnation, bid_env.seq) if bid_env is not None and not bid_env.message.queued else None
        if task.holds_slots and peer != self.settings.self_id:   # our own free slots are known, not believed
            self.beliefs.awarded(peer, task.id, attempt, taken)  # a queued bid holds no slot yet
        att = Attempt(attempt, peer, self.lookup(peer)[1], A.AWARDED, score, awarded=wall_ms,
                      estimate_ms=bid_env.message.est_runtime_ms if bid_env else None)
        self.index.award(task, att)
        self.index.move(task, T.ASSIGNED)
        task.says("", "")
        task.backoff = 0.0
        task.award_deadline = now + self.settings.award_timeout
        self._record(peer).awarded(now)
        self._arm(task, task.award_deadline)
        extra: dict[str, Any] = {"message": bid_env.raw} if bid_env is not None else {"direct": True}
        self._audit(task, "award", wall_ms, att, score=round(score, 4), **extra)
        self._persist(task)
        self._send(peer, Award(task.id, attempt, task.spec, score, queue_ok=self.queue_ok, done=done_parts(task)))
        self.stats["awards"] += 1

    def _release_standby(self, task: Task, reason: str) -> None:
        for peer, _, env in task.standby:
            if env is not None:                           # a direct award holds no reservation
                self._send(peer, RejectBid(task.id, env.message.attempt, reason))
        self._set_standby(task, [])

    # -- what holds a slot at a peer, and what waits ------------------------------------------------

    def _set_standby(self, task: Task, entries: list[tuple[str, float, Envelope | None]]) -> None:
        """The bids kept in reserve for an award: each claims its bidder's slot until released."""
        if task.holds_slots:
            self.claims.subtract(peer for peer, _, _ in task.standby)
            self.claims.update(peer for peer, _, _ in entries)
        task.standby = entries

    def _drop_round(self, task: Task) -> Round | None:
        """Close the task's open round (if any): the peers it asked no longer hold a slot for it."""
        rnd, task.round = task.round, None
        if rnd is not None and task.holds_slots:
            self.claims.subtract(rnd.candidates)
            self.open_rounds -= 1
        return rnd

    def _drop_candidate(self, task: Task, peer: str) -> None:
        """A peer died: it no longer holds anything for this task."""
        if task.round is not None and peer in task.round.candidates:
            task.round.candidates.discard(peer)
            if task.holds_slots:
                self.claims[peer] -= 1
        if any(p == peer for p, _, _ in task.standby):
            self._set_standby(task, [s for s in task.standby if s[0] != peer])

    def _wait(self, task: Task, now: float) -> None:
        """The task is queued with no open round: it waits for its turn to be announced."""
        (self.backlog if task.holds_slots else self.composites).push(task, now)

    def _back_off(self, task: Task, now: float) -> None:
        task.backoff = min(max(task.backoff * 2, NO_BID_BACKOFF[0]), NO_BID_BACKOFF[1])
        task.not_before = now + task.backoff
        self._arm(task, task.not_before)

    # -- shared ---------------------------------------------------------------------------------------

    def _attempt_of(self, env: Envelope, task_id: str, attempt: int) -> tuple[Task | None, Attempt | None]:
        task = self.tasks.get(task_id)
        att = task.current if task else None
        if att is None or att.attempt != attempt or att.node != env.sender:
            return task, None
        return task, att

    def _record(self, peer: str) -> policy.ContractorRecord:
        record = self.records.get(peer)
        if record is None:
            record = self.records[peer] = policy.ContractorRecord()
        return record

    def _arm(self, task: Task, when: float) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, task.id))

    def _send(self, peer: str, message: Any) -> None:
        self.out.emit(Send, targets=((peer, self.lookup(peer)[0]),), message=message)

    def _audit(self, task: Task, event: str, wall_ms: int, att: Attempt | None = None, **fields: Any) -> None:
        entry: dict[str, Any] = {"event": event, "task": task.id}
        if att is not None:
            entry.update(attempt=att.attempt)
        entry["manager"] = self.settings.self_id
        if att is not None:
            entry["contractor"] = att.node
        if task.spec.parent:
            entry["parent"] = task.spec.parent      # a part: every level of a tree of contracts is audited
        entry.update(fields, time_ms=wall_ms, stimulus=self.out.stimulus_id)
        self.out.emit(Audit, entry=entry)

    def _persist(self, task: Task, when: str = BEFORE) -> None:
        if not task.ephemeral:                      # a composite's parts die with their coordination
            self.out.emit(PersistTask, doc=task.to_doc(), when=when)
