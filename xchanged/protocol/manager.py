"""The manager side of the Contract Net: the tasks submitted to this node, from submit to their one
recorded completion.

The task and attempt lifecycles are tables in lifecycle.py, and every change of state goes through
`TaskIndex` (tasks.py). Announcing, bidding and awarding are in negotiation.py (the base class);
whom to ask in scheduling.py; what we believe of each peer's free slots in free_slots.py. This
module follows an attempt from its award to its end.

Rules:
- Every message of a contract names (task_id, attempt), and a message about any other attempt than
  the current one is stale: a late accept or progress gets a `cancel`, a late result is
  acknowledged and kept as a superseded attempt, and never changes the task (exactly one recorded
  completion).
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
from collections import Counter
from typing import Any

from .codec import Envelope
from .effects import SYNC, PersistParts, Reply, StoreOutput
from .errors import LocalProtocolError
from .lifecycle import HOLDS_SLOT, TASK_OF_ATTEMPT, TERMINAL, AttemptState, TaskState, Why
from .messages import (
    PRIORITIES,
    Accept,
    Ack,
    Cancel,
    Load,
    Outcome,
    PartResult,
    PartsAck,
    Progress,
    Result,
    TaskSpec,
)
from .negotiation import ManagerSettings, Negotiation
from .tasks import Attempt, Task

__all__ = ["Manager", "ManagerSettings", "QUEUE_WAIT_CAP"]

A, T, W = AttemptState, TaskState, Why
MAX_LOST_ATTEMPTS = 10
RUN_MARGIN = 5.0                # seconds the manager adds to a task's timeout before acting itself
QUEUE_WAIT_CAP = 60.0           # seconds an attempt may wait in a contractor's queue, whatever it promises
OUTCOMES = frozenset(str(o) for o in Outcome)
FAILED_ATTEMPT: dict[Outcome, tuple[AttemptState, Why]] = {
    Outcome.TIMEOUT: (A.TIMEOUT, W.TIMEOUT), Outcome.ERROR: (A.FAILED, W.START_ERROR),
    Outcome.OOM: (A.FAILED, W.OOM), Outcome.CPU_LIMIT: (A.FAILED, W.CPU_LIMIT)}


class Manager(Negotiation):
    """The manager of the tasks submitted to this node (the negotiation: negotiation.py)."""

    # -- client requests ------------------------------------------------------------------------------

    def submit(self, request_id: int, task_id: str, spec: TaskSpec, now: float, wall_ms: int,
               resubmit_of: str = "", done: tuple[PartResult, ...] = ()) -> None:
        if task_id in self.tasks:
            self.out.emit(Reply, request_id=request_id, ok=False, error=f"task {task_id} already exists")
            return
        self._order += 1
        task = Task(task_id, spec, wall_ms, self._order, queued_since=now, stimulus=self.out.stimulus_id,
                    origin=resubmit_of)
        task.record_parts([p for p in done if p.state == "succeeded"])   # a rerun: its coordinator skips these
        self.index.add(task)
        self._wait(task, now)
        self.stats["submitted"] += 1
        if task.parts:
            self.out.emit(PersistParts, task_id=task_id, parts=tuple(task.parts.values()))
        self._persist(task, SYNC)                # the reply promises the task is kept: on disk first
        self.out.emit(Reply, request_id=request_id, ok=True, result=task.to_doc())

    def cancel(self, request_id: int, task_id: str, now: float, wall_ms: int, by_node: str = "",
               by_user: str = "") -> None:
        """Cancel a task; `by_node` (another node, over the peer protocol) and `by_user` say who asked,
        in the audit entry."""
        task = self.tasks.get(task_id)
        if task is None:
            self.out.emit(Reply, request_id=request_id, ok=False, error=f"no such task: {task_id}")
            return
        who = " ".join(filter(None, ("cancelled by", by_user or "user",
                                     by_node and f"from {self.lookup(by_node)[1] or by_node}")))
        self._cancel(task, who, wall_ms, requested_by=by_node or self.settings.self_id, user=by_user)
        self.out.emit(Reply, request_id=request_id, ok=True, result=task.to_doc())

    def _cancel(self, task: Task, reason: str, wall_ms: int, **audited: Any) -> None:
        if task.state in TERMINAL:
            return
        self._stop_current(task, A.CANCELLED, W.CANCELLED, reason, wall_ms)
        self._release_standby(task, "task cancelled")
        self._drop_round(task)
        self._finish(task, T.CANCELLED, None, W.CANCELLED, reason, wall_ms)
        self._audit(task, "cancel", wall_ms, **audited)
        self._persist(task, SYNC)

    # -- parts of the composites this node coordinates (coordinator.py) -------------------------------

    def submit_part(self, task_id: str, spec: TaskSpec, now: float, wall_ms: int) -> None:
        """A part released by our coordinator: a task like any other, but not persisted and with no
        client waiting for a reply; when it ends it goes to `finished_parts`."""
        if task_id in self.tasks:
            return
        self._order += 1
        task = Task(task_id, spec, wall_ms, self._order, queued_since=now, stimulus=self.out.stimulus_id)
        self.index.add(task)
        self._wait(task, now)
        self.stats["parts"] += 1

    def cancel_part(self, task_id: str, wall_ms: int) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            self._cancel(task, "its composite was cancelled or failed fast", wall_ms)

    def recover(self, docs: list[dict[str, Any]], now: float) -> None:
        """Resume tasks from the store after a restart; in-flight attempts wait for their contractor."""
        for doc in docs:
            task = Task.from_doc(doc)
            self._order = max(self._order, task.order)
            task.queued_since, task.stimulus = now, self.out.stimulus_id
            self.index.add(task)
            if task.state is T.QUEUED:
                self._wait(task, now)
            if task.state in (T.ASSIGNED, T.RUNNING):
                task.last_heard = now
                self._arm(task, now + self.settings.heartbeat_timeout)
                if task.state is T.RUNNING and task.spec.timeout:     # conservative: the full timeout again
                    task.run_deadline = now + task.spec.timeout + RUN_MARGIN + 0.1 * task.spec.timeout
                    self._arm(task, task.run_deadline)

    # -- following an awarded attempt -----------------------------------------------------------------

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
        if prog.report:
            self._take_parts(task, prog)

    def _take_parts(self, task: Task, prog: Progress) -> None:
        """A coordinator reports parts of a composite that ended: keep them (written before the ack
        that lets it forget them), so a later coordinator never runs them again."""
        new = task.record_parts(prog.parts)
        if new and not task.ephemeral:
            self.out.emit(PersistParts, task_id=task.id, parts=tuple(new))
        self._send(task.attempts[-1].node, PartsAck(task.id, prog.attempt, prog.report))

    def on_result(self, env: Envelope, now: float, wall_ms: int) -> None:
        res: Result = env.message
        self._send(env.sender, Ack(res.task_id, res.attempt))
        task = self.tasks.get(res.task_id)
        current = task.current if task is not None else None
        ending = current is not None and current.attempt == res.attempt and current.node == env.sender
        if (task is None or task.holds_slots) and env.sender != self.settings.self_id:
            # a coordinator's result frees no slot; our own free slots are known (node.candidates),
            # and no load of ours ever comes back to prune a ledger entry of ours (it grew per task)
            known = self.known.get(env.sender)
            holding = self.index.holding(env.sender) - (current is not None and ending and current.state in HOLDS_SLOT)
            at_most = None if known is None else known.slots - holding
            self.beliefs.result(env.sender, res.task_id, res.attempt, (env.incarnation, env.seq),
                                res.slot_refilled, at_most)
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
        task.stimulus, task.last_result = self.out.stimulus_id, res
        if task.standby:                        # a result before the accept (we restarted): it ran
            self._release_standby(task, "another bid was accepted")
        att.exit_code = res.exit_code
        att.peak_mem, att.cpu_s = res.peak_mem, res.cpu_s
        record = self._record(env.sender)
        self.out.emit(StoreOutput, task_id=task.id, attempt=att.attempt, stdout=res.stdout, stderr=res.stderr)
        self._audit(task, "result", wall_ms, att, outcome=str(res.outcome), exit_code=res.exit_code)
        if res.outcome in (Outcome.EXITED, Outcome.TIMEOUT):
            self.observed.observe("run_time", res.runtime_ms / 1000)
        if res.outcome == Outcome.EXITED and res.exit_code == 0:
            self.index.move_attempt(task, att, A.SUCCEEDED, ended=wall_ms)
            record.succeeded()
            if att.estimate_ms is not None:
                record.observe_runtime(att.estimate_ms, res.runtime_ms)
            if task.holds_slots:
                self.speeds.observe(task.spec.command, env.sender, res.runtime_ms)
            self._finish(task, T.SUCCEEDED, 0, "", "", wall_ms)
            self.stats["succeeded"] += 1
        elif res.outcome == Outcome.CANCELLED:
            self.index.move_attempt(task, att, A.CANCELLED, W.CANCELLED, res.reason or "cancelled", wall_ms)
            self._retry(task, now, wall_ms, failure=False, reason=att.reason)
        elif res.outcome == Outcome.LOST:
            self.index.move_attempt(task, att, A.LOST, W.HANDED_BACK if res.handed_back else W.CONTRACTOR_RESTARTED,
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
        self.observed.observe("queue_wait", now - elapsed - task.queued_since)
        if att.awarded is not None:
            self.observed.observe("award_to_start", (att.started - att.awarded) / 1000)
        if task.spec.timeout:
            task.run_deadline = now - elapsed + task.spec.timeout + RUN_MARGIN + 0.1 * task.spec.timeout
            self._arm(task, task.run_deadline)

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
        if failure and task.spec.composite is not None:   # its parts had their retries: it is over
            self._finish(task, T.FAILED, exit_code, W.PARTS_FAILED, reason, wall_ms)
            self.stats["failed"] += 1
            return
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
        self._wait(task, now)

    def _finish(self, task: Task, state: TaskState, exit_code: int | None, why: str, reason: str,
                wall_ms: int) -> None:
        self._drop_round(task)
        self._set_standby(task, [])
        self.index.move(task, state)
        task.says(why, reason)
        task.exit_code, task.finished = exit_code, wall_ms
        task.parts.clear()                      # a composite's parts: in the store from now on (compact memory)
        if task.spec.parent:
            self.finished_parts.append(task)    # for its coordinator (coordinator.collect)
        self.bid_first.discard(task.id)

    # -- membership and time --------------------------------------------------------------------------

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
            else:
                self._drop_candidate(task, peer_id)

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

    # -- checks ---------------------------------------------------------------------------------------

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
            if task.state is T.QUEUED and task.round is None and task.id not in (
                    self.backlog if task.holds_slots else self.composites).live:
                raise LocalProtocolError(f"{task.id}: queued, with no round and not in the backlog")
        claims: Counter[str] = Counter()
        for task in self.index.active.values():
            if task.holds_slots:
                claims.update(task.round.candidates if task.round is not None else ())
                claims.update(peer for peer, _, _ in task.standby)
        if +claims != +self.claims:
            raise LocalProtocolError(f"claims {dict(+self.claims)} != recount {dict(+claims)}")
        rounds = sum(1 for t in self.index.active.values() if t.round is not None and t.holds_slots)
        if rounds != self.open_rounds:
            raise LocalProtocolError(f"{self.open_rounds} open rounds counted, {rounds} open")
        if self.settings.self_id in self.beliefs.ledger.awards:     # nothing would ever prune them
            raise LocalProtocolError("the free-slot ledger holds awards to this node itself")
        for peer, entries in self.beliefs.ledger.awards.items():
            for task_id, attempt in entries:
                if task_id not in self.index.tasks:
                    raise LocalProtocolError(f"ledger entry of {task_id}/{attempt} at {peer}: no such task")
