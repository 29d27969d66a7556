"""Wire messages: one frozen dataclass per message type, validated when built from a peer's body.

Every message of one contract carries `task_id` and `attempt` (the conversation id), so a late or
duplicated message can always be matched to the attempt it belongs to, or recognised as stale.
Durations on the wire are relative milliseconds (`*_in_ms`, `*_ms` spans), never absolute times of
the sender's clock, so clock skew between hosts cannot break windows or deadlines.

Bodies are plain msgpack maps. `from_body` (wire.py) checks every field's type and bounds against
the dataclass annotations; a peer's bad body raises `RemoteProtocolError("invalid_body")`. Task
descriptions (`TaskSpec`, composites) are in specs.py; this module re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from .specs import MAX_PARTS, PRIORITIES, CompositeSpec, PartResult, Requirements, Step, TaskSpec, priority_level
from .wire import MAX_ITEMS, MAX_OUTPUT_BYTES, MAX_STR, Limit, from_body, to_body

__all__ = [  # the messages, and the names of specs.py and wire.py every message user needs
    "ANSWER_CHUNK",
    "Accept",
    "Ack",
    "Answer",
    "AuditProof",
    "AuditProofReq",
    "Award",
    "BUSY_CODES",
    "Bid",
    "Cancel",
    "Cfp",
    "CompositeSpec",
    "Dead",
    "Gossip",
    "GpuInfo",
    "LOAD_CHANGE",
    "LOAD_HEARTBEAT",
    "LOAD_NEWS",
    "Limit",
    "Load",
    "MAX_ANSWER_PARTS",
    "MAX_GOSSIP_BYTES",
    "MAX_GOSSIP_FRAMES",
    "MAX_ITEMS",
    "MAX_OUTPUT_BYTES",
    "MAX_PARTS",
    "MAX_QUERY_LIMIT",
    "MAX_QUERY_WAIT_MS",
    "MAX_STR",
    "MESSAGE_TYPES",
    "OUTPUT_CHUNK",
    "Outcome",
    "Output",
    "PRIORITIES",
    "PartResult",
    "PartsAck",
    "Ping",
    "PingReq",
    "Pong",
    "Progress",
    "QUERY_OPS",
    "Query",
    "ROOM_CODES",
    "RefusalCode",
    "Refuse",
    "Reject",
    "RELAYABLE",
    "RejectBid",
    "Requirements",
    "Result",
    "STREAMS",
    "Step",
    "Suspect",
    "TaskSpec",
    "answer_parts",
    "from_body",
    "priority_level",
    "to_body",
]


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


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    mem_total: int
    mem_free: int
    util_percent: float


LOAD_HEARTBEAT, LOAD_CHANGE, LOAD_NEWS = 0, 1, 2      # Load.news


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
    coord_free: int = 0               # composites it would coordinate on top of those it does
    draining: bool = False            # finishing what it runs, taking nothing new: managers do not ask it
    cert: bytes = b""                 # the node's certificate from a cluster CA (certs.py), if it has one
    refutes: int = 0                  # suspicions of this node it has refuted in this incarnation (SWIM's
                                      # incarnation number: (incarnation, refutes) orders its lives)
    news: int = 0                     # LOAD_HEARTBEAT: nothing changed (not relayed); LOAD_CHANGE: relayed;
                                      # LOAD_NEWS: every node should hear of it at once (a refutation, or what
                                      # this node is changed: address, slots, labels, resources)
    joining: bool = False             # the sender knows no live peer yet: answer it with a welcome (our table's loads)


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


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe (SWIM). `reply_via` is set when probing on behalf of another node. `reply_to`
    and `via_address` are the addresses to answer at (the prober may not be in the target's table:
    views are partial). `gossip` piggybacks relayable signed frames (the sender's load first)."""

    TYPE: ClassVar[str] = "ping"
    nonce: int
    reply_via: str | None = None
    reply_to: str = ""                # where the pong goes: the sender's own address
    via_address: str = ""             # with reply_via: the asker's address (the pong is forwarded there)
    gossip: Annotated[list[bytes], Limit(64)] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a third node to probe `target` for us (indirect probe, as in SWIM)."""

    TYPE: ClassVar[str] = "ping_req"
    target: str
    nonce: int
    target_address: str = ""          # where the target is (the helper may not know it)
    reply_to: str = ""                # the asker's address


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ping; forwarded unchanged (signed by the target) for indirect probes."""

    TYPE: ClassVar[str] = "pong"
    nonce: int
    for_node: str
    for_address: str = ""             # the asker's address, for the helper that forwards it
    gossip: Annotated[list[bytes], Limit(64)] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Suspect:
    """The sender's probes of `node` went unanswered: it suspects that life of it ((incarnation,
    refutes) of its load). Relayed as the sender's signed bytes; `node` refutes it with a load of a
    higher life; independent suspicions of one life shorten the time to a verdict (Lifeguard)."""

    TYPE: ClassVar[str] = "suspect"
    node: str
    incarnation: int
    refutes: int


@dataclass(frozen=True, slots=True)
class Dead:
    """The sender's suspicion of `node` ran out unrefuted: that life of it is dead. Relayed like
    `suspect`; only a load of a higher life (a refutation, a restart) brings `node` back."""

    TYPE: ClassVar[str] = "dead"
    node: str
    incarnation: int
    refutes: int


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
    """A batch of relayed signed frames: loads, suspicions and death verdicts (`RELAYABLE`), each
    another node's original signed frame.

    The batch's own signature proves only who relayed it (and that the relayer is alive); the
    receiver's driver verifies every entry on its own, against its origin's key, as if it had
    arrived alone (and drops any entry that is not relayable)."""

    TYPE: ClassVar[str] = "gossip"
    frames: list[bytes]

    def __post_init__(self) -> None:
        if len(self.frames) > MAX_GOSSIP_FRAMES or sum(len(f) for f in self.frames) > MAX_GOSSIP_BYTES:
            raise ValueError(f"a gossip batch is at most {MAX_GOSSIP_FRAMES} frames of {MAX_GOSSIP_BYTES} bytes")


# ---------------------------------------------------------------------------------------------
# One cluster, one view: questions about tasks other nodes manage (docs/protocol.md, "Queries")

QUERY_OPS = ("status", "logs", "wait", "cancel", "tasks", "audit")
MAX_QUERY_WAIT_MS = 60_000     # the longest a query may ask its answerer to wait (wait, logs -f)
MAX_QUERY_LIMIT = 10_000       # tasks one manager lists for `tasks --cluster`
ANSWER_CHUNK = 512 << 10       # bytes of an answer's JSON document per `answer` frame
MAX_ANSWER_PARTS = 32          # frames one answer may take (16 MiB of JSON); larger ones are truncated
OUTPUT_CHUNK = 256 << 10       # bytes of live output per `output` frame
STREAMS = ("stdout", "stderr")


@dataclass(frozen=True, slots=True)
class Query:
    """Asker -> a task's manager (or every peer): serve this control operation as if asked locally.

    `request_id` is the asker's and comes back in each `answer`. A task query names `task_id`; a
    `tasks` query names none and lists the answerer's own tasks (at most `limit`, in `state`). The
    answerer serves it from its own tasks only, never forwarding it again."""

    TYPE: ClassVar[str] = "query"
    request_id: int
    op: str
    task_id: str = ""
    state: str = ""                   # tasks: only tasks in this state
    limit: int = 100                  # tasks: at most this many (the newest)
    attempt: int | None = None        # logs: this attempt's output (default: the latest)
    follow: bool = False              # logs: new output after `offsets`, waiting up to `wait_ms` for some
    offsets: list[int] = field(default_factory=lambda: [0, 0])   # logs -f: bytes of stdout, stderr seen
    wait_ms: int = 0                  # wait, logs -f: how long the answerer may wait before answering
    user: str = ""                    # cancel, logs: the user who asked, as the asker's daemon says
                                      # (the client's uid there: runtime/access.py)
    part: str = ""                    # logs: one part of a composite (its key, or its own id)
    admin: bool = False               # cancel, logs: that user is an admin on the asking node

    def __post_init__(self) -> None:
        if self.op not in QUERY_OPS:
            raise ValueError(f"op must be one of {', '.join(QUERY_OPS)}")
        if (self.op == "tasks") == bool(self.task_id):
            raise ValueError("a tasks query names no task; every other query names one")
        if not 0 <= self.wait_ms <= MAX_QUERY_WAIT_MS:
            raise ValueError(f"wait_ms must be between 0 and {MAX_QUERY_WAIT_MS}")
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        if len(self.offsets) != 2 or min(self.offsets) < 0:
            raise ValueError("offsets are two byte counts (stdout, stderr)")


@dataclass(frozen=True, slots=True)
class Answer:
    """Answerer -> asker: one part of the answer to query `request_id`: a JSON document (`ok`), or an
    error with a stable `code` (`no_such_task`, `busy`, `error`). A document larger than one frame
    comes in `parts` frames of ANSWER_CHUNK bytes, numbered from 0, the asker joins them."""

    TYPE: ClassVar[str] = "answer"
    request_id: int
    ok: bool
    body: bytes = b""                 # part `part` of the JSON document
    part: int = 0
    parts: int = 1
    code: str = ""
    error: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.part < self.parts <= MAX_ANSWER_PARTS:
            raise ValueError(f"need 0 <= part < parts <= {MAX_ANSWER_PARTS}")
        if len(self.body) > ANSWER_CHUNK:
            raise ValueError(f"an answer part is at most {ANSWER_CHUNK} bytes")


def answer_parts(request_id: int, document: bytes) -> list[Answer]:
    """A JSON document as the `answer` frames that carry it (at most MAX_ANSWER_PARTS: the caller
    keeps documents within MAX_ANSWER_PARTS * ANSWER_CHUNK bytes)."""
    chunks = [document[i:i + ANSWER_CHUNK] for i in range(0, len(document), ANSWER_CHUNK)] or [b""]
    if len(chunks) > MAX_ANSWER_PARTS:
        raise ValueError(f"an answer of {len(document)} bytes needs more than {MAX_ANSWER_PARTS} parts")
    return [Answer(request_id, True, chunk, i, len(chunks)) for i, chunk in enumerate(chunks)]


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


RELAYABLE = frozenset({"load", "suspect", "dead"})    # frame types a gossip batch or a probe may carry


def carried_frames(message: Any) -> list[bytes]:
    """The relayable signed frames a message carries: a gossip batch's, or a probe's piggyback."""
    if isinstance(message, Gossip):
        return message.frames
    if isinstance(message, (Ping, Pong)):
        return message.gossip
    return []


MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Load, Cfp, Bid, Refuse, RejectBid, Award, Accept, Reject, Progress, PartsAck, Result, Ack,
                Cancel, Ping, PingReq, Pong, AuditProofReq, AuditProof, Gossip, Query, Answer, Output, Suspect, Dead)
}

