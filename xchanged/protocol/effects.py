"""Outputs of the protocol core, named as commands for the driver to carry out, in order.

Order matters: a `PersistTask` or `Audit` comes before the `Send` or `Reply` that depends on it, and
the driver must finish each durable effect before it performs the next one.

Durability (`when` on the Persist* effects). "Written" survives a crash of the daemon;
"on disk" (fsynced) survives power loss, which the driver ensures for every write within
SYNC_INTERVAL (a group fsync off its event loop), so a decision lost to a power cut is at most
that old: the protocol then runs that task again (at least once), never loses it.
- SYNC: on disk before any later effect (a client's submit: the reply promises the task is kept);
- BEFORE: written before any later effect (write-ahead: a peer may act on what follows);
- AFTER: written in the same batch, right after its effects (write-behind: a crash in between only
  makes recovery slower, never wrong);
- LAZY: written with the next commit, or within a second.
Audit entries are written before what follows; the signed heads the driver gossips cover only what
is on disk, so a power cut can never make a log look shorter than a head its peers have seen.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .messages import PartResult, Query, TaskSpec

SYNC, BEFORE, AFTER, LAZY = "sync", "before", "after", "lazy"


@dataclass(frozen=True, slots=True)
class Send:
    """Sign `message` once and send it to each (node id, address) in `targets`."""

    targets: tuple[tuple[str, str], ...]
    message: Any
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class Relay:
    """Forward already-signed frames unchanged (gossip relays, indirect-probe answers)."""

    targets: tuple[tuple[str, str], ...]
    frames: tuple[bytes, ...]
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class StartTask:
    task_id: str
    attempt: int
    spec: TaskSpec
    env: dict[str, str]            # extra environment set by the contractor (e.g. CUDA_VISIBLE_DEVICES)
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class KillTask:
    task_id: str
    attempt: int
    reason: str
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class PersistTask:
    """Write this task's document to the store (see the module docstring for `when`)."""

    doc: dict[str, Any]
    when: str = BEFORE
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class PersistParts:
    """Manager side: keep these finished parts of composite `task_id` (the coordinator's report):
    written before the `parts_ack` that lets the coordinator forget them (BEFORE)."""

    task_id: str
    parts: tuple[PartResult, ...]
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class PersistAttempt:
    """Contractor side: write the record of an accepted attempt, keyed by (task_id, attempt).
    `doc["state"]` is "running" (with pid and pid_start once the process started) or "result" (with
    the unacknowledged `Result` body, resent until `ack`). See the module docstring for `when`."""

    doc: dict[str, Any]
    when: str = BEFORE
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class ForgetAttempt:
    """Contractor side: the manager acknowledged this attempt's result; drop its record. LAZY: if
    the delete is lost in a crash, the result is resent and acknowledged again, harmlessly."""

    task_id: str
    attempt: int
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class PersistAuditHead:
    """Keep what we know of a peer's audit log (audit_watch.Watched.stored(): its last checked head,
    status and fork evidence), so a restart of ours does not forget it. LAZY: a lost write only
    means an older baseline, which the next head is still checked against."""

    node_id: str
    doc: dict[str, Any]
    when: str = LAZY
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class PersistReputation:
    """Keep a manager's reputation document (reputation.py): `kind` "contractor" (a peer's record)
    or "speed" (a command's run times), `key` the peer or the command; `doc` None deletes it. LAZY:
    not safety-critical."""

    kind: str
    key: str
    doc: dict[str, Any] | None
    when: str = LAZY
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class StoreOutput:
    """Keep an attempt's captured output for `xchanged logs`."""

    task_id: str
    attempt: int
    stdout: bytes
    stderr: bytes
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class Audit:
    """Append an entry to the tamper-evident award log (written before what follows)."""

    entry: dict[str, Any]
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class ProveAudit:
    """Answer a peer's `audit_proof_req`: send it an `AuditProof` built from our audit log.

    The core cannot build the proof (the Merkle tree lives with the log, in the driver); the
    driver sends AuditProof(old_size, new_size, proof) to `target`, or with `error` set when it
    cannot prove that range (new_size beyond its log, no log)."""

    target: tuple[str, str]        # (node id, address)
    old_size: int
    new_size: int
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class ServeQuery:
    """Answer a peer's `query` about our own tasks, as the same control operation would be answered
    locally (the store, the audit log and the live output are the driver's): the driver sends the
    document to `asker` in `answer` frames (messages.answer_parts), or an error with its code."""

    asker: tuple[str, str]         # (node id, address)
    asker_name: str
    query: Query
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class LiveOutput:
    """Keep output a running attempt of one of our tasks just wrote, for `logs` and `logs -f`
    (bytes `offset`.. of the contractor's `stream`); the attempt's result replaces it."""

    task_id: str
    attempt: int
    stream: str
    offset: int
    data: bytes
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer a control-socket request."""

    request_id: int
    ok: bool
    result: Any = None
    error: str = ""
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class Log:
    level: str                     # debug | info | warning | error
    text: str
    stimulus_id: str = ""


class Outbox:
    """Collects effects during one `handle` call, stamping each with the id of the input that caused
    it: the input being handled, or (`caused_by`) an earlier input whose effects were held back, as
    the pump's announcements are held until the end of a driver's batch."""

    def __init__(self) -> None:
        self.effects: list[Any] = []
        self.stimulus_id = ""

    def emit(self, cls: type, **fields: Any) -> None:
        self.effects.append(cls(stimulus_id=self.stimulus_id, **fields))

    @contextmanager
    def caused_by(self, stimulus_id: str) -> Iterator[None]:
        saved, self.stimulus_id = self.stimulus_id, stimulus_id or self.stimulus_id
        try:
            yield
        finally:
            self.stimulus_id = saved

    def take(self) -> list[Any]:
        out, self.effects = self.effects, []
        return out
