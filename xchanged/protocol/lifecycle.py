"""The two lifecycles the manager keeps, as tables: a task's, and each of its attempts'.

A task is what a client submitted; an attempt is one award of it to one contractor (its own
attempt number fences every message about it). Every change of state goes through
`TaskIndex.move` / `TaskIndex.move_attempt` (tasks.py), which check the move against these tables
and raise `LocalProtocolError` on any other: an illegal move is our bug, never a peer's doing.

Task states (docs/protocol.md shows both tables with what triggers each move)

    queued:    waiting for a contractor (announced, or waiting for a free slot)
    assigned:  awarded; its attempt is `awarded` (no answer yet) or `waiting` (queued at the contractor)
    running:   its attempt's process runs
    succeeded | failed | cancelled: final; exactly one completion is recorded

Attempt states

    awarded:    the award is sent; no accept yet
    waiting:    accepted into the contractor's local queue (prefetch), not started
    running:    started (an accept, or a progress with its pid)
    succeeded | failed | timeout: its result came (failed: non-zero exit or an error starting it)
    lost:       its contractor died, went silent, restarted, or kept it queued past its promise
    rejected:   the contractor rejected the award, or did not answer within the award timeout
    cancelled:  stopped by a user's cancel, or cancelled by its contractor
    superseded: a late result of an attempt the manager had already given up on; never the task's
"""

from __future__ import annotations

from enum import StrEnum

from .errors import LocalProtocolError


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptState(StrEnum):
    AWARDED = "awarded"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    LOST = "lost"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


class Why(StrEnum):
    """Stable codes for why a task waits or ended and why an attempt ended (`reason_code` in status
    documents; the `reason` beside it is for people, and may change wording). A rejected attempt's
    code is the contractor's refusal code (messages.RefusalCode)."""

    # a task waits
    NO_PEERS = "no_peers"                   # no peer known yet
    NO_PEER_FITS = "no_peer_fits"           # no known peer can run it (labels, resources, breaker)
    BUSY = "busy"                           # peers can run it; none has a free slot now
    NO_BIDS = "no_bids"                     # its last round got refusals or silence
    POLICY = "policy"                       # every answer of its last round was a policy refusal
    ALL_REJECTED = "all_rejected"           # every bidder rejected the award
    QUEUED_THERE = "queued_there"           # accepted into a contractor's local queue
    RETRYING = "retrying"                   # its last attempt ended without success; retries left
    # a task ended
    RETRIES_SPENT = "retries_spent"
    PARTS_FAILED = "parts_failed"           # a composite: some of its parts did not succeed
    LOST_TOO_OFTEN = "lost_too_often"
    CANCELLED = "cancelled"                 # by a user (a task), or on its contractor (an attempt)
    # an attempt ended
    EXIT_CODE = "exit_code"                 # non-zero exit
    TIMEOUT = "timeout"                     # killed at its timeout by its contractor
    START_ERROR = "start_error"             # could not be started
    OOM = "oom"                             # killed for exceeding its memory limit
    CPU_LIMIT = "cpu_limit"                 # killed at its CPU-time limit
    RUN_DEADLINE = "run_deadline"           # no result by its timeout plus a margin: the manager gave up
    CONTRACTOR_DEAD = "contractor_dead"
    NO_HEARTBEAT = "no_heartbeat"
    PROMISE_BROKEN = "promise_broken"       # queued at its contractor past the start it promised
    NO_ANSWER = "no_answer"                 # no accept or reject within the award timeout
    CONTRACTOR_RESTARTED = "contractor_restarted"
    LATE_RESULT = "late_result"             # a result of an attempt already given up on
    HANDED_BACK = "handed_back"             # its contractor gave it back: draining, or stopping past its grace


T, A = TaskState, AttemptState

TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    T.QUEUED: frozenset({T.ASSIGNED, T.CANCELLED}),
    T.ASSIGNED: frozenset({T.ASSIGNED, T.RUNNING, T.QUEUED, T.SUCCEEDED, T.FAILED, T.CANCELLED}),
    T.RUNNING: frozenset({T.QUEUED, T.SUCCEEDED, T.FAILED, T.CANCELLED}),
    T.SUCCEEDED: frozenset(),
    T.FAILED: frozenset(),
    T.CANCELLED: frozenset(),
}

_ENDED = frozenset({A.SUCCEEDED, A.FAILED, A.TIMEOUT, A.LOST, A.CANCELLED})
ATTEMPT_MOVES: dict[AttemptState, frozenset[AttemptState]] = {
    A.AWARDED: frozenset({A.WAITING, A.RUNNING, A.REJECTED}) | _ENDED,
    A.WAITING: frozenset({A.RUNNING}) | _ENDED,
    A.RUNNING: _ENDED,
    A.REJECTED: frozenset({A.SUPERSEDED}),
    A.LOST: frozenset({A.SUPERSEDED}),
    A.SUCCEEDED: frozenset(),
    A.FAILED: frozenset(),
    A.TIMEOUT: frozenset(),
    A.CANCELLED: frozenset(),
    A.SUPERSEDED: frozenset(),
}

TERMINAL: frozenset[TaskState] = frozenset(s for s, moves in TASK_MOVES.items() if not moves)
UNFINISHED: frozenset[TaskState] = frozenset(TaskState) - TERMINAL
LIVE_ATTEMPT: frozenset[AttemptState] = frozenset({A.AWARDED, A.WAITING, A.RUNNING})
HOLDS_SLOT: frozenset[AttemptState] = frozenset({A.AWARDED, A.RUNNING})   # a waiting one holds a queue place
TASK_OF_ATTEMPT = {A.AWARDED: T.ASSIGNED, A.WAITING: T.ASSIGNED, A.RUNNING: T.RUNNING}


def check_task_move(task_id: str, old: TaskState, new: TaskState) -> None:
    if new not in TASK_MOVES[old]:
        raise LocalProtocolError(f"task {task_id}: illegal move {old} -> {new}")


def check_attempt_move(task_id: str, attempt: int, old: AttemptState, new: AttemptState) -> None:
    if new not in ATTEMPT_MOVES[old]:
        raise LocalProtocolError(f"attempt {task_id}/{attempt}: illegal move {old} -> {new}")
