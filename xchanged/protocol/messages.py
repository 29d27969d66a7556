"""Wire messages: one frozen dataclass per message type, validated when built from a peer's body.

Every message of one contract carries `task_id` and `attempt` (the conversation id), so a late or
duplicated message can always be matched to the attempt it belongs to, or recognised as stale.
Durations on the wire are relative milliseconds (`*_in_ms`, `*_ms` spans), never absolute times of
the sender's clock, so clock skew between hosts cannot break windows or deadlines.

Bodies are plain msgpack maps. `from_body` checks every field's type and bounds against the
dataclass annotations; a peer's bad body raises `RemoteProtocolError("invalid_body")`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from .errors import RemoteProtocolError

MAX_STR = 4096                 # names, reasons, ids, argv elements
MAX_ITEMS = 1024               # list and map entries
MAX_OUTPUT_BYTES = 1 << 20     # captured output carried in one result
PRIORITIES = ("low", "normal", "high", "urgent")


class RefusalCode(StrEnum):
    """Why a contractor refuses a cfp or rejects an award (`Refuse.code`, `Reject.code` on the wire)."""

    NOT_ALLOWED = "not_allowed"     # the command is not in this node's allow-list
    LABEL = "label"                 # a required label is missing
    NO_SLOTS = "no_slots"           # every slot (and queue place) is taken
    OVERLOADED = "overloaded"       # CPU above overload_cpu_percent
    CPUS = "cpus"
    MEM = "mem"
    GPUS = "gpus"
    GPU_MEM = "gpu_mem"


BUSY_CODES = frozenset({RefusalCode.NO_SLOTS, RefusalCode.OVERLOADED})    # busy now, not unable
ROOM_CODES = BUSY_CODES | {RefusalCode.CPUS, RefusalCode.MEM, RefusalCode.GPUS, RefusalCode.GPU_MEM}


class Outcome(StrEnum):
    """How an attempt ended (`Result.outcome`, `TaskExited.outcome`)."""

    EXITED = "exited"               # the process exited; see the exit code
    TIMEOUT = "timeout"             # killed at its timeout
    CANCELLED = "cancelled"         # killed or dropped on a cancel
    ERROR = "error"                 # could not be started
    LOST = "lost"                   # its contractor restarted while it ran


def priority_level(name: str) -> int:
    """Queue rank of a priority name (low=0 .. urgent=3)."""
    try:
        return PRIORITIES.index(name)
    except ValueError:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {name!r}") from None


# ---------------------------------------------------------------------------------------------
# Validation from annotations


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            return _check(value, arg, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{where}: expected bool")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{where}: expected int")
        if not -(1 << 63) <= value < (1 << 63):
            raise RemoteProtocolError("invalid_body", f"{where}: int out of range")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{where}: expected number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise RemoteProtocolError("invalid_body", f"{where}: number not finite")
        return value
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_STR:
            raise RemoteProtocolError("invalid_body", f"{where}: expected string (<= {MAX_STR})")
        return value
    if hint is bytes:
        if not isinstance(value, bytes) or len(value) > MAX_OUTPUT_BYTES:
            raise RemoteProtocolError("invalid_body", f"{where}: expected bytes")
        return value
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
            raise RemoteProtocolError("invalid_body", f"{where}: expected list (<= {MAX_ITEMS})")
        (item,) = typing.get_args(hint)[:1]
        checked = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin is dict:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise RemoteProtocolError("invalid_body", f"{where}: expected map (<= {MAX_ITEMS})")
        key_hint, value_hint = typing.get_args(hint)
        return {_check(k, key_hint, where): _check(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RemoteProtocolError("invalid_body", f"{where}: expected map")
        return _build(hint, value, where)
    raise TypeError(f"unsupported annotation {hint!r} at {where}")  # our bug, not the peer's


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, body: dict[str, Any], where: str = "") -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _check(body[f.name], hints[f.name], f"{where}{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RemoteProtocolError("invalid_body", f"{where}{f.name}: missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError("invalid_body", f"{where}{cls.__name__}: {exc}") from None


def to_body(obj: Any) -> Any:
    """Dataclass tree -> plain msgpack-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_body(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_body(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_body(v) for k, v in obj.items()}
    return obj


def from_body(cls: type, body: Any) -> Any:
    if not isinstance(body, dict):
        raise RemoteProtocolError("invalid_body", f"{cls.__name__}: body must be a map")
    return _build(cls, body)


# ---------------------------------------------------------------------------------------------
# Task descriptions


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a node must have to run a task (hard), and what it should have (soft `prefer`)."""

    cpus: float = 1.0
    mem: int = 0                     # bytes
    gpus: int = 0
    gpu_mem: int = 0                 # bytes free per GPU
    labels: dict[str, str] = field(default_factory=dict)
    prefer: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.mem < 0 or self.gpus < 0 or self.gpu_mem < 0:
            raise ValueError("resource requirements must not be negative")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A command task as submitted: everything a contractor needs to run it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None     # seconds of run time before the attempt is killed
    requirements: Requirements = field(default_factory=Requirements)
    priority: str = "normal"
    retries: int = 3                 # attempts after the first, for failures
    deadline_ms: int | None = None   # wall-clock epoch ms, for earliest-deadline-first ordering
    name: str = ""
    est_runtime: float | None = None # seconds, the submitter's estimate (used for EDF and bids)

    def __post_init__(self) -> None:
        if not self.argv or not all(self.argv):
            raise ValueError("a task needs a non-empty command")
        priority_level(self.priority)
        if self.retries < 0 or self.retries > 100:
            raise ValueError("retries must be between 0 and 100")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    mem_total: int
    mem_free: int
    util_percent: float


@dataclass(frozen=True, slots=True)
class Load:
    """A node's signed load signal, gossiped and relayed as the original bytes."""

    TYPE: ClassVar[str] = "load"
    name: str
    address: str                      # host:port of the node's peer socket
    slots: int
    slots_free: int
    running: int
    queued: int                       # tasks this node manages that wait for a contractor
    cpus: int
    cpu_percent: float
    mem_total: int
    mem_available: int
    gpus: list[GpuInfo] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    audit_head: dict[str, Any] | None = None
    queue_free: int = 0               # room in the local queue of accepted tasks waiting for a slot


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
    code: str                          # overloaded | no_slots | cpus | mem | gpus | gpu_mem | label | not_allowed
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


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of an attempt; resent until acknowledged."""

    TYPE: ClassVar[str] = "result"
    task_id: str
    attempt: int
    outcome: str                      # exited | timeout | cancelled | error | lost
    exit_code: int | None = None
    reason: str = ""
    runtime_ms: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int | None = None
    slot_refilled: bool = False       # the freed slot went at once to an attempt queued on this node


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


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct liveness probe of a suspected peer. `reply_via` is set when probing on behalf of another."""

    TYPE: ClassVar[str] = "ping"
    nonce: int
    reply_via: str | None = None


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a third node to probe `target` for us (indirect probe, as in SWIM)."""

    TYPE: ClassVar[str] = "ping_req"
    target: str
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ping; forwarded unchanged (signed by the target) for indirect probes."""

    TYPE: ClassVar[str] = "pong"
    nonce: int
    for_node: str


@dataclass(frozen=True, slots=True)
class AuditProofReq:
    """Ask a node to prove its signed audit head of `new_size` extends the one of `old_size`."""

    TYPE: ClassVar[str] = "audit_proof_req"
    old_size: int
    new_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.old_size <= self.new_size:
            raise ValueError("need 0 <= old_size <= new_size")


@dataclass(frozen=True, slots=True)
class AuditProof:
    """RFC 9162 consistency proof between two of the sender's audit heads; `error` if it has none."""

    TYPE: ClassVar[str] = "audit_proof"
    old_size: int
    new_size: int
    proof: list[bytes] = field(default_factory=list)
    error: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.old_size <= self.new_size:
            raise ValueError("need 0 <= old_size <= new_size")
        if len(self.proof) > 128 or any(len(h) != 32 for h in self.proof):
            raise ValueError("a proof is at most 128 hashes of 32 bytes")


MAX_GOSSIP_FRAMES = 256        # relayed frames in one gossip batch
MAX_GOSSIP_BYTES = 1 << 20     # their total size


@dataclass(frozen=True, slots=True)
class Gossip:
    """A batch of relayed load signals: each entry is another node's original signed `load` frame.

    The batch's own signature proves only who relayed it (and that the relayer is alive); the
    receiver's driver verifies every entry on its own, against its origin's key, as if it had
    arrived alone (and drops any entry that is not a `load`)."""

    TYPE: ClassVar[str] = "gossip"
    frames: list[bytes]

    def __post_init__(self) -> None:
        if len(self.frames) > MAX_GOSSIP_FRAMES or sum(len(f) for f in self.frames) > MAX_GOSSIP_BYTES:
            raise ValueError(f"a gossip batch is at most {MAX_GOSSIP_FRAMES} frames of {MAX_GOSSIP_BYTES} bytes")


MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Load, Cfp, Bid, Refuse, RejectBid, Award, Accept, Reject, Progress, Result, Ack,
                Cancel, Ping, PingReq, Pong, AuditProofReq, AuditProof, Gossip)
}

