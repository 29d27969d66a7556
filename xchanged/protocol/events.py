"""Inputs to the protocol core, named as facts that happened.

The drivers (daemon, simulator, tests) build these and pass them to `Node.handle(event, now)`
together with the current `Instant`. Each event carries a `stimulus_id`, which the effects it causes
inherit (and audit entries and log lines show), so "why did this happen" can be answered from the
log. The driver sets it where it knows more (a control request, the time a timer fired); otherwise
`stimulus_of` derives it from the input itself: a frame's type, sender and sequence number, a task's
id and attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .codec import Envelope
from .messages import GpuInfo, PartResult, Query, TaskSpec

if TYPE_CHECKING:
    from .node import NodeSettings


class Instant(NamedTuple):
    """One reading of the clock: monotonic seconds for timing, wall ms for records and skew."""

    mono: float
    wall_ms: int


@dataclass(frozen=True, slots=True)
class Capacity:
    """A resource reading of this node (psutil, NVML)."""

    cpus: int
    cpu_percent: float
    mem_total: int
    mem_available: int
    gpus: tuple[GpuInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A verified frame from a peer (or from ourselves, for the local contractor). `relayed`: it came
    inside another node's frame (a gossip batch, a probe's piggyback), so it may be old news."""

    envelope: Envelope
    stimulus_id: str = ""
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The deadline the core asked for (`Node.next_deadline()`) has passed."""

    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class TaskSubmitted:
    """A client submitted a task; the core assigns nothing until this is handled. A resubmitted
    composite (`xchanged resubmit`) names the one it reruns and brings the parts that succeeded there."""

    request_id: int
    task_id: str
    spec: TaskSpec
    resubmit_of: str = ""
    done: tuple[PartResult, ...] = ()
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    request_id: int
    task_id: str
    stimulus_id: str = ""
    by_node: str = ""               # the node a cancel came from over the peer protocol ("": this one)
    by_user: str = ""               # the user who asked, as their client said (audited)


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The executor started the process of an attempt this node accepted."""

    task_id: str
    attempt: int
    pid: int
    pid_start: float = 0.0          # the process's start time (epoch s, as the OS reports it), to tell
                                    # it from a later process that reuses the pid
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class TaskExited:
    """An attempt's process ended (or could not be started: outcome 'error')."""

    task_id: str
    attempt: int
    outcome: str                    # exited | timeout | cancelled | error | oom | cpu_limit
    exit_code: int | None
    runtime_ms: int
    stdout: bytes = b""
    stderr: bytes = b""
    reason: str = ""
    peak_mem: int | None = None     # bytes (cgroup memory.peak, else the highest RSS sampled)
    cpu_s: float | None = None      # CPU seconds, user + system
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class OutputWritten:
    """A running attempt's process wrote to stdout or stderr (the executor coalesces its reads)."""

    task_id: str
    attempt: int
    stream: str                     # stdout | stderr
    data: bytes
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class QueryRequested:
    """A client asked about a task this node does not manage (or for every manager's tasks): the
    core finds whom to ask and answers with a `Reply` to `request_id` (cluster_view.py)."""

    request_id: int
    query: Query                    # its request_id is `request_id`
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class ResourcesRead:
    capacity: Capacity
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class SeedConfigured:
    """A static peer address (a seed, or an mDNS-discovered service) to send our load to."""

    address: str
    public_key: bytes | None = None
    source: str = "seed"
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class FrameDropped:
    """A frame failed decoding or the replay check; counted by reason (`count` frames at once: a
    driver under a flood may sum its drops up instead of handing each one in)."""

    reason: str
    stimulus_id: str = ""
    count: int = 1


@dataclass(frozen=True, slots=True)
class AuditHeadSigned:
    """The driver signed a new head of our audit log (over records on disk); it goes into our load."""

    head: dict[str, Any]
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class CertificateLoaded:
    """The driver loaded this node's certificate from a cluster CA (at start, and when the file
    changed): it goes into our load signals, so peers that trust the CA trust us (b"": none)."""

    cert: bytes
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class StateRecovered:
    """At start-up: the tasks this node manages, as last persisted (dicts from `Task.to_doc`), the
    attempts its contractor had accepted and not yet had acknowledged (`PersistAttempt` docs), the
    peers' audit heads it had checked (`PersistAuditHead` docs), its reputation documents
    (`PersistReputation` docs) and the running totals the driver saved (`readout.totals`), so they
    survive a restart."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    audit_heads: list[dict[str, Any]] = field(default_factory=list)
    reputation: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The operator reloaded the config (SIGHUP, `xchanged reload`): the node's new settings, and its
    static seeds. Running and queued attempts are kept (fewer slots than run: no new work until it
    drains below them); peers see the change in our next load signal (operations.py)."""

    settings: NodeSettings
    seeds: tuple[str, ...] = ()
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class DrainChanged:
    """`xchanged drain` (or a SIGTERM) / `xchanged undrain`: stop taking work, hand back the accepted
    attempts that have not started, let running ones finish (operations.py)."""

    draining: bool
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class HandBackRunning:
    """A stopping daemon's grace is over: kill the attempts still running and hand them back to their
    managers for re-award now, rather than leave them to a restart or a death to be noticed."""

    reason: str = "the node stopped before the attempt finished"
    stimulus_id: str = ""


def stimulus_of(event: object) -> str:
    """The id an input is known by, from what it is (see the module docstring)."""
    given = getattr(event, "stimulus_id", "")
    if given:
        return given
    if isinstance(event, MessageReceived):
        env = event.envelope
        return f"{env.type}:{env.sender}:{env.incarnation}.{env.seq}"
    if isinstance(event, (TaskStarted, TaskExited)):
        return f"{'started' if isinstance(event, TaskStarted) else 'exited'}:{event.task_id}/{event.attempt}"
    if isinstance(event, TaskSubmitted):
        return f"submit:{event.task_id}"
    if isinstance(event, CancelRequested):
        return f"cancel:{event.task_id}"
    if isinstance(event, QueryRequested):
        return f"query:{event.query.op}:{event.query.task_id or '*'}"
    if isinstance(event, OutputWritten):
        return f"output:{event.task_id}/{event.attempt}"
    if isinstance(event, SeedConfigured):
        return f"seed:{event.address}"
    if isinstance(event, FrameDropped):
        return f"dropped:{event.reason}"
    if isinstance(event, AuditHeadSigned):
        return f"audit-head:{event.head.get('size')}"
    if isinstance(event, DrainChanged):
        return "drain" if event.draining else "undrain"
    if isinstance(event, CertificateLoaded):
        return "certificate"
    return {TimerFired: "timer", ResourcesRead: "resources", StateRecovered: "recovered", SettingsChanged: "reload",
            HandBackRunning: "hand-back"}.get(type(event), "input")
