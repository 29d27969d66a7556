"""How a driver feeds the protocol core and carries out its effects: one loop for the daemon and the
simulator, so that what the simulator shows is what the daemon does.

    driver = Driver(node, clock, handlers, commit)
    driver.batch(events)        # whatever inputs are queued, in order (one or many)

A batch:
1. every input goes to `Node.handle(event, now, pump=False)`, then a due timer (`TimerFired`), then
   one `Node.settle(now)`: the pump runs once, with the time the batch ends (a bid window starts when
   its cfps really go out), and ranks every task and freed slot of the batch together;
2. writes are staged as their effects come (`STAGED`: store and audit writes, log lines);
3. `commit(BEFORE)`: what the other effects depend on is written (effects.py: SYNC, BEFORE);
4. the other effects (`CARRIED`: messages, replies, process starts and kills) are carried out, in
   the order the core emitted them;
5. `commit(AFTER)`: the write-behind ones.

Every effect type has a handler, checked when the driver is built: an effect a driver does not know
is our bug, not something to skip.
"""

from __future__ import annotations

from typing import Any, Callable

from .protocol.effects import (
    AFTER,
    BEFORE,
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
from .protocol.errors import LocalProtocolError
from .protocol.events import Instant, TimerFired
from .protocol.node import Node

STAGED: tuple[type, ...] = (PersistTask, PersistParts, PersistAttempt, ForgetAttempt, StoreOutput, Audit, Log,
                            PersistAuditHead, PersistReputation)
CARRIED: tuple[type, ...] = (Send, Relay, StartTask, KillTask, ProveAudit, ServeQuery, LiveOutput, Reply)

Handler = Callable[[Any], None]


class Driver:
    def __init__(self, node: Node, clock: Callable[[], Instant], handlers: dict[type, Handler],
                 commit: Callable[[str], None]):
        missing = [t.__name__ for t in STAGED + CARRIED if t not in handlers]
        if missing:
            raise LocalProtocolError(f"the driver has no handler for {', '.join(missing)}")
        self.node = node
        self.clock = clock
        self.handlers = handlers
        self.commit = commit
        self.batches = 0

    def batch(self, events: list[Any]) -> None:
        """Feed `events` (possibly none: just a timer check) and carry out what they caused."""
        self.batches += 1
        node, carried = self.node, []
        for event in events:
            self._stage(node.handle(event, self.clock(), pump=False), carried)
        now = self.clock()
        if now.mono >= node.next_deadline():
            self._stage(node.handle(TimerFired(stimulus_id=f"timer@{now.mono:.3f}"), now, pump=False), carried)
        self._stage(node.settle(self.clock()), carried)
        self.commit(BEFORE)
        for effect in carried:
            self.handlers[type(effect)](effect)
        self.commit(AFTER)

    def _stage(self, effects: list[Any], carried: list[Any]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind in CARRIED:
                carried.append(effect)
            elif kind in STAGED:
                self.handlers[kind](effect)
            else:
                raise LocalProtocolError(f"no driver for effect {effect!r}")
