"""The manager's task records, and the index that holds them and makes every change of state.

Records: a `Task` holds its spec, its state and its `Attempt`s (one per award); a `Round` is an open
call for proposals. `to_doc`/`from_doc` are the JSON documents the store keeps and the control socket
shows; fields after `counter` are transient and rebuilt after a restart.

Rules of the index (`TaskIndex`):
- Every change of a task's or an attempt's state goes through `move` / `move_attempt`, which check
  it against the lifecycle tables (lifecycle.py) and keep the counts the manager reads instead of
  walking its tasks: tasks per unfinished state, and per peer the attempts holding a slot there
  (`awarded` or `running`: a `waiting` attempt holds a queue place, not a slot).
- Leaving a state drops the timers that belonged to it: a task back in the queue or finished has no
  award, run or queue deadline; a running one no award or queue deadline.
- Memory is bounded for a daemon running for months: every unfinished task is in memory and in
  `active`, in submission order; only the `retention` most recently finished stay in memory. Older
  ones are evicted: their last persisted document (the store) is the only copy, and the driver
  serves them from there. A terminal task never becomes active again; an evicted task is unknown to
  the manager, so a late message about it is answered as one about any superseded attempt and can
  never bring it back. Task ids must be unique for good (the daemon draws 80 random bits).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .codec import Envelope
from .decompose import total_parts
from .errors import LocalProtocolError
from .lifecycle import (
    LIVE_ATTEMPT,
    TERMINAL,
    AttemptState,
    TaskState,
    check_attempt_move,
    check_task_move,
)
from .messages import PartResult, Refuse, Result, TaskSpec, from_body, priority_level, to_body

AGING_STEP = 30.0               # seconds of waiting that raise a task's priority by one level
FINISHED_RETENTION = 1000       # finished tasks kept in memory (older ones live only in the store)


@dataclass(slots=True)
class Attempt:
    attempt: int
    node: str
    node_name: str
    state: AttemptState
    score: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    started: int | None = None  # wall ms
    ended: int | None = None
    awarded: int | None = None  # wall ms of the award
    estimate_ms: int | None = None  # the winning bid's run-time estimate
    why: str = ""               # reason code (lifecycle.Why, or a refusal code)
    peak_mem: int | None = None # bytes, as its contractor measured (Result.peak_mem)
    cpu_s: float | None = None  # CPU seconds it used (Result.cpu_s)

    def to_doc(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "node": self.node_name or self.node, "node_id": self.node,
                "state": str(self.state), "score": round(self.score, 4), "exit_code": self.exit_code,
                "reason": self.reason, "reason_code": self.why, "started": self.started, "ended": self.ended,
                "awarded": self.awarded, "estimate_ms": self.estimate_ms, "peak_mem": self.peak_mem,
                "cpu_s": self.cpu_s}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Attempt":
        return cls(doc["attempt"], doc["node_id"], doc["node"], AttemptState(doc["state"]), doc.get("score", 0.0),
                   doc.get("exit_code"), doc.get("reason", ""), doc.get("started"), doc.get("ended"),
                   doc.get("awarded"), doc.get("estimate_ms"), doc.get("reason_code", ""), doc.get("peak_mem"),
                   doc.get("cpu_s"))


@dataclass(slots=True)
class Round:
    attempt: int
    candidates: set[str]
    deadline: float
    bids: dict[str, Envelope] = field(default_factory=dict)
    refusals: dict[str, Refuse] = field(default_factory=dict)


@dataclass(slots=True)
class Task:
    id: str
    spec: TaskSpec
    submitted: int              # wall ms
    order: int                  # submission order, for FIFO among equals
    state: TaskState = TaskState.QUEUED
    attempts: list[Attempt] = field(default_factory=list)
    exit_code: int | None = None
    reason: str = ""
    finished: int | None = None
    why: str = ""               # reason code (lifecycle.Why): `reason`, for programs
    boost: int = 0              # priority levels gained by failures
    failures: int = 0
    losses: int = 0
    avoid: set[str] = field(default_factory=set)
    counter: int = 0            # last attempt number handed out
    origin: str = ""            # the composite this one reruns (xchanged resubmit)
    # transient, rebuilt after a restart
    stimulus: str = ""          # the input that last changed the task: what its next effects answer to
    queued_since: float = 0.0
    not_before: float = 0.0
    backoff: float = 0.0
    round: Round | None = None
    standby: list[tuple[str, float, Envelope | None]] = field(default_factory=list)
    award_deadline: float | None = None     # assigned, no answer yet: award the next bid after it
    last_heard: float = 0.0
    run_deadline: float | None = None       # running with a timeout: act ourselves after it
    wait_since: float | None = None         # queued at its contractor since (Manager._promise_start)
    promised_start: float = 0.0
    wait_deadline: float | None = None
    spec_body: dict[str, Any] | None = None   # the spec as a plain map, built once (the spec never changes)
    last_result: Result | None = None       # the result that ended the current attempt (a part's: its tails)
    parts: dict[str, PartResult] = field(default_factory=dict)   # a composite: its parts that ended, until
                                            # it ends (then they are in the store only)
    parts_total: int = 0                    # a composite: how many parts it has (decompose.total_parts)
    parts_done: int = 0
    parts_failed: int = 0

    def __post_init__(self) -> None:
        if self.spec.composite is not None and not self.parts_total:
            self.parts_total = total_parts(self.spec.composite)

    @property
    def holds_slots(self) -> bool:
        """Its attempts take a slot where they run (a composite's coordination takes none)."""
        return self.spec.composite is None

    @property
    def ephemeral(self) -> bool:
        """A part of a composite: not persisted by the coordinator that manages it (coordinator.py)."""
        return bool(self.spec.parent)

    @property
    def current(self) -> Attempt | None:
        """The live attempt (awarded, waiting or running), if any: always the last one."""
        return self.attempts[-1] if self.attempts and self.attempts[-1].state in LIVE_ATTEMPT else None

    def new_attempt(self) -> int:
        """A fresh conversation number for a round or an award, never reused (fencing)."""
        self.counter += 1
        return self.counter

    @property
    def base_level(self) -> int:
        """Priority plus the boost of failed attempts, before aging."""
        return priority_level(self.spec.priority) + self.boost

    def level(self, now: float) -> int:
        waited = max(0.0, now - self.queued_since)
        return self.base_level + int(waited // AGING_STEP)

    def to_doc(self) -> dict[str, Any]:
        """The task as persisted and shown to clients (read-only: its parts may be shared)."""
        last = self.attempts[-1] if self.attempts else None
        if self.spec_body is None:
            self.spec_body = to_body(self.spec)
        return {
            "id": self.id, "state": str(self.state), "priority": self.spec.priority,
            "node": last.node_name if last and last.state != AttemptState.REJECTED else None,
            "attempts": [a.to_doc() for a in self.attempts], "exit_code": self.exit_code,
            "reason": self.reason, "reason_code": self.why, "submitted": self.submitted, "finished": self.finished,
            "command": list(self.spec.argv), "name": self.spec.name, "spec": self.spec_body,
            "order": self.order, "boost": self.boost, "failures": self.failures, "losses": self.losses,
            "avoid": sorted(self.avoid), "counter": self.counter, "resubmit_of": self.origin,
        } | ({"composite": True, "progress": self.progress()} if self.spec.composite is not None else {}) \
          | ({"parent": self.spec.parent} if self.spec.parent else {})

    def progress(self) -> dict[str, int]:
        """A composite's parts: how many ended, of how many, and how many of those did not succeed."""
        return {"done": self.parts_done, "total": self.parts_total, "failed": self.parts_failed}

    def record_parts(self, results: list[PartResult]) -> list[PartResult]:
        """Keep the parts that ended (the first report of each); returns those that are new."""
        new = [r for r in results if r.key not in self.parts]
        for r in new:
            self.parts[r.key] = r
            self.parts_done += 1
            self.parts_failed += r.state != "succeeded"
        return new

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Task":
        task = cls(doc["id"], from_body(TaskSpec, doc["spec"]), doc["submitted"], doc["order"],
                   TaskState(doc["state"]), [Attempt.from_doc(a) for a in doc["attempts"]], doc.get("exit_code"),
                   doc.get("reason", ""), doc.get("finished"), doc.get("reason_code", ""), doc.get("boost", 0),
                   doc.get("failures", 0), doc.get("losses", 0), set(doc.get("avoid", ())), doc.get("counter", 0),
                   doc.get("resubmit_of", ""))
        task.record_parts([from_body(PartResult, p) for p in doc.get("parts_done", ())])   # kept apart by the driver
        if "parts_done" not in doc and "progress" in doc:          # a finished composite: the counts only
            task.parts_done, task.parts_failed = doc["progress"]["done"], doc["progress"]["failed"]
        return task

    def says(self, why: str, reason: str) -> None:
        """Why the task waits (or ended): a code for programs and a sentence for people."""
        self.why, self.reason = why, reason


class TaskIndex:
    """The tasks in memory (all unfinished ones, the `retention` most recently finished ones), the
    one place their states change, and the counts kept as they do."""

    def __init__(self, retention: int = FINISHED_RETENTION):
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.retention = retention
        self.tasks: dict[str, Task] = {}                    # id -> task, every task held in memory
        self.active: dict[str, Task] = {}                   # the unfinished ones, in insertion order
        self._finished: OrderedDict[str, None] = OrderedDict()   # retained finished ids, oldest first
        self.evicted = 0                                    # finished tasks dropped from memory so far
        self.counts: Counter[TaskState] = Counter()         # unfinished tasks per state
        self.live: dict[AttemptState, Counter[str]] = {s: Counter() for s in LIVE_ATTEMPT}
                                                            # our live attempts that take a slot, per peer
        self.queued_levels: Counter[int] = Counter()        # queued tasks that take a slot, per base level

    def __len__(self) -> int:
        return len(self.tasks)

    def count(self, state: TaskState) -> int:
        return self.counts[state]

    def holding(self, peer: str) -> int:
        """Our attempts holding a slot at `peer` (awarded, or running there)."""
        return self.live[AttemptState.AWARDED][peer] + self.live[AttemptState.RUNNING][peer]

    def queued_at(self, peer: str) -> int:
        """Our attempts awarded to `peer` or waiting in its local queue."""
        return self.live[AttemptState.AWARDED][peer] + self.live[AttemptState.WAITING][peer]

    def add(self, task: Task) -> None:
        """A submitted task, or one recovered from the store."""
        if task.id in self.tasks:
            raise LocalProtocolError(f"task {task.id} added twice")
        self.tasks[task.id] = task
        if task.state in TERMINAL:
            self._retire(task.id)
            return
        self.active[task.id] = task
        self._count(task, task.state, +1)
        att = task.current
        if att is not None and task.holds_slots:
            self._tally(att.state, att.node, +1)

    def move(self, task: Task, new: TaskState) -> None:
        """Change a task's state (checked against lifecycle.TASK_MOVES), dropping what the old one kept."""
        check_task_move(task.id, task.state, new)
        self._count(task, task.state, -1)
        task.state = new
        if new is TaskState.RUNNING or new is TaskState.QUEUED or new in TERMINAL:
            task.award_deadline = task.wait_deadline = task.wait_since = None
        if new is TaskState.QUEUED or new in TERMINAL:
            task.run_deadline = None
        if new in TERMINAL:
            att = task.current
            if att is not None and task.holds_slots:        # it ended before its attempt did
                self._tally(att.state, att.node, -1)
            if self.active.pop(task.id, None) is not None:
                self._retire(task.id)
        else:
            self._count(task, new, +1)

    def award(self, task: Task, attempt: Attempt) -> None:
        """A new attempt (state awarded) becomes the task's current one."""
        if task.current is not None or attempt.state is not AttemptState.AWARDED:
            raise LocalProtocolError(f"task {task.id}: award of {attempt.attempt} over a live attempt")
        task.attempts.append(attempt)
        if task.holds_slots:
            self._tally(attempt.state, attempt.node, +1)

    def move_attempt(self, task: Task, att: Attempt, new: AttemptState, why: str | None = None,
                     reason: str | None = None, ended: int | None = None) -> None:
        """Change an attempt's state (checked against lifecycle.ATTEMPT_MOVES); its reason code and
        sentence, and `ended` (wall ms), are recorded with it when given."""
        check_attempt_move(task.id, att.attempt, att.state, new)
        if att is task.current and task.id in self.active and task.holds_slots:
            self._tally(att.state, att.node, -1)
            self._tally(new, att.node, +1)
        att.state = new
        if why is not None:
            att.why = why
        if reason is not None:
            att.reason = reason
        if ended is not None:
            att.ended = ended

    def _tally(self, state: AttemptState, peer: str, delta: int) -> None:
        counter = self.live.get(state)
        if counter is not None:
            counter[peer] += delta
            if counter[peer] <= 0:
                del counter[peer]

    def _count(self, task: Task, state: TaskState, delta: int) -> None:
        self.counts[state] += delta
        if state is TaskState.QUEUED and task.holds_slots:
            self.queued_levels[task.base_level] += delta
            if self.queued_levels[task.base_level] <= 0:
                del self.queued_levels[task.base_level]

    def _retire(self, task_id: str) -> None:
        self._finished[task_id] = None
        while len(self._finished) > self.retention:
            old, _ = self._finished.popitem(last=False)
            self.tasks.pop(old, None)
            self.evicted += 1

    def validate(self) -> None:
        """The kept counts equal a recount (called by Node.validate_state)."""
        counts = Counter(t.state for t in self.active.values())
        if +counts != +self.counts:
            raise LocalProtocolError(f"task counts {dict(+self.counts)} != recount {dict(counts)}")
        for state, kept in self.live.items():
            recount = Counter(a.node for t in self.active.values()
                              if (a := t.current) and a.state is state and t.holds_slots)
            if recount != +kept:
                raise LocalProtocolError(f"{state} attempts {dict(+kept)} != recount {dict(recount)}")
        levels = Counter(t.base_level for t in self.active.values() if t.state is TaskState.QUEUED and t.holds_slots)
        if levels != +self.queued_levels:
            raise LocalProtocolError(f"queued levels {dict(+self.queued_levels)} != recount {dict(levels)}")
        for task in self.tasks.values():
            if (task.id in self.active) == (task.state in TERMINAL):
                raise LocalProtocolError(f"task {task.id}: state {task.state}, active {task.id in self.active}")
