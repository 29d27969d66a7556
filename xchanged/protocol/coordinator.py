"""Coordinating a composite task: the node that won a composite's award manages its parts.

Rules:
- A coordination holds no execution slot (a node coordinates at most `max_coordinations` composites
  at once, apart from its slots), so nested composites on 1-slot nodes cannot deadlock with every
  slot held by a coordinator waiting for its parts.
- A cfp for a composite is answered here, not by the contractor: a bid while there is room, else a
  refusal (`no_slots`). An award is accepted at once; the parts it names as finished (`done`, kept by
  the composite's manager from earlier coordinators' reports) are never released again. An award whose
  composite fails `decompose.validate` (a buggy or hostile peer: clients' are checked at submit) is
  rejected (`policy`), never run.
- Parts are released in dependency order (decompose.step_order): a step's parts once every part of
  the steps it depends on ended; at most `max_parallel` (and never more than PART_WINDOW) in flight.
  They go to this node's manager as ordinary tasks, announced to the whole network and retried
  within their own `retries`, but not persisted here: a coordinator that dies loses its coordination,
  and the composite's manager awards it again with the finished parts.
- A step whose dependency did not fully succeed is skipped (its parts recorded `skipped`). With
  `fail_fast`, the first failed part cancels every other and fails the composite.
- Every part that ends is reported to the composite's manager in `progress` (one report outstanding,
  resent with every heartbeat until its `parts_ack`), so a new coordinator never reruns it.
- When every part has ended, the reduce runs (if there is one, and unless the composite already
  failed fast) with their results; then, once every report is acknowledged, the composite's `result`
  goes to its manager (exit code 0, or the first failed part's), resent until `ack`.
- A `cancel` cancels every part in flight (their processes are killed wherever they run; a nested
  composite cancels its own parts) and ends the coordination with outcome `cancelled`.
- An owner (the composite's manager) declared dead is sent nothing (no heartbeat, no report, no
  result resend) until it is heard of again, when the outstanding report or the result goes at once.
  One dead for OWNER_RETENTION (decommissioned, or gone longer than any restart) is given up: the
  coordination is dropped and its parts in flight cancelled. Nothing accepted is lost: the composite
  lives on with its manager, which keeps every part reported (a result is sent only once all are
  acknowledged) and, if it ever comes back, re-awards the composite after its heartbeat deadline;
  the new coordinator runs only what was not reported (at most the reduce, for a finished one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import decompose
from .codec import Envelope
from .effects import Log, Outbox, Send
from .events import Capacity
from .lifecycle import TaskState
from .membership import ALIVE, DEAD
from .messages import (
    Accept,
    Ack,
    Award,
    Bid,
    Cancel,
    Cfp,
    Outcome,
    PartResult,
    PartsAck,
    Progress,
    RefusalCode,
    Refuse,
    Reject,
    Result,
)
from .results import RESULT_BACKOFF  # a final result is resent as a part's result is
from .specs import CompositeSpec, Step, TaskSpec
from .tasks import Task

if TYPE_CHECKING:
    from .manager import Manager

PART_WINDOW = 512              # parts of one coordination in flight at once, at most
REPORT_MAX = 256               # part results in one report
OWNER_RETENTION = 3600.0       # seconds a coordination waits for its owner once declared dead


@dataclass(slots=True)
class StepRun:
    step: Step
    total: int
    next: int = 0               # the next index to consider releasing
    ended: int = 0
    failed: int = 0             # ended without success (failed, cancelled, skipped)

    @property
    def over(self) -> bool:
        return self.ended >= self.total


@dataclass(slots=True)
class Coordination:
    task_id: str
    attempt: int
    owner: str
    owner_address: str
    spec: CompositeSpec
    started: float
    steps: dict[str, StepRun]
    results: dict[str, PartResult] = field(default_factory=dict)
    in_flight: dict[str, str] = field(default_factory=dict)     # part task id -> key
    to_report: list[PartResult] = field(default_factory=list)
    report: tuple[int, list[PartResult]] | None = None          # sent, not yet acknowledged
    reports: int = 0
    next_heartbeat: float = 0.0
    first_failure: PartResult | None = None
    reduce_output: tuple[bytes, bytes] = (b"", b"")
    final: Result | None = None                                 # sent once reports are acknowledged
    final_sent: bool = False
    next_send: float = 0.0
    backoff: float = RESULT_BACKOFF[0]
    owner_dead_since: float | None = None                       # declared dead then: nothing is sent to it

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results.values() if r.state != "succeeded")


class Coordinator:
    def __init__(self, self_id: str, manager: Manager, outbox: Outbox, lookup: Callable[[str], tuple[str, str]],
                 max_coordinations: int, heartbeat: float):
        self.self_id = self_id
        self.manager = manager
        self.out = outbox
        self.lookup = lookup
        self.max_coordinations = max_coordinations
        self.heartbeat = heartbeat
        self.coordinations: dict[tuple[str, str], Coordination] = {}    # (owner, task id) -> coordination

    @property
    def room(self) -> int:
        return max(0, self.max_coordinations - len(self.coordinations))

    # -- the contract for the composite itself ------------------------------------------------

    def on_cfp(self, env: Envelope, capacity: Capacity) -> None:
        cfp: Cfp = env.message
        if self.room <= 0 and (env.sender, cfp.task_id) not in self.coordinations:
            self._send(env.sender, Refuse(cfp.task_id, cfp.attempt, RefusalCode.NO_SLOTS,
                                          f"coordinating {len(self.coordinations)} composites already"))
            return
        self._send(env.sender, Bid(cfp.task_id, cfp.attempt, slots=self.max_coordinations,
                                   slots_free=max(0, self.room - 1), cpu_percent=capacity.cpu_percent,
                                   mem_available=capacity.mem_available))

    def on_award(self, env: Envelope, now: float, wall_ms: int) -> None:
        award: Award = env.message
        key = (env.sender, award.task_id)
        c = self.coordinations.get(key)
        if c is not None and c.attempt == award.attempt:        # our accept was lost: say it again
            c.owner_dead_since = None                           # it speaks: alive
            self._send(env.sender, Accept(award.task_id, award.attempt))
            if c.final is not None and c.final_sent:
                self._send(env.sender, c.final)
            return
        if c is not None and award.attempt < c.attempt:         # late: we coordinate a newer attempt
            self._send(env.sender, Reject(award.task_id, award.attempt, RefusalCode.NO_SLOTS, "superseded award"))
            return
        if c is not None:                                       # an older attempt of ours: superseded
            self._stop(c, wall_ms)
            del self.coordinations[key]
        elif self.room <= 0:
            self._send(env.sender, Reject(award.task_id, award.attempt, RefusalCode.NO_SLOTS,
                                          f"coordinating {len(self.coordinations)} composites already"))
            return
        spec = award.spec.composite
        assert spec is not None
        try:                                                    # a peer's spec: checked as a client's is
            decompose.validate(spec)
        except decompose.SpecError as exc:
            why = f"invalid composite: {exc}"
            self._send(env.sender, Reject(award.task_id, award.attempt, RefusalCode.POLICY, why))
            self.out.emit(Log, level="warning", text=f"refused to coordinate {award.task_id} of {env.sender}: {exc}")
            return
        steps = {s.name: StepRun(s, decompose.part_count(s)) for s in decompose.step_order(spec)}
        c = Coordination(award.task_id, award.attempt, env.sender, self.lookup(env.sender)[0], spec, now, steps,
                         next_heartbeat=now + self.heartbeat)
        self.coordinations[key] = c
        for result in award.done:                               # finished under earlier coordinators
            self._record(c, result, reported=True)
        self._send(env.sender, Accept(award.task_id, award.attempt))
        self.advance(c, now, wall_ms)

    def on_cancel(self, env: Envelope, now: float, wall_ms: int) -> bool:
        """True if the cancel was about a coordination of ours."""
        msg: Cancel = env.message
        c = self.coordinations.get((env.sender, msg.task_id))
        if c is None or c.attempt != msg.attempt:
            return False
        c.owner_dead_since = None                               # it speaks: alive
        if not c.final_sent:
            self._stop(c, wall_ms)
            c.final = Result(c.task_id, c.attempt, Outcome.CANCELLED, None, msg.reason or "cancelled",
                             int((now - c.started) * 1000))
            self._send_final(c, now)
        return True

    def on_ack(self, env: Envelope) -> bool:
        """True if the ack was of a coordination's result (it is over: forgotten)."""
        msg: Ack = env.message
        c = self.coordinations.get((env.sender, msg.task_id))
        if c is None or c.attempt != msg.attempt or not c.final_sent:
            return False
        del self.coordinations[(env.sender, msg.task_id)]
        return True

    def on_parts_ack(self, env: Envelope, now: float) -> None:
        msg: PartsAck = env.message
        c = self.coordinations.get((env.sender, msg.task_id))
        if c is None or c.attempt != msg.attempt or c.report is None or c.report[0] != msg.report:
            return
        c.report, c.owner_dead_since = None, None                # it speaks: alive
        self._report(c, now)

    # -- parts ----------------------------------------------------------------------------------

    def collect(self, finished: list[Task], now: float, wall_ms: int) -> None:
        """Parts the manager finished since the last input: record them, then release what they unblock."""
        touched: dict[int, Coordination] = {}
        for task in finished:
            c = self._owner_of(task)
            if c is None:
                continue
            key = c.in_flight.pop(task.id)
            if key == "reduce" and task.last_result is not None:
                c.reduce_output = (task.last_result.stdout, task.last_result.stderr)
            self._record(c, self._result_of(task, key), reported=False)
            touched[id(c)] = c
        for c in touched.values():
            self.advance(c, now, wall_ms)
            self._report(c, now)

    def advance(self, c: Coordination, now: float, wall_ms: int) -> None:
        """Release the parts that may run now; start the reduce or end the coordination when due."""
        if c.final is not None:
            return
        spec = c.spec
        if spec.fail_fast and c.first_failure is not None:
            for task_id in list(c.in_flight):
                self.manager.cancel_part(task_id, wall_ms)
        else:
            limit = min(spec.max_parallel or PART_WINDOW, PART_WINDOW)
            for run in c.steps.values():
                if run.next >= run.total:
                    continue
                deps = [c.steps[d] for d in run.step.depends_on]
                if not all(d.over for d in deps):
                    continue
                if any(d.failed for d in deps):
                    self._skip(c, run, "a step it depends on did not succeed")
                    continue
                while run.next < run.total and len(c.in_flight) < limit:
                    part = decompose.part(run.step, run.next, c.task_id)
                    run.next += 1
                    if part.key not in c.results:
                        self._release(c, part.key, part.spec, now, wall_ms)
        if c.in_flight or not all(run.over for run in c.steps.values()):
            return
        if spec.reduce is not None and "reduce" not in c.results and not (spec.fail_fast and c.first_failure):
            part = decompose.reduce_part(spec, c.task_id, list(c.results.values()))
            self._release(c, part.key, part.spec, now, wall_ms)
            return
        self._finish(c, now)

    def _release(self, c: Coordination, key: str, spec: TaskSpec, now: float, wall_ms: int) -> None:
        task_id = decompose.part_task_id(c.task_id, c.attempt, key)
        c.in_flight[task_id] = key
        self.manager.submit_part(task_id, spec, now, wall_ms)

    def _skip(self, c: Coordination, run: StepRun, why: str) -> None:
        for i in range(run.next, run.total):
            key = decompose.part_key(run.step, i)
            if key not in c.results:
                self._record(c, PartResult(key, "skipped", reason=why), reported=False)
        run.next = run.total

    def _record(self, c: Coordination, result: PartResult, reported: bool) -> None:
        if result.key in c.results:
            return
        c.results[result.key] = result
        run = c.steps.get(decompose.step_of(result.key))
        if run is not None:
            run.ended += 1
            if result.state != "succeeded":
                run.failed += 1
        if result.state == "failed" and c.first_failure is None:
            c.first_failure = result
        if not reported:
            c.to_report.append(result)

    def _result_of(self, task: Task, key: str) -> PartResult:
        att = task.attempts[-1] if task.attempts else None
        res = task.last_result
        state = {TaskState.SUCCEEDED: "succeeded", TaskState.CANCELLED: "cancelled"}.get(task.state, "failed")
        return PartResult(key, state, task.exit_code, att.node_name if att else "", task.reason,
                          res.runtime_ms if res else 0, task.spec.env.get("XCHANGED_ITEM"), task.id, self.self_id,
                          decompose.tail(res.stdout) if res else "", decompose.tail(res.stderr) if res else "")

    def _finish(self, c: Coordination, now: float) -> None:
        total = len(c.results)
        failed = c.failed
        first = c.first_failure or next((r for r in c.results.values() if r.state != "succeeded"), None)
        if first is None:
            exit_code, reason = 0, ""
        else:
            exit_code = first.exit_code if first.exit_code not in (None, 0) else 1
            reason = f"{failed} of {total} parts did not succeed (first: {first.key}: {first.state}" + (
                f", {first.reason})" if first.reason else ")")
        stdout, stderr = c.reduce_output
        c.final = Result(c.task_id, c.attempt, Outcome.EXITED, exit_code, reason, int((now - c.started) * 1000),
                         stdout, stderr)
        self._report(c, now)

    def _stop(self, c: Coordination, wall_ms: int) -> None:
        """Cancel what a coordination has in flight; release nothing more."""
        for task_id in list(c.in_flight):
            self.manager.cancel_part(task_id, wall_ms)
        c.in_flight.clear()

    def _owner_of(self, task: Task) -> Coordination | None:
        for (_, task_id), c in self.coordinations.items():
            if task_id == task.spec.parent and task.id in c.in_flight:
                return c
        return None

    # -- reports and time -----------------------------------------------------------------------

    def _report(self, c: Coordination, now: float) -> None:
        """Send the next batch of finished parts (one outstanding at a time); then, once everything
        is acknowledged, the final result."""
        if c.report is None and c.to_report:
            batch, c.to_report = c.to_report[:REPORT_MAX], c.to_report[REPORT_MAX:]
            c.reports += 1
            c.report = (c.reports, batch)
            self._progress(c, now)
        elif c.report is None and c.final is not None and not c.final_sent:
            self._send_final(c, now)

    def _progress(self, c: Coordination, now: float) -> None:
        c.next_heartbeat = now + self.heartbeat
        if c.owner_dead_since is not None:
            return                              # sent when the owner is heard of again (owner_health)
        seq, parts = c.report if c.report is not None else (0, [])
        self._send(c.owner, Progress(c.task_id, c.attempt, int((now - c.started) * 1000), None, parts=parts,
                                     report=seq), c.owner_address)

    def _send_final(self, c: Coordination, now: float) -> None:
        assert c.final is not None
        c.final_sent, c.next_send = True, now + c.backoff
        if c.owner_dead_since is None:          # else sent when the owner is heard of again
            self._send(c.owner, c.final, c.owner_address)

    def owner_health(self, peer_id: str, health: str, now: float) -> None:
        """Membership's verdict on a peer: an owner declared dead is sent nothing more; one that is
        alive again gets the outstanding report, or the result, at once."""
        for c in self.coordinations.values():
            if c.owner != peer_id:
                continue
            if health == DEAD and c.owner_dead_since is None:
                c.owner_dead_since = now
            elif health == ALIVE and c.owner_dead_since is not None:
                c.owner_dead_since = None
                if c.final_sent:
                    assert c.final is not None
                    c.backoff, c.next_send = RESULT_BACKOFF[0], now + RESULT_BACKOFF[0]
                    self._send(c.owner, c.final, c.owner_address)
                else:
                    self._progress(c, now)

    def on_timer(self, now: float, wall_ms: int = 0) -> None:
        for key, c in list(self.coordinations.items()):
            if c.owner_dead_since is not None:
                if now - c.owner_dead_since >= OWNER_RETENTION:
                    self._give_up(key, c, wall_ms)
                continue
            if c.final_sent:
                if now >= c.next_send:
                    c.backoff = min(c.backoff * 2, RESULT_BACKOFF[1])
                    c.next_send = now + c.backoff
                    assert c.final is not None
                    self._send(c.owner, c.final, c.owner_address)
            elif now >= c.next_heartbeat:
                self._progress(c, now)          # a heartbeat, carrying the outstanding report again

    def _give_up(self, key: tuple[str, str], c: Coordination, wall_ms: int) -> None:
        self._stop(c, wall_ms)
        del self.coordinations[key]
        self.out.emit(Log, level="warning",
                      text=f"gave up coordinating {c.task_id} (attempt {c.attempt}): its manager {c.owner} has been "
                           f"dead for {OWNER_RETENTION:.0f} s; it re-awards the composite if it comes back")

    def next_deadline(self) -> float:
        times = [c.owner_dead_since + OWNER_RETENTION if c.owner_dead_since is not None
                 else c.next_send if c.final_sent else c.next_heartbeat for c in self.coordinations.values()]
        return min(times, default=float("inf"))

    def _send(self, peer: str, message: object, fallback_address: str = "") -> None:
        self.out.emit(Send, targets=((peer, self.lookup(peer)[0] or fallback_address),), message=message)
