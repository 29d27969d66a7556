"""Contract Net messages: one contract is one attempt of a task, and these are its conversation.

The manager announces (`cfp`), candidates bid or refuse, the manager awards one bid and rejects the
others (`reject_bid`), the winner accepts or rejects, then reports `progress`, live `output` and its
`result` (resent until the manager's `ack`); `cancel` stops it.

Rules:
* Every message of one contract carries `task_id` and `attempt` (the conversation id), so a late or
  duplicated message can always be matched to the attempt it belongs to, or recognised as stale.
* Windows and deadlines travel as relative milliseconds (`bid_window_ms`, `deadline_in_ms`), never
  absolute times of the sender's clock, so clock skew between hosts cannot break them.
* Refusal codes and outcomes are stable wire strings (`RefusalCode`, `Outcome`): peers branch on
  them, never on the human-readable `reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, ClassVar

from .specs import MAX_PARTS, PartResult, Requirements, TaskSpec
from .wire import Limit


class RefusalCode(StrEnum):
    """Why a contractor refuses a cfp or rejects an award (`Refuse.code`, `Reject.code` on the wire)."""

    POLICY = "policy"               # this node's policy forbids it: command not in the allow-list, user
                                    # (run_as = "submitter") unknown here or not allowed, working directory
    NOT_ALLOWED = "not_allowed"     # (older nodes) the command is not in this node's allow-list
    LABEL = "label"                 # a required label is missing
    NO_SLOTS = "no_slots"           # every slot (and queue place) is taken
    OVERLOADED = "overloaded"       # CPU above overload_cpu_percent
    CPUS = "cpus"
    MEM = "mem"
    GPUS = "gpus"
    GPU_MEM = "gpu_mem"
    DRAINING = "draining"           # the node is draining: it finishes what it runs and takes nothing new


BUSY_CODES = frozenset({RefusalCode.NO_SLOTS, RefusalCode.OVERLOADED})    # busy now, not unable
ROOM_CODES = BUSY_CODES | {RefusalCode.CPUS, RefusalCode.MEM, RefusalCode.GPUS, RefusalCode.GPU_MEM}


class Outcome(StrEnum):
    """How an attempt ended (`Result.outcome`, `TaskExited.outcome`)."""

    EXITED = "exited"               # the process exited; see the exit code
    TIMEOUT = "timeout"             # killed at its timeout
    CANCELLED = "cancelled"         # killed or dropped on a cancel
    ERROR = "error"                 # could not be started
    LOST = "lost"                   # its contractor restarted while it ran
    OOM = "oom"                     # killed for using more memory than its limit (--mem, node limit)
    CPU_LIMIT = "cpu_limit"         # killed at its CPU-time limit (RLIMIT_CPU)


@dataclass(frozen=True, slots=True)
class Cfp:
    """Call for proposals: the manager asks a candidate to bid for one attempt of a task."""

    TYPE: ClassVar[str] = "cfp"
    task_id: str
    attempt: int
    requirements: Requirements
    priority: int
    bid_window_ms: int
    queue_ok: bool = False            # the manager's queue is deep: a full node may bid to queue it
    command: str = ""                 # argv[0], so a node that may not run it refuses at once
    est_runtime_ms: int | None = None
    deadline_in_ms: int | None = None
    composite: bool = False           # a composite: its coordinator bids (coordinator.py), not its slots
    user: str = ""                    # the submitter (TaskSpec.user), for the contractor's run_as policy
    cwd: str | None = None            # the task's working directory, for the contractor's policy
    reply_to: str = ""                # the manager's address (a contractor's partial table may not hold it)


@dataclass(frozen=True, slots=True)
class Bid:
    """An offer: the contractor has reserved room for the task until the award or a rejection."""

    TYPE: ClassVar[str] = "bid"
    task_id: str
    attempt: int
    slots: int
    slots_free: int                   # after reserving this task
    cpu_percent: float
    mem_available: int
    est_start_ms: int = 0
    affinity: int = 0                 # how many `prefer` labels match
    est_runtime_ms: int | None = None # the bidder's estimate of the run time (checked against the result)
    queued: bool = False              # no slot is free: the task would wait in the bidder's local queue


@dataclass(frozen=True, slots=True)
class Refuse:
    TYPE: ClassVar[str] = "refuse"
    task_id: str
    attempt: int
    code: str                          # overloaded | no_slots | cpus | mem | gpus | gpu_mem | label | policy
    reason: str


@dataclass(frozen=True, slots=True)
class RejectBid:
    """Manager -> bidder: your bid lost or came after the window; release the reservation."""

    TYPE: ClassVar[str] = "reject_bid"
    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Award:
    TYPE: ClassVar[str] = "award"
    task_id: str
    attempt: int
    spec: TaskSpec
    score: float = 0.0
    queue_ok: bool = False            # the contractor may queue it behind its running tasks
    done: Annotated[list[PartResult], Limit(MAX_PARTS)] = field(default_factory=list)
                                      # a composite: the parts that finished under earlier coordinators
    reply_to: str = ""                # the manager's address (a contractor's partial table may not hold it)


@dataclass(frozen=True, slots=True)
class Accept:
    TYPE: ClassVar[str] = "accept"
    task_id: str
    attempt: int
    queued: int = 0                   # 0: starting now; n: n-th in the contractor's local queue
    est_start_ms: int = 0             # queued: when the contractor expects to start it (its promise)


@dataclass(frozen=True, slots=True)
class Reject:
    TYPE: ClassVar[str] = "reject"
    task_id: str
    attempt: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Heartbeat of a running attempt."""

    TYPE: ClassVar[str] = "progress"
    task_id: str
    attempt: int
    elapsed_ms: int
    pid: int | None = None
    est_start_ms: int | None = None   # still queued at the contractor: its renewed promise of a start
    parts: Annotated[list[PartResult], Limit(MAX_PARTS)] = field(default_factory=list)
                                      # a composite's coordinator: parts that ended, in report `report`
    report: int = 0


@dataclass(frozen=True, slots=True)
class PartsAck:
    """Manager -> coordinator: the parts of report `report` are stored; send the next ones."""

    TYPE: ClassVar[str] = "parts_ack"
    task_id: str
    attempt: int
    report: int


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of an attempt; resent until acknowledged."""

    TYPE: ClassVar[str] = "result"
    task_id: str
    attempt: int
    outcome: str                      # exited | timeout | cancelled | error | lost | oom | cpu_limit
    exit_code: int | None = None
    reason: str = ""
    runtime_ms: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int | None = None
    slot_refilled: bool = False       # the freed slot went at once to an attempt queued on this node
    handed_back: bool = False         # outcome lost: the contractor gave the attempt back (it drains or stops);
                                      # re-award it at once (a peer that predates this field sees it as lost)
    peak_mem: int | None = None       # bytes: the attempt's peak memory (cgroup, else sampled RSS)
    cpu_s: float | None = None        # CPU seconds it used (user + system)


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[str] = "ack"
    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    task_id: str
    attempt: int
    reason: str


OUTPUT_CHUNK = 256 << 10       # bytes of live output per `output` frame
STREAMS = ("stdout", "stderr")


@dataclass(frozen=True, slots=True)
class Output:
    """Contractor -> manager: what a running attempt wrote to `stream` at byte `offset` of it, as it
    writes it (coalesced, rate-limited and bounded by the contractor's `max_output`)."""

    TYPE: ClassVar[str] = "output"
    task_id: str
    attempt: int
    stream: str
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError("stream must be stdout or stderr")
        if self.offset < 0 or len(self.data) > OUTPUT_CHUNK:
            raise ValueError(f"need offset >= 0 and at most {OUTPUT_CHUNK} bytes of data")
