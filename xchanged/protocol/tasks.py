"""The manager's task records and the index it keeps them in.

Records: a `Task` holds its spec, its state and its `Attempt`s (one per award); a `Round` is an open
call for proposals. `to_doc`/`from_doc` are the JSON documents the store keeps and the control socket
shows; fields after `counter` are transient and rebuilt after a restart.

Rules of the index (`TaskIndex`), so that a daemon running for months keeps bounded memory and does
per-event work in proportion to its unfinished tasks, not to everything it ever ran:
- Every unfinished task (queued, assigned, running) is in memory and in `active`, in submission order.
- A task that reaches a terminal state (succeeded, failed, cancelled) moves to the finished list;
  only the `retention` most recently finished stay in memory. Older ones are evicted: their last
  persisted document (the store) is the only copy, and the driver serves them from there.
- A terminal task never becomes active again; an evicted task is unknown to the manager, so a late
  message about it is answered as one about any superseded attempt (a result is acknowledged and
  ignored) and can never bring it back. Task ids must be unique for good (the daemon draws 80 random
  bits): the id of an evicted task is not remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .codec import Envelope
from .messages import Refuse, TaskSpec, from_body, priority_level, to_body

QUEUED, ASSIGNED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "assigned", "running", "succeeded", "failed", "cancelled")
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
LIVE_ATTEMPT = ("awarded", "waiting", "running")   # awarded: no answer yet; waiting: queued on its node
AGING_STEP = 30.0               # seconds of waiting that raise a task's priority by one level
FINISHED_RETENTION = 1000       # finished tasks kept in memory (older ones live only in the store)


@dataclass(slots=True)
class Attempt:
    attempt: int
    node: str
    node_name: str
    state: str                  # awarded | running | succeeded | failed | timeout | lost | rejected | cancelled | superseded
    score: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    started: int | None = None  # wall ms
    ended: int | None = None
    awarded: int | None = None  # wall ms of the award
    estimate_ms: int | None = None  # the winning bid's run-time estimate

    def to_doc(self) -> dict:
        return {"attempt": self.attempt, "node": self.node_name or self.node, "node_id": self.node,
                "state": self.state, "score": round(self.score, 4), "exit_code": self.exit_code,
                "reason": self.reason, "started": self.started, "ended": self.ended,
                "awarded": self.awarded, "estimate_ms": self.estimate_ms}

    @classmethod
    def from_doc(cls, doc: dict) -> "Attempt":
        return cls(doc["attempt"], doc["node_id"], doc["node"], doc["state"], doc.get("score", 0.0),
                   doc.get("exit_code"), doc.get("reason", ""), doc.get("started"), doc.get("ended"),
                   doc.get("awarded"), doc.get("estimate_ms"))


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
    state: str = QUEUED
    attempts: list[Attempt] = field(default_factory=list)
    exit_code: int | None = None
    reason: str = ""
    finished: int | None = None
    boost: int = 0              # priority levels gained by failures
    failures: int = 0
    losses: int = 0
    avoid: set[str] = field(default_factory=set)
    counter: int = 0            # last attempt number handed out
    # transient, rebuilt after a restart
    queued_since: float = 0.0
    not_before: float = 0.0
    backoff: float = 0.0
    round: Round | None = None
    standby: list[tuple[str, float, Envelope]] = field(default_factory=list)
    award_deadline: float | None = None
    last_heard: float = 0.0
    run_deadline: float | None = None
    wait_since: float | None = None      # queued at its contractor since (see Manager._promise_start)
    promised_start: float = 0.0
    wait_deadline: float | None = None
    spec_body: dict | None = None   # the spec as a plain map, built once (the spec never changes)

    @property
    def current(self) -> Attempt | None:
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

    def to_doc(self) -> dict:
        """The task as persisted and shown to clients (read-only: its parts may be shared)."""
        last = self.attempts[-1] if self.attempts else None
        if self.spec_body is None:
            self.spec_body = to_body(self.spec)
        return {
            "id": self.id, "state": self.state, "priority": self.spec.priority,
            "node": last.node_name if last and last.state != "rejected" else None,
            "attempts": [a.to_doc() for a in self.attempts], "exit_code": self.exit_code,
            "reason": self.reason, "submitted": self.submitted, "finished": self.finished,
            "command": list(self.spec.argv), "name": self.spec.name, "spec": self.spec_body,
            "order": self.order, "boost": self.boost, "failures": self.failures, "losses": self.losses,
            "avoid": sorted(self.avoid), "counter": self.counter,
        }

    @classmethod
    def from_doc(cls, doc: dict) -> "Task":
        return cls(doc["id"], from_body(TaskSpec, doc["spec"]), doc["submitted"], doc["order"], doc["state"],
                   [Attempt.from_doc(a) for a in doc["attempts"]], doc.get("exit_code"), doc.get("reason", ""),
                   doc.get("finished"), doc.get("boost", 0), doc.get("failures", 0), doc.get("losses", 0),
                   set(doc.get("avoid", ())), doc.get("counter", 0))


class TaskIndex:
    """The tasks in memory: all unfinished ones, and the `retention` most recently finished ones."""

    def __init__(self, retention: int = FINISHED_RETENTION):
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.retention = retention
        self.tasks: dict[str, Task] = {}                    # id -> task, every task held in memory
        self.active: dict[str, Task] = {}                   # the unfinished ones, in insertion order
        self._finished: OrderedDict[str, None] = OrderedDict()   # retained finished ids, oldest first
        self.evicted = 0                                    # finished tasks dropped from memory so far

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, task: Task) -> None:
        self.tasks[task.id] = task
        if task.state in TERMINAL:
            self._retire(task.id)
        else:
            self.active[task.id] = task

    def finished(self, task: Task) -> None:
        """`task` reached a terminal state: stop treating it as active, evict the oldest finished."""
        if self.active.pop(task.id, None) is not None:
            self._retire(task.id)

    def queued(self) -> int:
        return sum(1 for t in self.active.values() if t.state == QUEUED)

    def _retire(self, task_id: str) -> None:
        self._finished[task_id] = None
        while len(self._finished) > self.retention:
            old, _ = self._finished.popitem(last=False)
            self.tasks.pop(old, None)
            self.evicted += 1
