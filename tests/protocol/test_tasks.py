"""The manager's task index: unfinished tasks are indexed, finished ones are evicted after a retention."""

from __future__ import annotations

import pytest

from xchanged.protocol import codec
from xchanged.protocol.effects import PersistTask, Send
from xchanged.protocol.errors import LocalProtocolError
from xchanged.protocol.events import Instant, MessageReceived
from xchanged.protocol.lifecycle import ATTEMPT_MOVES, TASK_MOVES, TERMINAL, AttemptState, TaskState
from xchanged.protocol.messages import Accept, Ack, Cancel, Progress, Result, TaskSpec
from xchanged.protocol.tasks import Attempt, Task, TaskIndex
from xchanged.sim.cluster import SimCluster

CANCELLED, SUCCEEDED = TaskState.CANCELLED, TaskState.SUCCEEDED


def make(task_id: str, order: int) -> Task:
    return Task(task_id, TaskSpec(["true"]), 0, order)


def test_index_keeps_active_tasks_and_only_the_most_recently_finished():
    index = TaskIndex(retention=2)
    tasks = [make(f"T-{i}", i) for i in range(5)]
    for t in tasks:
        index.add(t)
    assert list(index.active) == [t.id for t in tasks] and index.count(TaskState.QUEUED) == 5
    for t in (tasks[3], tasks[0], tasks[4]):
        index.move(t, CANCELLED)
    assert list(index.active) == ["T-1", "T-2"] and index.count(TaskState.QUEUED) == 2
    assert set(index.tasks) == {"T-1", "T-2", "T-0", "T-4"}      # T-3 finished first: evicted
    assert index.evicted == 1
    with pytest.raises(LocalProtocolError):                       # a finished task never moves again
        index.move(tasks[4], TaskState.QUEUED)
    finished = make("T-9", 9)
    finished.state = CANCELLED
    index.add(finished)                                           # recovered already finished: not active
    assert "T-9" not in index.active and "T-0" not in index.tasks and index.evicted == 2


def test_retention_zero_keeps_no_finished_task():
    index = TaskIndex(retention=0)
    t = make("T-1", 1)
    index.add(t)
    index.move(t, CANCELLED)
    assert len(index) == 0 and not index.active


def test_every_move_outside_the_tables_is_our_bug():
    for old in TaskState:
        for new in TaskState:
            index, t = TaskIndex(), make("T-1", 1)
            t.state = old
            index.add(t)
            if new in TASK_MOVES[old]:
                index.move(t, new)
                assert t.state is new
            else:
                with pytest.raises(LocalProtocolError):
                    index.move(t, new)
    assert all(not TASK_MOVES[s] for s in TERMINAL)
    for old in AttemptState:
        for new in AttemptState:
            index, t = TaskIndex(), make("T-1", 1)
            att = Attempt(1, "N", "n", old)
            t.attempts.append(att)
            if new in ATTEMPT_MOVES[old]:
                index.move_attempt(t, att, new)
            else:
                with pytest.raises(LocalProtocolError):
                    index.move_attempt(t, att, new)


def test_counts_and_slots_held_follow_every_move():
    index, t = TaskIndex(), make("T-1", 1)
    index.add(t)
    att = Attempt(1, "Npeer", "peer", AttemptState.AWARDED)
    index.award(t, att)
    index.move(t, TaskState.ASSIGNED)
    assert index.holding("Npeer") == 1 and index.queued_at("Npeer") == 1 and index.count(TaskState.ASSIGNED) == 1
    index.move_attempt(t, att, AttemptState.WAITING)              # queued there: holds a queue place only
    assert index.holding("Npeer") == 0 and index.queued_at("Npeer") == 1
    index.move_attempt(t, att, AttemptState.RUNNING)
    index.move(t, TaskState.RUNNING)
    assert index.holding("Npeer") == 1 and index.queued_at("Npeer") == 0 and index.count(TaskState.RUNNING) == 1
    index.move_attempt(t, att, AttemptState.SUCCEEDED)
    index.move(t, SUCCEEDED)
    assert index.holding("Npeer") == 0 and +index.counts == {}
    index.validate()


def test_a_long_run_keeps_memory_bounded_by_retention_plus_active_tasks():
    retention = 100
    sim = SimCluster(seed=5, finished_retention=retention)
    sim.add_node("mgr", slots=4)
    sim.add_node("w", slots=4)
    sim.run_for(2.0)
    mgr = sim.node("mgr").node.manager
    worst = 0

    def finished(tids):
        nonlocal worst
        worst = max(worst, len(mgr.tasks) - len(mgr.index.active))
        assert len(mgr.index.active) <= len(tids)
        return all(sim.node("mgr").store[t]["state"] == SUCCEEDED for t in tids)

    every = []
    for _ in range(30):
        tids = [sim.submit("mgr", TaskSpec(["exit", "0"])) for _ in range(100)]
        every += tids
        assert sim.run_until(lambda: finished(tids), 120)
    assert worst <= retention
    assert len(mgr.tasks) == retention and not mgr.index.active and mgr.index.evicted == len(every) - retention
    assert not mgr.bid_first and mgr.queued() == 0
    assert mgr.stats["succeeded"] == len(every)
    # an evicted task is still readable from what the manager persisted
    assert every[0] not in mgr.tasks and sim.task("mgr", every[0]).state == SUCCEEDED


def test_a_late_result_for_an_evicted_task_is_acked_and_never_resurrects_it():
    sim = SimCluster(seed=2, finished_retention=0)
    sim.add_node("mgr", slots=1, labels={"role": "manager"})
    sim.add_node("w", slots=1)
    sim.run_for(2.0)
    tid = sim.submit("mgr", TaskSpec(["sleep", "0.2"]))
    assert sim.run_until(lambda: sim.node("mgr").store[tid]["state"] == SUCCEEDED, 30)
    mgr = sim.node("mgr")
    assert tid not in mgr.node.manager.tasks
    stored = mgr.store[tid]
    attempt = stored["attempts"][-1]["attempt"]
    worker = sim.node("w")

    def say(message):
        env = codec.decode(worker.encoder.encode(message, sim.wall_ms()), sim.trust)
        return mgr.node.handle(MessageReceived(env), Instant(sim.now, sim.wall_ms()))

    effects = say(Result(tid, attempt, "exited", 3, runtime_ms=5))      # a resend after a lost ack
    assert [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, Ack)] == [Ack(tid, attempt)]
    assert not [e for e in effects if isinstance(e, PersistTask)]
    for late in (Accept(tid, attempt), Progress(tid, attempt, 100)):
        effects = say(late)
        assert [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, Cancel)]
        assert not [e for e in effects if isinstance(e, PersistTask)]
    assert tid not in mgr.node.manager.tasks and mgr.node.manager.queued() == 0
    assert sim.task("mgr", tid).state == SUCCEEDED and sim.task("mgr", tid).exit_code == 0
    # and the manager goes on working
    other = sim.submit("mgr", TaskSpec(["sleep", "0.1"]))
    assert sim.run_until(lambda: sim.node("mgr").store[other]["state"] == SUCCEEDED, 30)
