"""What each effect of the core does in the daemon: the handlers of its driver (driver.py).

Every effect type needs a handler here AND in the simulator (sim/cluster.py `_driver`); driver.py's
STAGED and CARRIED tuples list them, and a driver built without one refuses to start. Staged ones
(store and audit writes, log lines) only write; the driver commits them before the carried ones
(messages, replies, process starts and kills) go out, so nothing outside this process sees a
decision before it is written (the durability rule, runtime/daemon.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..driver import Driver
from ..protocol.effects import (
    Audit,
    ForgetAttempt,
    KillTask,
    LiveOutput,
    Log,
    PersistAttempt,
    PersistAuditHead,
    PersistParts,
    PersistReputation,
    PersistTask,
    ProveAudit,
    Relay,
    Reply,
    Send,
    ServeQuery,
    StartTask,
    StoreOutput,
)
from ..protocol.events import Instant
from ..protocol.lifecycle import TERMINAL
from ..protocol.messages import AuditProof, to_body
from .audit import AuditLog
from .clock import wall_ms

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("xchanged")


def build_driver(daemon: Daemon) -> Driver:
    """The daemon's driver over its node: each effect to the store, the audit log, the peers
    (peer_frames.py), the control socket's clients (control.py) or the executor."""
    store, peers, control = daemon.store, daemon.peers, daemon.control
    live = control.cluster.live

    def persist_task(effect: PersistTask) -> None:
        store.put_task(effect.doc, effect.when)
        if effect.doc["state"] in TERMINAL:
            daemon.finished_in_batch.append(effect.doc)
        live.task_changed(effect.doc)           # followers of its output: it started, or ended

    def store_output(effect: StoreOutput) -> None:
        store.put_output(effect.task_id, effect.attempt, effect.stdout, effect.stderr)
        live.finish(effect.task_id)

    def relay(effect: Relay) -> None:
        for peer, address in effect.targets:
            for frame in effect.frames:
                peers.send(peer, address, frame)

    handlers: dict[type, Any] = {
        PersistTask: persist_task,
        PersistAttempt: lambda e: store.put_attempt(e.doc, e.when),
        PersistParts: lambda e: store.put_parts(e.task_id, [to_body(p) for p in e.parts]),
        ForgetAttempt: lambda e: store.delete_attempt(e.task_id, e.attempt),
        StoreOutput: store_output,
        LiveOutput: lambda e: live.add(e.task_id, e.attempt, e.stream, e.offset, e.data),
        ServeQuery: control.cluster.serve,
        PersistAuditHead: lambda e: store.put_audit_head(e.node_id, e.doc, e.when),
        PersistReputation: lambda e: store.put_reputation(e.kind, e.key, e.doc, e.when),
        Audit: lambda e: daemon.audit.append(e.entry),
        Log: lambda e: log.log(logging.getLevelName(e.level.upper()), "%s [%s]", e.text, e.stimulus_id),
        Send: lambda e: peers.send_message(e.message, e.targets), Relay: relay,
        Reply: lambda e: control.reply(e, held=store.sync_owed),   # a submit or cancel: once on disk
        StartTask: lambda e: daemon.executor.start(e.task_id, e.attempt, e.spec, e.env),
        KillTask: lambda e: daemon.executor.kill(e.task_id, e.attempt, e.reason),
        ProveAudit: lambda e: peers.send(*e.target, daemon.encoder.encode(audit_proof(daemon.audit, e), wall_ms())),
    }
    return Driver(daemon.node, lambda: Instant(time.monotonic(), wall_ms()), handlers,
                  lambda phase: store.commit_due(time.monotonic(), phase))


def audit_proof(audit: AuditLog, req: ProveAudit) -> AuditProof:
    """A peer's request for a consistency proof of our log between two sizes (protocol/audit_watch.py)."""
    if req.new_size > audit.size:
        return AuditProof(req.old_size, req.new_size, [],
                          error=f"new_size {req.new_size} is beyond the log ({audit.size} records)")
    return AuditProof(req.old_size, req.new_size, audit.consistency_proof(req.old_size, req.new_size))
