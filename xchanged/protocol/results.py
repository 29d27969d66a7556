"""A contractor's results: each kept, and resent, until its manager acknowledges it.

Rules:
- A result replaces its attempt's record in the store (state "result") before it is first sent
  (write-ahead: a result lost in a crash would run the task again); the record is dropped
  (`ForgetAttempt`) only on the manager's `ack`.
- Resends back off from RESULT_BACKOFF[0], doubling, up to `2 * heartbeat` (and RESULT_BACKOFF[1]),
  below the manager's heartbeat deadline, so a result held while its manager was down is not
  mistaken for silence.
- After a restart (`recover`) kept results are resent as they were, and an attempt that was running
  is reported to its manager at once as a `result` with outcome `lost` (the driver has killed what
  was left of its process), so the manager reassigns it without waiting for a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .codec import Envelope
from .effects import ForgetAttempt, Outbox, PersistAttempt
from .messages import Outcome, Result, from_body, to_body

RESULT_BACKOFF = (0.5, 10.0)    # resend delay of an unacknowledged result: first, cap


@dataclass(slots=True)
class PendingResult:
    manager: str
    result: Result
    next_send: float
    backoff: float
    manager_address: str = ""


class Results:
    def __init__(self, outbox: Outbox, send: Callable[[str, object, str], None]):
        self.out = outbox
        self.send = send                              # (manager, message, its address if we forgot it)
        self.pending: dict[tuple[str, int], PendingResult] = {}

    def report(self, manager: str, manager_address: str, result: Result, now: float) -> None:
        """Send an attempt's result to its manager, kept (and resent) until it is acknowledged."""
        pending = PendingResult(manager, result, now + RESULT_BACKOFF[0], RESULT_BACKOFF[0], manager_address)
        self.pending[(result.task_id, result.attempt)] = pending
        self._persist(pending)
        self.send(manager, result, manager_address)

    def on_ack(self, env: Envelope) -> None:
        key = (env.message.task_id, env.message.attempt)
        pending = self.pending.get(key)
        if pending is not None and pending.manager == env.sender:
            del self.pending[key]
            self.out.emit(ForgetAttempt, task_id=key[0], attempt=key[1])

    def recover(self, docs: list[dict[str, Any]], now: float) -> None:
        """Take back the attempts persisted before a restart: results are resent; attempts that were
        running (their processes are gone: the driver killed any orphan) are reported as lost."""
        for doc in docs:
            key = (doc["task_id"], doc["attempt"])
            if doc["state"] == "result":
                result = from_body(Result, doc["result"])
            else:
                why = "contractor restarted while the attempt ran"
                if doc.get("orphan"):
                    why += f" ({doc['orphan']})"
                result = Result(doc["task_id"], doc["attempt"], Outcome.LOST, None, why, 0, b"", b"", doc.get("pid"))
            pending = PendingResult(doc["manager"], result, now + RESULT_BACKOFF[0], RESULT_BACKOFF[0],
                                    doc.get("manager_address", ""))
            self.pending[key] = pending
            if doc["state"] != "result":
                self._persist(pending)
            self.send(pending.manager, result, pending.manager_address)

    def resend_due(self, now: float, heartbeat: float) -> None:
        cap = min(RESULT_BACKOFF[1], 2 * heartbeat)
        for pending in self.pending.values():
            if now >= pending.next_send:
                pending.backoff = min(pending.backoff * 2, cap)
                pending.next_send = now + pending.backoff
                self.send(pending.manager, pending.result, pending.manager_address)

    def next_deadline(self) -> float:
        return min((p.next_send for p in self.pending.values()), default=float("inf"))

    def _persist(self, pending: PendingResult) -> None:
        res = pending.result
        self.out.emit(PersistAttempt, doc={
            "task_id": res.task_id, "attempt": res.attempt, "manager": pending.manager,
            "manager_address": pending.manager_address, "state": "result", "pid": res.pid,
            "result": to_body(res)})
