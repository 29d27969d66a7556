"""The driver loop shared by the daemon and the simulator (driver.py): the order in which a batch's
effects are written and carried out, on a real Node with recording handlers (no sockets, no disk)."""

from __future__ import annotations

import random

import pytest

from xchanged.driver import CARRIED, STAGED, Driver
from xchanged.protocol.effects import BEFORE, PersistTask, Reply, Send
from xchanged.protocol.errors import LocalProtocolError
from xchanged.protocol.events import Capacity, Instant, ResourcesRead, SeedConfigured, TaskSubmitted
from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.protocol.node import Node, NodeSettings
from xchanged.protocol.signing import generate_key, node_id, public_bytes

WALL = 1_790_000_000_000


class Recorder:
    """Every handler appends (kind, effect) to one log; commits append ("commit", phase)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.now = 0.0

    def handlers(self) -> dict[type, object]:
        return {kind: (lambda e, k=kind.__name__: self.log.append((k, e))) for kind in STAGED + CARRIED}

    def commit(self, phase: str) -> None:
        self.log.append(("commit", phase))

    def clock(self) -> Instant:
        return Instant(self.now, WALL + int(self.now * 1000))


def node(slots: int = 1) -> Node:
    key = generate_key()
    n = Node(node_id(public_bytes(key)), NodeSettings(name="n", address="n:1", slots=slots), random.Random(1))
    n.handle(ResourcesRead(Capacity(cpus=1, cpu_percent=1.0, mem_total=1 << 30, mem_available=1 << 29)),
             Instant(0.0, WALL))
    return n


def test_writes_come_first_then_the_commit_then_what_depends_on_them():
    rec = Recorder()
    driver = Driver(node(), rec.clock, rec.handlers(), rec.commit)
    spec = TaskSpec(["true"], requirements=Requirements(labels={"nowhere": "x"}))   # nobody runs it: no sends
    driver.batch([TaskSubmitted(1, "T-1", spec), TaskSubmitted(2, "T-2", spec)])
    kinds = [k for k, _ in rec.log]
    persists = [i for i, k in enumerate(kinds) if k == "PersistTask"]
    replies = [i for i, k in enumerate(kinds) if k == "Reply"]
    before = kinds.index("commit")
    assert len(persists) == 2 and len(replies) == 2
    assert max(persists) < before < min(replies)               # both writes, one commit, then both replies
    assert rec.log[before] == ("commit", BEFORE) and rec.log[-1] == ("commit", "after")
    assert [e.request_id for k, e in rec.log if k == "Reply"] == [1, 2]       # in the order the core emitted


def test_one_pump_per_batch_announces_with_the_cause_of_each_task():
    rec = Recorder()
    n = node(slots=2)
    driver = Driver(n, rec.clock, rec.handlers(), rec.commit)
    driver.batch([TaskSubmitted(1, "T-1", TaskSpec(["true"])), TaskSubmitted(2, "T-2", TaskSpec(["true"]))])
    sends = [e for k, e in rec.log if k == "Send" and hasattr(e.message, "task_id")]    # not our own load
    assert sends, "the node's own contractor was not asked"
    assert {e.stimulus_id for e in sends if e.message.task_id == "T-1"} == {"submit:T-1"}
    assert {e.stimulus_id for e in sends if e.message.task_id == "T-2"} == {"submit:T-2"}
    assert driver.batches == 1


def test_a_due_timer_fires_once_per_batch_and_names_its_time():
    rec = Recorder()
    n = node()
    n.handle(SeedConfigured("seed:1"), Instant(0.0, WALL))          # someone to send our load to
    driver = Driver(n, rec.clock, rec.handlers(), rec.commit)
    rec.now = n.next_deadline() + 0.001
    driver.batch([])
    assert any(k == "Send" and e.stimulus_id.startswith("timer@") for k, e in rec.log)   # our first load signal


def test_a_driver_without_a_handler_for_some_effect_is_refused():
    rec = Recorder()
    handlers = rec.handlers()
    del handlers[Reply]
    with pytest.raises(LocalProtocolError, match="Reply"):
        Driver(node(), rec.clock, handlers, rec.commit)


def test_an_effect_no_driver_knows_is_an_error_not_skipped():
    rec = Recorder()
    n = node()
    driver = Driver(n, rec.clock, rec.handlers(), rec.commit)

    class Unknown:
        pass
    n.out.effects.append(Unknown())
    with pytest.raises(LocalProtocolError, match="no driver for effect"):
        driver.batch([])


def test_staged_and_carried_are_every_effect_type():
    from xchanged.protocol import effects
    kinds = {v for v in vars(effects).values()
             if isinstance(v, type) and hasattr(v, "__dataclass_fields__") and v.__module__ == effects.__name__}
    assert kinds == set(STAGED) | set(CARRIED)
    assert not set(STAGED) & set(CARRIED) and PersistTask in STAGED and Send in CARRIED
