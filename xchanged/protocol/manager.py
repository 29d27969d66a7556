"""The manager side of the Contract Net: announce, collect bids, award, follow up, retry.

The task and attempt lifecycles are tables in lifecycle.py; every change of state goes through
`TaskIndex` (tasks.py). Whom to ask and in what order is decided in scheduling.py; what we believe
of each peer's free slots is kept in free_slots.py. This module reacts to inputs.

Rules:
- Every award has its own attempt number; every message of a contract names (task_id, attempt),
  and a message about any other attempt than the current one is stale: a late bid gets a
  `reject_bid`, a late accept or progress a `cancel`, a late result is acknowledged and kept as a
  superseded attempt, and never changes the task (exactly one recorded completion).
- The round closes when every candidate answered or the bid window ends; the best bid wins, the
  others stay on standby until the winner accepts (a `reject` or no answer within the award timeout
  awards the next standby bid). If a waiting task of a higher level fits the best bidder by then, the
  bids are released and that task goes first (priority beats an open round).
- Refusals and rejects for lack of room ("busy") put a task back without back-off; other ones back
  off, and a task whose direct award was rejected asks with a cfp from then on.
- An attempt accepted into a contractor's queue is held to the start the contractor promised, plus a
  margin (`_promise_start`); past it, the attempt is reclaimed and the task re-announced.
- An attempt is lost when its contractor is declared dead or stays silent past the heartbeat
  deadline, and timed out past its timeout plus a margin: either way the task is re-announced,
  preferring other nodes. Failures count against `retries` and raise the priority one level; losses
  have their own, larger cap.
- Every change of a task is persisted (`PersistTask`) before the message that depends on it is sent;
  a submitted or cancelled task is on disk before the client's reply (effects.py: SYNC, BEFORE).
- After a restart (`recover`) queued tasks are announced again; an assigned or running attempt is
  re-attached when its contractor reports in (`progress` or `result`; a `progress` of an attempt whose
  `accept` we never recorded counts as the accept) and is lost, and the task re-announced, when the
  contractor stays silent past the heartbeat deadline. A restarted contractor reports the attempts it
  had running as `result` outcome `lost`, which re-announces them at once.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from . import policy, scheduling
from .codec import Envelope
from .effects import BEFORE, SYNC, Audit, Outbox, PersistTask, Reply, Send, StoreOutput
from .errors import LocalProtocolError
from .free_slots import PeerBeliefs
from .lifecycle import (
    HOLDS_SLOT,
    TASK_OF_ATTEMPT,
    TERMINAL,
    AttemptState,
    TaskState,
    Why,
)
from .messages import (
    BUSY_CODES,
    PRIORITIES,
    Accept,
    Ack,
    Award,
    Bid,
    Cancel,
    Cfp,
    Load,
    Outcome,
    Progress,
    Refuse,
    Reject,
    RejectBid,
    Result,
    TaskSpec,
)
from .scheduling import Candidate
from .tasks import FINISHED_RETENTION, Attempt, Round, Task, TaskIndex

A, T, W = AttemptState, TaskState, Why
MAX_LOST_ATTEMPTS = 10
RUN_MARGIN = 5.0                # seconds the manager adds to a task's timeout before acting itself
NO_BID_BACKOFF = (0.2, 5.0)     # re-announce delay after a round without bids: first, cap
QUEUE_WAIT_CAP = 60.0           # seconds an attempt may wait in a contractor's queue, whatever it promises
OUTCOMES = frozenset(str(o) for o in Outcome)
FAILED_ATTEMPT: dict[Outcome, tuple[AttemptState, Why]] = {Outcome.TIMEOUT: (A.TIMEOUT, W.TIMEOUT), Outcome.ERROR: (A.FAILED, W.START_ERROR)}
# names the drivers import (to move to lifecycle.py imports)
QUEUED, ASSIGNED, RUNNING = T.QUEUED, T.ASSIGNED, T.RUNNING


@dataclass(slots=True)
class ManagerSettings:
    self_id: str
    bid_window: float
    award_timeout: float
    heartbeat_timeout: float
    max_candidates: int
    direct_award: bool = True       # one candidate only: award without a cfp/bid round (see _award_direct)
    finished_retention: int = FINISHED_RETENTION   # finished tasks kept in memory (see tasks.TaskIndex)


class Manager:
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

    @property
    def tasks(self) -> dict[str, Task]:
        """Every task in memory: the unfinished ones and the most recently finished (read-only use)."""
        return self.index.tasks

    def queued(self) -> int:
        return self.index.count(T.QUEUED)

    # -- client requests ------------------------------------------------------------------------

    def submit(self, request_id: int, task_id: str, spec: TaskSpec, now: float, wall_ms: int) -> None:
        if task_id in self.tasks:
            self.out.emit(Reply, request_id=request_id, ok=False, error=f"task {task_id} already exists")
            return
        self._order += 1
        task = Task(task_id, spec, wall_ms, self._order, queued_since=now, stimulus=self.out.stimulus_id)
        self.index.add(task)
        self.stats["submitted"] += 1
        self._persist(task, SYNC)                # the reply promises the task is kept: on disk first
        self.out.emit(Reply, request_id=request_id, ok=True, result=task.to_doc())

    def cancel(self, request_id: int, task_id: str, now: float, wall_ms: int) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            self.out.emit(Reply, request_id=request_id, ok=False, error=f"no such task: {task_id}")
            return
        if task.state not in TERMINAL:
            self._stop_current(task, A.CANCELLED, W.CANCELLED, "cancelled by user", wall_ms)
            self._release_standby(task, "task cancelled")
            self._finish(task, T.CANCELLED, None, W.CANCELLED, "cancelled by user", wall_ms)
            self._audit(task, "cancel", wall_ms)
            self._persist(task, SYNC)
        self.out.emit(Reply, request_id=request_id, ok=True, result=task.to_doc())

    def recover(self, docs: list[dict[str, Any]], now: float) -> None:
        """Resume tasks from the store after a restart; in-flight attempts wait for their contractor."""
        for doc in docs:
            task = Task.from_doc(doc)
            self._order = max(self._order, task.order)
            task.queued_since, task.stimulus = now, self.out.stimulus_id
            self.index.add(task)
            if task.state in (T.ASSIGNED, T.RUNNING):
                task.last_heard = now
                self._arm(task, now + self.settings.heartbeat_timeout)
                if task.state is T.RUNNING and task.spec.timeout:     # conservative: the full timeout again
                    task.run_deadline = now + task.spec.timeout + RUN_MARGIN + 0.1 * task.spec.timeout
                    self._arm(task, task.run_deadline)

    # -- messages from contractors --------------------------------------------------------------

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
        if refuse.code in BUSY_CODES:
            self.beliefs.busy(env.sender)
        if len(rnd.bids) + len(rnd.refusals) >= len(rnd.candidates):
            self._close_round(task, now, wall_ms)

    def on_accept(self, env: Envelope, now: float, wall_ms: int) -> None:
        acc: Accept = env.message
        task, att = self._attempt_of(env, acc.task_id, acc.attempt)
        if task is None or att is None:
            self._send(env.sender, Cancel(acc.task_id, acc.attempt, "attempt superseded"))
            return
        if not acc.queued:                      # a queued attempt takes its slot when it starts
            self.beliefs.ledger.confirmed(env.sender, task.id, att.attempt, (env.incarnation, env.seq))
        if att.state is not A.AWARDED:
            return
        task.award_deadline, task.last_heard, task.stimulus = None, now, self.out.stimulus_id
        self._arm(task, now + self.settings.heartbeat_timeout)
        if acc.queued:
            self.index.move_attempt(task, att, A.WAITING)
            task.says(W.QUEUED_THERE,
                      f"accepted by {att.node_name or att.node}, queued there for a slot (position {acc.queued})")
            self._promise_start(task, now, acc.est_start_ms, first=True)
        else:
            self._started(task, att, now, wall_ms)
        self._release_standby(task, "another bid was accepted")
        self._audit(task, "accept", wall_ms, att, score=att.score, message=env.raw)
        self._persist(task)

    def on_reject(self, env: Envelope, now: float, wall_ms: int) -> None:
        rej: Reject = env.message
        task, att = self._attempt_of(env, rej.task_id, rej.attempt)
        if task is None or att is None or att.state is not A.AWARDED:
            return
        self.index.move_attempt(task, att, A.REJECTED, rej.code, f"{rej.code}: {rej.reason}", wall_ms)
        self.beliefs.busy(env.sender)
        task.stimulus = self.out.stimulus_id
        self._audit(task, "reject", wall_ms, att, message=env.raw)
        self._award_next(task, now, wall_ms)

    def on_progress(self, env: Envelope, now: float, wall_ms: int = 0) -> None:
        prog: Progress = env.message
        task, att = self._attempt_of(env, prog.task_id, prog.attempt)
        if task is None or att is None:
            self._send(env.sender, Cancel(prog.task_id, prog.attempt, "attempt superseded"))
            return
        task.last_heard = now
        if prog.pid is not None:                # running: it holds a slot (queued ones do not yet)
            self.beliefs.ledger.confirmed(env.sender, task.id, att.attempt, (env.incarnation, env.seq))
        self._arm(task, now + self.settings.heartbeat_timeout)
        if att.state is A.AWARDED:              # its accept was lost (say, we restarted): re-attach
            task.award_deadline = None
            self.index.move_attempt(task, att, A.WAITING)
            self._release_standby(task, "another bid was accepted")
            if prog.pid is None:
                self._promise_start(task, now, prog.est_start_ms or 0, first=True)
                self._persist(task)
        elif att.state is A.WAITING and prog.pid is None and prog.est_start_ms is not None:
            self._promise_start(task, now, prog.est_start_ms)
        if att.state is A.WAITING and prog.pid is not None:      # it started (maybe after a queue)
            self._started(task, att, now, wall_ms, elapsed=prog.elapsed_ms / 1000)
            self._persist(task)

    def on_result(self, env: Envelope, now: float, wall_ms: int) -> None:
        res: Result = env.message
        self._send(env.sender, Ack(res.task_id, res.attempt))
        task = self.tasks.get(res.task_id)
        current = task.current if task is not None else None
        ending = current is not None and current.attempt == res.attempt and current.node == env.sender
        known = self.known.get(env.sender)
        holding = self.index.holding[env.sender] - (current is not None and ending and current.state in HOLDS_SLOT)
        at_most = None if known is None else known.slots - holding
        self.beliefs.result(env.sender, res.task_id, res.attempt, (env.incarnation, env.seq), res.slot_refilled,
                            at_most)
        if task is None:                        # unknown, or finished and evicted: acked, nothing else
            return
        att = next((a for a in task.attempts if a.attempt == res.attempt and a.node == env.sender), None)
        if att is None:
            return
        if not ending or task.state in TERMINAL:
            if res.outcome in (Outcome.EXITED, Outcome.TIMEOUT, Outcome.ERROR) \
                    and att.state in (A.LOST, A.REJECTED):
                att.exit_code = res.exit_code
                self.index.move_attempt(task, att, A.SUPERSEDED, W.LATE_RESULT,
                                        f"late result ({res.outcome}) of a superseded attempt", wall_ms)
                self._persist(task)
            return
        task.stimulus = self.out.stimulus_id
        if task.standby:                        # a result before the accept (we restarted): it ran
            self._release_standby(task, "another bid was accepted")
        att.exit_code = res.exit_code
        record = self._record(env.sender)
        self.out.emit(StoreOutput, task_id=task.id, attempt=att.attempt, stdout=res.stdout, stderr=res.stderr)
        self._audit(task, "result", wall_ms, att, outcome=str(res.outcome), exit_code=res.exit_code)
        if res.outcome == Outcome.EXITED and res.exit_code == 0:
            self.index.move_attempt(task, att, A.SUCCEEDED, ended=wall_ms)
            record.succeeded()
            if att.estimate_ms is not None:
                record.observe_runtime(att.estimate_ms, res.runtime_ms)
            self.speeds.observe(task.spec.argv[0], env.sender, res.runtime_ms)
            self._finish(task, T.SUCCEEDED, 0, "", "", wall_ms)
            self.stats["succeeded"] += 1
        elif res.outcome == Outcome.CANCELLED:
            self.index.move_attempt(task, att, A.CANCELLED, W.CANCELLED, res.reason or "cancelled", wall_ms)
            self._retry(task, now, wall_ms, failure=False, reason=att.reason)
        elif res.outcome == Outcome.LOST:
            self.index.move_attempt(task, att, A.LOST, W.CONTRACTOR_RESTARTED,
                                    res.reason or "contractor lost the attempt", wall_ms)
            self._retry(task, now, wall_ms, failure=False, reason=att.reason)
        else:
            state, why = FAILED_ATTEMPT.get(Outcome(res.outcome), (A.FAILED, W.EXIT_CODE)) \
                if res.outcome in OUTCOMES else (A.FAILED, W.EXIT_CODE)
            text = res.reason or (f"exit code {res.exit_code}" if res.exit_code is not None else str(res.outcome))
            self.index.move_attempt(task, att, state, why, text, wall_ms)
            record.failed(now)
            self._retry(task, now, wall_ms, failure=True, reason=att.reason, exit_code=res.exit_code)
        self._persist(task)

    # -- membership and time --------------------------------------------------------------------

    def on_load(self, env: Envelope) -> None:
        """A newer load signal of a peer: its free slots, less our awards it could not show yet."""
        load: Load = env.message
        self.beliefs.on_load(env.sender, load.slots_free, (env.incarnation, env.seq), self._is_live)

    def _is_live(self, task_id: str, attempt: int) -> bool:
        task = self.index.active.get(task_id)
        att = task.current if task is not None else None
        return att is not None and att.attempt == attempt

    def peer_died(self, peer_id: str, now: float, wall_ms: int) -> None:
        self.beliefs.died(peer_id)
        for task in list(self.index.active.values()):
            att = task.current
            if att is not None and att.node == peer_id:
                task.stimulus = self.out.stimulus_id
                self.index.move_attempt(task, att, A.LOST, W.CONTRACTOR_DEAD, "contractor declared dead", wall_ms)
                self._audit(task, "reassign", wall_ms, att, reason=att.reason)
                self._retry(task, now, wall_ms, failure=False, reason=att.reason)
                self._persist(task)
            elif task.round is not None and peer_id in task.round.candidates:
                task.round.candidates.discard(peer_id)
            task.standby = [s for s in task.standby if s[0] != peer_id]

    def on_timer(self, now: float, wall_ms: int) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, task_id = heapq.heappop(self._timers)
            task = self.tasks.get(task_id)
            if task is None or task.state in TERMINAL:
                continue
            att = task.current
            if task.round is not None and now >= task.round.deadline:
                self._close_round(task, now, wall_ms)
            elif att is not None and att.state is A.AWARDED and task.award_deadline is not None \
                    and now >= task.award_deadline:
                self.index.move_attempt(task, att, A.REJECTED, W.NO_ANSWER, "no answer to the award", wall_ms)
                self._send(att.node, Cancel(task.id, att.attempt, "award timed out"))
                self._award_next(task, now, wall_ms)
            elif att is not None and task.wait_deadline is not None and now >= task.wait_deadline:
                self._stop_current(task, A.LOST, W.PROMISE_BROKEN,
                                   f"queued at {att.node_name or att.node} past its promised start", wall_ms)
                self._audit(task, "reassign", wall_ms, att, reason=att.reason)
                self.stats["reclaimed"] += 1
                self._retry(task, now, wall_ms, failure=False, reason=att.reason)
                self._persist(task)
            elif att is not None and task.run_deadline is not None and now >= task.run_deadline:
                self._stop_current(task, A.TIMEOUT, W.RUN_DEADLINE,
                                   f"no result {task.spec.timeout:g}s timeout + margin", wall_ms)
                self._record(att.node).failed(now)
                self._retry(task, now, wall_ms, failure=True, reason=att.reason)
                self._persist(task)
            elif att is not None and task.award_deadline is None and \
                    now >= task.last_heard + self.settings.heartbeat_timeout:
                self._stop_current(task, A.LOST, W.NO_HEARTBEAT, "no heartbeat from the contractor", wall_ms)
                self._retry(task, now, wall_ms, failure=False, reason="no heartbeat from the contractor")
                self._persist(task)

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else math.inf

    # -- scheduling -----------------------------------------------------------------------------

    def pump(self, candidates: list[Candidate], now: float, wall_ms: int) -> None:
        """Announce queued tasks, best first, while some fitting peer has an unclaimed free slot
        (the decision: scheduling.py)."""
        self.known = {c.id: c for c in candidates}
        active = self.index.active.values()
        units, waiting, mixed = scheduling.unclaimed(candidates, active, self.settings.self_id, now)
        self.queue_ok = scheduling.use_queues(candidates, units, len(waiting), mixed, active,
                                              self.beliefs.turned_away)
        for a in scheduling.plan(waiting, candidates, units, self._record, self._may_award_directly,
                                 self.settings.max_candidates, self.rng, now):
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

    def _announce(self, task: Task, chosen: list[Candidate], now: float, wall_ms: int) -> None:
        attempt = task.new_attempt()
        task.round = Round(attempt, {c.id for c in chosen}, now + self.settings.bid_window)
        spec = task.spec
        deadline_in = spec.deadline_ms - wall_ms if spec.deadline_ms is not None else None
        cfp = Cfp(task.id, attempt, spec.requirements, task.level(now), int(self.settings.bid_window * 1000),
                  queue_ok=self.queue_ok,
                  command=spec.argv[0], est_runtime_ms=int(spec.est_runtime * 1000) if spec.est_runtime else None,
                  deadline_in_ms=deadline_in)
        self.out.emit(Send, targets=tuple((c.id, c.address) for c in chosen), message=cfp)
        self._arm(task, task.round.deadline)
        self.stats["announcements"] += 1

    def _award_direct(self, task: Task, cand: Candidate, now: float, wall_ms: int) -> None:
        """Only one peer (one we know) can take the task now, so there is nothing to compare: skip the
        cfp/bid round trip and award at once. The award is the offer and its accept the bid; the
        contractor checks admission on the award as it would on a cfp and rejects what does not fit.
        This halves the hops between a freed slot and its next start (pull-based work stealing)."""
        req = task.spec.requirements
        load = cand.load
        offer = Bid(task.id, 0, slots=cand.slots, slots_free=max(0, cand.free - 1),
                    cpu_percent=load.cpu_percent if load else 0.0, mem_available=load.mem_available if load else 0,
                    affinity=policy.affinity(cand.labels, req))
        score = policy.score(offer, self._record(cand.id), req, now, cand.id in task.avoid,
                             self.speeds.relative(task.spec.argv[0], cand.id))
        task.standby = [(cand.id, score, None)]
        self.stats["direct_awards"] += 1
        self._award_next(task, now, wall_ms)

    def _close_round(self, task: Task, now: float, wall_ms: int) -> None:
        rnd, task.round = task.round, None
        if rnd is None:
            return
        req = task.spec.requirements
        command = task.spec.argv[0]
        scored = {peer: policy.score(env.message, self._record(peer), req, now, peer in task.avoid,
                                     self.speeds.relative(command, peer))
                  for peer, env in rnd.bids.items()}
        order = policy.rank(scored)
        if not order:
            task.says(W.NO_BIDS, scheduling.why_no_bids(rnd))
            if len(rnd.refusals) == len(rnd.candidates) and all(r.code in BUSY_CODES for r in rnd.refusals.values()):
                task.not_before = now           # they are full, not unable: wait for the next free slot
                return
            self._back_off(task, now)
            return
        if scheduling.outranked(task, self.known.get(order[0]), self.index.active.values(), now):
            for peer in rnd.bids:               # a more urgent task arrived: it gets the room instead
                self._send(peer, RejectBid(task.id, rnd.attempt, "a higher-priority task came first"))
            task.not_before = now
            self.stats["outranked"] += 1
            return
        task.standby = [(peer, scored[peer], rnd.bids[peer]) for peer in order]
        self._award_next(task, now, wall_ms, attempt=rnd.attempt)

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
            self._persist(task)
            return
        peer, score, bid_env = task.standby.pop(0)
        attempt = attempt if attempt is not None else task.new_attempt()
        taken = (bid_env.incarnation, bid_env.seq) if bid_env is not None and not bid_env.message.queued else None
        self.beliefs.awarded(peer, task.id, attempt, taken)      # a queued bid holds no slot yet
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
        self._send(peer, Award(task.id, attempt, task.spec, score, queue_ok=self.queue_ok))
        self.stats["awards"] += 1

    # -- internals ------------------------------------------------------------------------------

    def _promise_start(self, task: Task, now: float, est_start_ms: int, first: bool = False) -> None:
        """A contractor queued the attempt and expects to start it in `est_start_ms`. The manager holds
        it to that (defence in depth: whatever the contractor does, a queued attempt cannot wait
        forever): past the promise plus a margin the attempt is reclaimed and the task re-awarded.
        A heartbeat may renew the promise with a later expected start (the task ahead of it runs
        longer than the contractor thought); "any moment now" (0) renews nothing. The promise never
        reaches past QUEUE_WAIT_CAP from the accept, so a contractor that keeps promising cannot
        hold the attempt either."""
        promised = now + est_start_ms / 1000
        if first or task.wait_since is None:
            task.wait_since, task.promised_start = now, promised
        elif est_start_ms > 0:
            task.promised_start = max(task.promised_start, promised)
        task.wait_deadline = min(task.promised_start + self.settings.heartbeat_timeout,
                                 task.wait_since + QUEUE_WAIT_CAP)
        self._arm(task, task.wait_deadline)

    def _started(self, task: Task, att: Attempt, now: float, wall_ms: int, elapsed: float = 0.0) -> None:
        self.index.move_attempt(task, att, A.RUNNING)
        self.index.move(task, T.RUNNING)
        att.started = att.started or wall_ms - int(elapsed * 1000)
        task.says("", "")
        if task.spec.timeout:
            task.run_deadline = now - elapsed + task.spec.timeout + RUN_MARGIN + 0.1 * task.spec.timeout
            self._arm(task, task.run_deadline)

    def _back_off(self, task: Task, now: float) -> None:
        task.backoff = min(max(task.backoff * 2, NO_BID_BACKOFF[0]), NO_BID_BACKOFF[1])
        task.not_before = now + task.backoff
        self._arm(task, task.not_before)

    def _release_standby(self, task: Task, reason: str) -> None:
        for peer, _, env in task.standby:
            if env is not None:                           # a direct award holds no reservation
                self._send(peer, RejectBid(task.id, env.message.attempt, reason))
        task.standby = []

    def _stop_current(self, task: Task, state: AttemptState, why: Why, reason: str, wall_ms: int) -> None:
        att = task.current
        if att is None:
            return
        self.index.move_attempt(task, att, state, why, reason, wall_ms)
        self._send(att.node, Cancel(task.id, att.attempt, reason))

    def _retry(self, task: Task, now: float, wall_ms: int, *, failure: bool, reason: str,
               exit_code: int | None = None) -> None:
        """The current attempt ended without success: queue the task again, or fail it."""
        att = task.attempts[-1] if task.attempts else None
        if att is not None:
            task.avoid.add(att.node)
        if failure:
            task.failures += 1
            if task.failures > task.spec.retries:
                self._finish(task, T.FAILED, exit_code, W.RETRIES_SPENT,
                             f"{reason} (after {task.failures} failed attempts)", wall_ms)
                self.stats["failed"] += 1
                return
            task.boost = min(task.boost + 1, len(PRIORITIES))
        else:
            task.losses += 1
            if task.losses > MAX_LOST_ATTEMPTS:
                self._finish(task, T.FAILED, None, W.LOST_TOO_OFTEN, f"{reason} (lost {task.losses} times)", wall_ms)
                self.stats["failed"] += 1
                return
        self.stats["retries"] += 1
        self.index.move(task, T.QUEUED)
        task.says(W.RETRYING, f"retrying: {reason}")
        task.queued_since, task.not_before = now, now

    def _finish(self, task: Task, state: TaskState, exit_code: int | None, why: str, reason: str,
                wall_ms: int) -> None:
        self.index.move(task, state)
        task.says(why, reason)
        task.exit_code, task.finished = exit_code, wall_ms
        self.bid_first.discard(task.id)

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
        entry.update(fields, time_ms=wall_ms, stimulus=self.out.stimulus_id)
        self.out.emit(Audit, entry=entry)

    def _persist(self, task: Task, when: str = BEFORE) -> None:
        self.out.emit(PersistTask, doc=task.to_doc(), when=when)

    # -- checks ---------------------------------------------------------------------------------

    def validate_state(self) -> None:
        """The manager's invariants (tests and chaos runs call this after every input)."""
        self.index.validate()
        for task in self.index.active.values():
            att = task.current
            state = TASK_OF_ATTEMPT.get(att.state) if att is not None else T.QUEUED
            if state is not task.state:
                raise LocalProtocolError(f"{task.id}: task {task.state} with attempt {att and att.state}")
            if task.round is not None and task.state is not T.QUEUED:
                raise LocalProtocolError(f"{task.id}: an open round on a {task.state} task")
            if task.wait_deadline is not None and (att is None or att.state is not A.WAITING):
                raise LocalProtocolError(f"{task.id}: a queue deadline without a waiting attempt")
            if task.award_deadline is not None and (att is None or att.state is not A.AWARDED):
                raise LocalProtocolError(f"{task.id}: an award deadline without an award")
        for peer, entries in self.beliefs.ledger.awards.items():
            for task_id, attempt in entries:
                if task_id not in self.index.tasks:
                    raise LocalProtocolError(f"ledger entry of {task_id}/{attempt} at {peer}: no such task")
