"""The manager side of the Contract Net: announce, collect bids, award, follow up, retry.

Task states: queued -> assigned -> running -> succeeded | failed | cancelled. A failed or lost
attempt returns the task to queued until its retries are spent.

Rules:
- Every award has its own attempt number; every message of a contract names (task_id, attempt),
  and a message about any other attempt than the current one is stale: a late bid gets a
  `reject_bid`, a late result is acknowledged and kept as a superseded attempt, and never changes
  the task (exactly one recorded completion).
- Announcing is pull-based: a task is announced only to peers believed to have a free slot (their
  last load, minus our awards since, plus results since), so bids rarely collide; when a peer frees a
  slot, queued tasks are announced to it at once, highest priority first (then earliest deadline,
  then submission order; waiting raises priority by one level per `AGING_STEP`).
- The round closes when every candidate answered or the bid window ends; the best bid wins, the
  others stay on standby until the winner accepts (a `reject` or no answer within the award timeout
  awards the next standby bid). If a waiting task of a higher level fits the best bidder by then, the
  bids are released and that task is announced instead (priority beats an open round).
- A lone free candidate that has succeeded for us before (breaker closed) gets a direct award, with no
  cfp/bid round: the contractor's admission check on the award stands in for its bid. Refusals and
  rejects for lack of room ("busy") put a task back without back-off; other ones back off.
- An attempt is lost when its contractor is declared dead or stays silent past the heartbeat
  deadline, and timed out past its timeout plus a margin: either way the task is re-announced,
  preferring other nodes. Failures count against `retries` and raise the priority one level; losses
  have their own, larger cap.
- Every change of a task is persisted (`PersistTask`) before the message that depends on it is sent;
  a submitted or cancelled task is on disk before the client's reply (effects.py: SYNC, BEFORE).
- Memory is bounded: per-event work walks only the unfinished tasks, and only the most recent
  `finished_retention` finished tasks stay in memory (`tasks.TaskIndex`); a late result for an evicted
  task is acknowledged and ignored. What a peer's load says about its free slots is corrected for the
  awards it had not seen when it signed it (`free_slots.FreeSlotLedger`).
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

from .codec import Envelope
from .errors import LocalProtocolError
from .effects import BEFORE, SYNC, Audit, Outbox, PersistTask, Reply, Send, StoreOutput
from .free_slots import FreeSlotLedger
from .messages import (PRIORITIES, Accept, Ack, Award, Bid, Cancel, Cfp, Load, Progress, Refuse, Reject, RejectBid,
                       Result, TaskSpec)
from .tasks import (AGING_STEP, ASSIGNED, CANCELLED, FAILED, FINISHED_RETENTION, QUEUED, RUNNING, SUCCEEDED,
                    TERMINAL, Attempt, Round, Task, TaskIndex)
from . import policy

__all__ = ["AGING_STEP", "ASSIGNED", "CANCELLED", "FAILED", "QUEUED", "RUNNING", "SUCCEEDED", "TERMINAL",
           "Attempt", "Candidate", "Manager", "ManagerSettings", "Round", "Task"]

MAX_LOST_ATTEMPTS = 10
RUN_MARGIN = 5.0                # seconds the manager adds to a task's timeout before acting itself
NO_BID_BACKOFF = (0.2, 5.0)     # re-announce delay after a round without bids: first, cap
CAPACITY_CODES = ("no_slots", "overloaded")
QUEUE_WAIT_CAP = 60.0           # seconds an attempt may wait in a contractor's queue, whatever it promises   # refusals that mean "busy now", not "cannot run it"


@dataclass(slots=True)
class ManagerSettings:
    self_id: str
    bid_window: float = 0.05
    award_timeout: float = 2.0
    heartbeat_timeout: float = 5.0
    max_candidates: int = 16
    direct_award: bool = True       # one candidate only: award without a cfp/bid round (see _award_direct)
    finished_retention: int = FINISHED_RETENTION   # finished tasks kept in memory (see tasks.TaskIndex)


@dataclass(slots=True)
class Candidate:
    """A peer as the manager sees it when choosing whom to ask."""

    id: str
    name: str
    address: str
    slots: int
    free: int
    labels: dict[str, str]
    load: Any                   # the Load message (for fit checks)
    queue: int = 0              # room in its local queue: used only while our own queue is deep


class Manager:
    def __init__(self, settings: ManagerSettings, outbox: Outbox, rng: random.Random,
                 lookup: Callable[[str], tuple[str, str]]):
        self.settings = settings
        self.lookup = lookup                           # peer id -> (address, name)
        self.out = outbox
        self.rng = rng
        self.index = TaskIndex(settings.finished_retention)
        self.ledger = FreeSlotLedger()                 # our awards, to judge how stale a load is
        self.records: dict[str, policy.ContractorRecord] = {}
        self.free_hint: dict[str, int] = {}           # peer -> slots we believe free
        self.known: dict[str, Candidate] = {}          # the candidates of the last pump, by id
        self.queue_ok = False                          # our queue is deep: contractors may queue our tasks
        self.bid_first: set[str] = set()               # tasks whose direct award was rejected: cfp from now on
        self.queue_full: set[str] = set()              # peers that turned us away since their last load:
                                                       # their queue room went to other managers
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._order = 0
        self.stats = Counter()

    @property
    def tasks(self) -> dict[str, Task]:
        """Every task in memory: the unfinished ones and the most recently finished (read-only use)."""
        return self.index.tasks

    def queued(self) -> int:
        return self.index.queued()

    # -- client requests ------------------------------------------------------------------------

    def submit(self, request_id: int, task_id: str, spec: TaskSpec, now: float, wall_ms: int) -> None:
        if task_id in self.tasks:
            self.out.emit(Reply, request_id=request_id, ok=False, error=f"task {task_id} already exists")
            return
        self._order += 1
        task = Task(task_id, spec, wall_ms, self._order, queued_since=now)
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
            self._stop_current(task, "cancelled", "cancelled by user", wall_ms)
            self._release_standby(task, "task cancelled")
            task.round = None
            self._finish(task, CANCELLED, None, "cancelled by user", wall_ms)
            self.out.emit(Audit, entry={"event": "cancel", "task": task.id, "manager": self.settings.self_id,
                                        "time_ms": wall_ms})
            self._persist(task, SYNC)
        self.out.emit(Reply, request_id=request_id, ok=True, result=task.to_doc())

    def recover(self, docs: list[dict], now: float) -> None:
        """Resume tasks from the store after a restart; in-flight attempts wait for their contractor."""
        for doc in docs:
            task = Task.from_doc(doc)
            self._order = max(self._order, task.order)
            task.queued_since = now
            self.index.add(task)
            if task.state in (ASSIGNED, RUNNING):
                task.last_heard = now
                self._arm(task, now + self.settings.heartbeat_timeout)
                if task.state == RUNNING and task.spec.timeout:     # conservative: the full timeout again
                    task.run_deadline = now + task.spec.timeout + RUN_MARGIN + 0.1 * task.spec.timeout
                    self._arm(task, task.run_deadline)

    # -- messages from contractors --------------------------------------------------------------

    def on_bid(self, env: Envelope, now: float, wall_ms: int) -> None:
        bid: Bid = env.message
        task = self.tasks.get(bid.task_id)
        rnd = task.round if task else None
        if rnd is None or rnd.attempt != bid.attempt or env.sender not in rnd.candidates or now > rnd.deadline:
            self.stats["late_bids"] += 1
            self._send(env.sender, RejectBid(bid.task_id, bid.attempt, "bid window closed"))
            return
        rnd.bids[env.sender] = env
        self.free_hint[env.sender] = bid.slots_free + (0 if bid.queued else 1)
        if len(rnd.bids) + len(rnd.refusals) >= len(rnd.candidates):
            self._close_round(task, now, wall_ms)

    def on_refuse(self, env: Envelope, now: float, wall_ms: int) -> None:
        refuse: Refuse = env.message
        task = self.tasks.get(refuse.task_id)
        rnd = task.round if task else None
        if rnd is None or rnd.attempt != refuse.attempt or env.sender not in rnd.candidates:
            return
        rnd.refusals[env.sender] = refuse
        if refuse.code in ("no_slots", "overloaded"):
            self.free_hint[env.sender] = 0
            self.queue_full.add(env.sender)
        if len(rnd.bids) + len(rnd.refusals) >= len(rnd.candidates):
            self._close_round(task, now, wall_ms)

    def on_accept(self, env: Envelope, now: float, wall_ms: int) -> None:
        acc: Accept = env.message
        task, att = self._attempt_of(env, acc.task_id, acc.attempt)
        if att is None:
            self._send(env.sender, Cancel(acc.task_id, acc.attempt, "attempt superseded"))
            return
        if not acc.queued:                      # a queued attempt takes its slot when it starts
            self.ledger.confirmed(env.sender, task.id, att.attempt, (env.incarnation, env.seq))
        if att.state != "awarded":
            return
        task.award_deadline = None
        task.last_heard = now
        self._arm(task, now + self.settings.heartbeat_timeout)
        if acc.queued:
            att.state = "waiting"
            task.reason = f"accepted by {att.node_name or att.node}, queued there for a slot (position {acc.queued})"
            self._promise_start(task, now, acc.est_start_ms, first=True)
        else:
            self._started(task, att, now, wall_ms)
        self._release_standby(task, "another bid was accepted")
        self.out.emit(Audit, entry={"event": "accept", "task": task.id, "attempt": att.attempt,
                                    "manager": self.settings.self_id, "contractor": env.sender,
                                    "score": att.score, "time_ms": wall_ms, "message": env.raw})
        self._persist(task)

    def on_reject(self, env: Envelope, now: float, wall_ms: int) -> None:
        rej: Reject = env.message
        task, att = self._attempt_of(env, rej.task_id, rej.attempt)
        if att is None or att.state != "awarded":
            return
        att.state, att.reason, att.ended = "rejected", f"{rej.code}: {rej.reason}", wall_ms
        self.free_hint[env.sender] = 0
        self.queue_full.add(env.sender)
        self.out.emit(Audit, entry={"event": "reject", "task": task.id, "attempt": att.attempt,
                                    "manager": self.settings.self_id, "contractor": env.sender,
                                    "time_ms": wall_ms, "message": env.raw})
        self._award_next(task, now, wall_ms)

    def on_progress(self, env: Envelope, now: float, wall_ms: int = 0) -> None:
        prog: Progress = env.message
        task, att = self._attempt_of(env, prog.task_id, prog.attempt)
        if att is None:
            self._send(env.sender, Cancel(prog.task_id, prog.attempt, "attempt superseded"))
            return
        task.last_heard = now
        if prog.pid is not None:                # running: it holds a slot (queued ones do not yet)
            self.ledger.confirmed(env.sender, task.id, att.attempt, (env.incarnation, env.seq))
        self._arm(task, now + self.settings.heartbeat_timeout)
        if att.state == "awarded":              # its accept was lost (say, we restarted): re-attach
            task.award_deadline = None
            att.state = "waiting"
            self._release_standby(task, "another bid was accepted")
            if prog.pid is None:
                self._promise_start(task, now, prog.est_start_ms or 0, first=True)
                self._persist(task)
        elif att.state == "waiting" and prog.pid is None and prog.est_start_ms is not None:
            self._promise_start(task, now, prog.est_start_ms)
        if att.state == "waiting" and prog.pid is not None:      # it started (maybe after a queue)
            self._started(task, att, now, wall_ms, elapsed=prog.elapsed_ms / 1000)
            self._persist(task)

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
        task.wait_deadline = task.wait_since = None
        att.state, att.started = "running", att.started or wall_ms - int(elapsed * 1000)
        task.state, task.reason = RUNNING, ""
        if task.spec.timeout:
            task.run_deadline = now - elapsed + task.spec.timeout + RUN_MARGIN + 0.1 * task.spec.timeout
            self._arm(task, task.run_deadline)

    def on_result(self, env: Envelope, now: float, wall_ms: int) -> None:
        res: Result = env.message
        self._send(env.sender, Ack(res.task_id, res.attempt))
        self.ledger.ended(env.sender, res.task_id, res.attempt, (env.incarnation, env.seq))
        task = self.tasks.get(res.task_id)
        if task is None:                        # unknown, or finished and evicted: acked, nothing else
            return
        if not res.slot_refilled:
            self.free_hint[env.sender] = self._at_most_free(env.sender, self.free_hint.get(env.sender, 0) + 1,
                                                            ending=(res.task_id, res.attempt))
        att = next((a for a in task.attempts if a.attempt == res.attempt and a.node == env.sender), None)
        if att is None:
            return
        if att is not task.current or task.state in TERMINAL:
            if res.outcome in ("exited", "timeout", "error") and \
                    att.state not in ("superseded", "succeeded", "failed", "timeout", "cancelled"):
                att.state, att.exit_code, att.ended = "superseded", res.exit_code, wall_ms
                att.reason = f"late result ({res.outcome}) of a superseded attempt"
                self._persist(task)
            return
        if task.standby:                        # a result before the accept (we restarted): it ran
            self._release_standby(task, "another bid was accepted")
        att.exit_code, att.ended = res.exit_code, wall_ms
        record = self._record(env.sender)
        self.out.emit(StoreOutput, task_id=task.id, attempt=att.attempt, stdout=res.stdout, stderr=res.stderr)
        self.out.emit(Audit, entry={"event": "result", "task": task.id, "attempt": att.attempt,
                                    "manager": self.settings.self_id, "contractor": env.sender,
                                    "outcome": res.outcome, "exit_code": res.exit_code, "time_ms": wall_ms})
        if res.outcome == "exited" and res.exit_code == 0:
            att.state = "succeeded"
            record.succeeded()
            if att.estimate_ms is not None:
                record.observe_runtime(att.estimate_ms, res.runtime_ms)
            self._finish(task, SUCCEEDED, 0, "", wall_ms)
            self.stats["succeeded"] += 1
        elif res.outcome == "cancelled":
            att.state, att.reason = "cancelled", res.reason or "cancelled"
            self._retry(task, now, wall_ms, failure=False, reason=att.reason)
        elif res.outcome == "lost":
            att.state, att.reason = "lost", res.reason or "contractor lost the attempt"
            self._retry(task, now, wall_ms, failure=False, reason=att.reason)
        else:
            att.state = "timeout" if res.outcome == "timeout" else "failed"
            att.reason = res.reason or (f"exit code {res.exit_code}" if res.exit_code is not None else res.outcome)
            record.failed(now)
            self._retry(task, now, wall_ms, failure=True, reason=att.reason, exit_code=res.exit_code)
        self._persist(task)

    # -- membership and time --------------------------------------------------------------------

    def on_load(self, env: Envelope) -> None:
        """A newer load signal of a peer: its free slots, less our awards it could not show yet."""
        load: Load = env.message
        self.free_hint[env.sender] = self.ledger.free_from_load(
            env.sender, load.slots_free, (env.incarnation, env.seq), self._is_live)
        self.queue_full.discard(env.sender)

    def _at_most_free(self, peer: str, believed: int, ending: tuple[str, int] | None = None) -> int:
        """Never believe a peer has more free slots than its slots minus our own attempts holding one
        there: a result signed before our latest award reached it must not count that slot twice."""
        known = self.known.get(peer)
        if known is None:
            return believed
        ours = sum(1 for t in self.index.active.values()
                   if (a := t.current) is not None and a.node == peer and a.state in ("awarded", "running")
                   and (t.id, a.attempt) != ending)
        return max(0, min(believed, known.slots - ours))

    def _is_live(self, task_id: str, attempt: int) -> bool:
        task = self.index.active.get(task_id)
        att = task.current if task is not None else None
        return att is not None and att.attempt == attempt

    def peer_died(self, peer_id: str, now: float, wall_ms: int) -> None:
        self.free_hint[peer_id] = 0
        self.ledger.forget(peer_id)
        for task in list(self.index.active.values()):
            att = task.current
            if att is not None and att.node == peer_id:
                att.state, att.reason, att.ended = "lost", "contractor declared dead", wall_ms
                self.out.emit(Audit, entry={"event": "reassign", "task": task.id, "attempt": att.attempt,
                                            "manager": self.settings.self_id, "contractor": peer_id,
                                            "reason": att.reason, "time_ms": wall_ms})
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
            if task.round is not None and now >= task.round.deadline:
                self._close_round(task, now, wall_ms)
            elif task.state == ASSIGNED and task.award_deadline is not None and now >= task.award_deadline:
                att = task.current
                if att is not None:
                    att.state, att.reason, att.ended = "rejected", "no answer to the award", wall_ms
                    self._send(att.node, Cancel(task.id, att.attempt, "award timed out"))
                self._award_next(task, now, wall_ms)
            elif task.state == ASSIGNED and task.wait_deadline is not None and now >= task.wait_deadline:
                node = task.current.node_name or task.current.node
                self._stop_current(task, "lost", f"queued at {node} past its promised start", wall_ms)
                self.out.emit(Audit, entry={"event": "reassign", "task": task.id, "attempt": task.attempts[-1].attempt,
                                            "manager": self.settings.self_id, "contractor": task.attempts[-1].node,
                                            "reason": task.attempts[-1].reason, "time_ms": wall_ms})
                self.stats["reclaimed"] += 1
                self._retry(task, now, wall_ms, failure=False, reason=task.attempts[-1].reason)
                self._persist(task)
            elif task.state == RUNNING and task.run_deadline is not None and now >= task.run_deadline:
                att = task.current
                self._stop_current(task, "timeout", f"no result {task.spec.timeout:g}s timeout + margin", wall_ms)
                self._record(att.node).failed(now)
                self._retry(task, now, wall_ms, failure=True, reason=att.reason)
                self._persist(task)
            elif task.state in (ASSIGNED, RUNNING) and task.award_deadline is None and \
                    now >= task.last_heard + self.settings.heartbeat_timeout:
                self._stop_current(task, "lost", "no heartbeat from the contractor", wall_ms)
                self._retry(task, now, wall_ms, failure=False, reason="no heartbeat from the contractor")
                self._persist(task)

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else math.inf

    def validate_state(self) -> None:
        """Check the manager's invariants (tests and chaos runs call this after every input)."""
        for task in self.index.tasks.values():
            active = task.id in self.index.active
            if active == (task.state in TERMINAL):
                raise LocalProtocolError(f"{task.id}: state {task.state}, active {active}")
            att = task.current
            want = {QUEUED: (None,), ASSIGNED: ("awarded", "waiting"), RUNNING: ("running",)}.get(task.state, (None,))
            if (att.state if att is not None else None) not in want:
                raise LocalProtocolError(f"{task.id}: task {task.state} with attempt {att and att.state}")
            if task.round is not None and task.state != QUEUED:
                raise LocalProtocolError(f"{task.id}: an open round on a {task.state} task")
            if task.wait_deadline is not None and (att is None or att.state != "waiting"):
                raise LocalProtocolError(f"{task.id}: a queue deadline without a waiting attempt")
        if self.index.queued() != sum(1 for t in self.index.active.values() if t.state == QUEUED):
            raise LocalProtocolError("queued count")

    def pump(self, candidates: list[Candidate], now: float, wall_ms: int) -> None:
        """Announce queued tasks, best first, while some fitting peer has an unclaimed free slot."""
        self.known = {c.id: c for c in candidates}
        self_id = self.settings.self_id
        units = {c.id: c.free for c in candidates}
        waiting: list[Task] = []
        queued_levels: set[int] = set()
        for task in self.index.active.values():   # room held by our open rounds and standby bids
            if task.state == QUEUED:
                queued_levels.add(task.base_level)
                if task.round is None and task.not_before <= now:
                    waiting.append(task)
            if task.round is not None:
                for peer in task.round.candidates:
                    units[peer] = units.get(peer, 0) - 1
            for peer, _, _ in task.standby:
                units[peer] = units.get(peer, 0) - 1
            if task.state == ASSIGNED and task.award_deadline is not None and task.attempts \
                    and task.attempts[-1].node == self_id:
                units[self_id] = units.get(self_id, 0) - 1   # our own contractor counts it once it arrives
        self.queue_ok = self._use_queues(candidates, units, len(waiting), mixed=len(queued_levels) > 1)
        room = sum(u for u in units.values() if u > 0)     # unclaimed units, kept up to date below
        if room <= 0:
            return
        waiting.sort(key=lambda t: (-t.level(now), t.spec.deadline_ms or math.inf, t.order))
        for left, task in enumerate(waiting):
            fitting, reasons = [], Counter()
            for c in candidates:
                why = policy.unfit_reason(c.load, task.spec.requirements)
                if why is None and not self._record(c.id).allows_award(now):
                    why = "circuit breaker open"
                if why is None:
                    fitting.append(c)
                else:
                    reasons[why] += 1
            free = [c for c in fitting if units.get(c.id, 0) > 0]
            if not free:
                if not fitting:
                    task.reason = "no peer can run it: " + "; ".join(f"{n} {why}" for why, n in reasons.items()) \
                        if reasons else "no peers known yet"
                elif not task.reason.startswith("no bids"):
                    withheld = sum(1 for c in fitting if c.load.slots_free == 0 and c.load.running < c.slots)
                    parts = [f"{len(fitting) - withheld} busy"] if len(fitting) > withheld else []
                    if withheld:
                        parts.append(f"{withheld} not taking work (cpu or memory overloaded)")
                    parts += [f"{n} {why}" for why, n in reasons.items()]
                    task.reason = f"waiting for a free slot: {len(fitting)} peers can run it; " + "; ".join(parts)
                continue
            # Each peer asked holds a unit of room until it answers, so when more tasks wait than
            # slots are free, every task asks one peer (and all free slots fill in one round trip);
            # with room to spare a task asks several and the bids pick the best.
            d = max(1, min(self.settings.max_candidates, room // (len(waiting) - left)))
            chosen = policy.sample_candidates(free, units, task.avoid, d, self.rng)
            for c in chosen:
                units[c.id] -= 1
            room -= len(chosen)                         # each was a free (positive) unit
            if len(chosen) == 1 and self.settings.direct_award and self._trusted(chosen[0].id) \
                    and task.id not in self.bid_first:
                self._award_direct(task, chosen[0], now, wall_ms)
            else:
                self._announce(task, chosen, now, wall_ms)
            if room <= 0:
                break

    def _use_queues(self, candidates: list[Candidate], units: dict[str, int], waiting: int, mixed: bool) -> bool:
        """Offer contractors' local queues (prefetch) only while the backlog is deep: more tasks wait
        than there are free slots plus two rounds of every slot we know. Then a queued task starts the
        moment a slot frees, and many tasks still follow it. Toward the tail of a workload, a task
        queued behind a busy node while another idles would lengthen it, so free slots alone are used.
        And only while every waiting task has the same priority: a task queued on one node cannot be
        overtaken there, but a less urgent one given a slot that frees elsewhere would start first
        (`mixed`: the queued tasks have more than one priority)."""
        if mixed or not any(c.queue for c in candidates):
            return False
        if waiting <= sum(u for u in units.values() if u > 0) + 2 * sum(c.slots for c in candidates):
            return False
        held = Counter(t.current.node for t in self.index.active.values()
                       if t.current is not None and t.current.state in ("awarded", "waiting"))
        used = False
        for c in candidates:
            room = 0 if c.id in self.queue_full else c.queue - held[c.id]
            if room > 0:
                units[c.id] = units.get(c.id, 0) + room
                used = True
        return used

    # -- internals ------------------------------------------------------------------------------

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

    def _trusted(self, peer: str) -> bool:
        """A peer we may award to without a bid: it has run tasks for us and its breaker is closed."""
        record = self.records.get(peer)
        return record is not None and record.successes > 0 and record.breaker == policy.CLOSED

    def _award_direct(self, task: Task, cand: Candidate, now: float, wall_ms: int) -> None:
        """Only one peer (one we know) can take the task now, so there is nothing to compare: skip the cfp/bid
        round trip and award at once. The award is the offer and its accept the bid; the
        contractor checks admission on the award as it would on a cfp and rejects what does not fit.
        This halves the hops between a freed slot and its next start (pull-based work stealing)."""
        req = task.spec.requirements
        load = cand.load
        offer = Bid(task.id, 0, slots=cand.slots, slots_free=max(0, cand.free - 1),
                    cpu_percent=load.cpu_percent if load else 0.0, mem_available=load.mem_available if load else 0,
                    affinity=policy.affinity(cand.labels, req))
        score = policy.score(offer, self._record(cand.id), req, now, cand.id in task.avoid)
        task.standby = [(cand.id, score, None)]
        self.stats["direct_awards"] += 1
        self._award_next(task, now, wall_ms)

    def _close_round(self, task: Task, now: float, wall_ms: int) -> None:
        rnd, task.round = task.round, None
        if rnd is None:
            return
        req = task.spec.requirements
        scored = {peer: policy.score(env.message, self._record(peer), req, now, peer in task.avoid)
                  for peer, env in rnd.bids.items()}
        order = policy.rank(scored)
        if not order:
            task.reason = self._why_no_bids(rnd)
            busy = len(rnd.refusals) == len(rnd.candidates) and all(
                r.code in CAPACITY_CODES for r in rnd.refusals.values())
            if busy:                    # they are full, not unable: wait for the next free slot
                task.not_before = now
                return
            task.backoff = min(max(task.backoff * 2, NO_BID_BACKOFF[0]), NO_BID_BACKOFF[1])
            task.not_before = now + task.backoff
            self._arm(task, task.not_before)
            return
        if self._outranked(task, order[0], now):
            # A more urgent task arrived while this round was open: it gets the room instead.
            for peer, env in rnd.bids.items():
                self._send(peer, RejectBid(task.id, rnd.attempt, "a higher-priority task came first"))
            task.not_before = now
            self.stats["outranked"] += 1
            return
        task.standby = [(peer, scored[peer], rnd.bids[peer]) for peer in order]
        self._award_next(task, now, wall_ms, attempt=rnd.attempt)

    def _outranked(self, task: Task, best: str, now: float) -> bool:
        """Is a waiting task of a higher level able to use the best bidder's room?"""
        level = task.level(now)
        cand = self.known.get(best)
        if cand is None or cand.load is None:
            return False
        for other in self.index.active.values():
            if other is task or other.state != QUEUED or other.round is not None or other.not_before > now:
                continue
            if other.level(now) > level and policy.unfit_reason(cand.load, other.spec.requirements) is None:
                return True
        return False

    def _award_next(self, task: Task, now: float, wall_ms: int, attempt: int | None = None) -> None:
        task.award_deadline = None
        if not task.standby:
            task.state = QUEUED
            last = task.attempts[-1] if task.attempts else None
            task.reason = "every bidder rejected the award" + (f" (last: {last.reason})" if last and last.reason else "")
            task.not_before = now
            if last is not None and last.state == "rejected" and not last.reason.startswith(CAPACITY_CODES):
                task.backoff = min(max(task.backoff * 2, NO_BID_BACKOFF[0]), NO_BID_BACKOFF[1])
                task.not_before = now + task.backoff      # it cannot run there: don't hammer it
                self.bid_first.add(task.id)               # and ask with a cfp next time (a refusal adds no attempt)
                self._arm(task, task.not_before)
            self._persist(task)
            return
        peer, score, bid_env = task.standby.pop(0)
        attempt = attempt if attempt is not None else task.new_attempt()
        self.free_hint[peer] = max(0, self.free_hint.get(peer, 1) - 1)
        slot_bid = bid_env is not None and not bid_env.message.queued     # a queued bid holds no slot yet
        self.ledger.awarded(peer, task.id, attempt, (bid_env.incarnation, bid_env.seq) if slot_bid else None)
        task.attempts.append(Attempt(attempt, peer, self.lookup(peer)[1], "awarded", score, awarded=wall_ms,
                                     estimate_ms=bid_env.message.est_runtime_ms if bid_env else None))
        task.state, task.reason, task.backoff = ASSIGNED, "", 0.0
        task.award_deadline = now + self.settings.award_timeout
        self._record(peer).awarded(now)
        self._arm(task, task.award_deadline)
        entry = {"event": "award", "task": task.id, "attempt": attempt, "manager": self.settings.self_id,
                 "contractor": peer, "score": round(score, 4), "time_ms": wall_ms}
        entry.update({"message": bid_env.raw} if bid_env is not None else {"direct": True})
        self.out.emit(Audit, entry=entry)
        self._persist(task)
        self._send(peer, Award(task.id, attempt, task.spec, score, queue_ok=self.queue_ok))
        self.stats["awards"] += 1

    def _release_standby(self, task: Task, reason: str) -> None:
        for peer, _, env in task.standby:
            if env is not None:                           # a direct award holds no reservation
                self._send(peer, RejectBid(task.id, env.message.attempt, reason))
        task.standby = []

    def _stop_current(self, task: Task, state: str, reason: str, wall_ms: int) -> None:
        att = task.current
        if att is None:
            return
        att.state, att.reason, att.ended = state, reason, wall_ms
        self._send(att.node, Cancel(task.id, att.attempt, reason))

    def _retry(self, task: Task, now: float, wall_ms: int, *, failure: bool, reason: str,
               exit_code: int | None = None) -> None:
        att = task.attempts[-1] if task.attempts else None
        if att is not None:
            task.avoid.add(att.node)
        task.run_deadline = task.award_deadline = task.wait_deadline = task.wait_since = None
        if failure:
            task.failures += 1
            if task.failures > task.spec.retries:
                self._finish(task, FAILED, exit_code, f"{reason} (after {task.failures} failed attempts)", wall_ms)
                self.stats["failed"] += 1
                return
            task.boost = min(task.boost + 1, len(PRIORITIES))
        else:
            task.losses += 1
            if task.losses > MAX_LOST_ATTEMPTS:
                self._finish(task, FAILED, None, f"{reason} (lost {task.losses} times)", wall_ms)
                self.stats["failed"] += 1
                return
        self.stats["retries"] += 1
        task.state, task.reason = QUEUED, f"retrying: {reason}"
        task.queued_since, task.not_before = now, now

    def _finish(self, task: Task, state: str, exit_code: int | None, reason: str, wall_ms: int) -> None:
        task.state, task.exit_code, task.reason, task.finished = state, exit_code, reason, wall_ms
        task.round, task.award_deadline, task.run_deadline = None, None, None
        task.wait_deadline = task.wait_since = None
        self.bid_first.discard(task.id)
        self.index.finished(task)

    def _why_no_bids(self, rnd: Round) -> str:
        silent = len(rnd.candidates) - len(rnd.refusals)
        counts = Counter(r.reason for r in rnd.refusals.values())
        parts = [f"{n} refused: {why}" for why, n in counts.most_common()]
        if silent > 0:
            parts.append(f"{silent} did not answer")
        return "no bids (" + "; ".join(parts) + ")" if parts else "no bids"

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

    def _persist(self, task: Task, when: str = BEFORE) -> None:
        self.out.emit(PersistTask, doc=task.to_doc(), when=when)
