"""The Contract Net from the manager's seat: a real Node, fake contractors speaking signed frames.

Time is injected (`Instant`), no sockets: each test moves the clock by hand.
"""

import dataclasses

import pytest

from xchanged.protocol.effects import Audit, PersistTask, Reply
from xchanged.protocol.events import Capacity, Instant, ResourcesRead, TaskSubmitted, TimerFired
from xchanged.protocol.messages import (
    Accept,
    Award,
    Bid,
    Cfp,
    Refuse,
    Reject,
    RejectBid,
    Requirements,
    Result,
    TaskSpec,
)
from xchanged.sim.cluster import SimCluster

from .fakes import WALL, NodeUnderTest
from .fakes import FakePeer as Peer


class Manager(NodeUnderTest):
    """The node under test. Its own contractor is kept out of the way by a label it lacks."""

    def __init__(self, trust, **settings):
        super().__init__(trust, name="mgr", slots=1, labels={"role": "manager"}, **settings)
        self.handle(ResourcesRead(Capacity(cpus=1, cpu_percent=5.0, mem_total=1 << 34, mem_available=1 << 33)))

    def submit(self, task_id="T-1", **req):
        spec = TaskSpec(["work"], requirements=Requirements(labels={"role": "worker"}, **req))
        self.handle(TaskSubmitted(1, task_id, spec))
        return self.node.manager.tasks[task_id]

    def tick(self, t):
        return self.handle(TimerFired(), t)


@pytest.fixture
def world(trust):
    mgr = Manager(trust, bid_window=0.05, award_timeout=1.0)
    peers = [Peer(n, trust) for n in ("p1", "p2", "p3")]
    for p in peers:
        mgr.handle(p.say(p.load(labels={"role": "worker"})))
    return mgr, peers


def cfp_of(mgr, task_id="T-1"):
    cfps = [m for _, m in mgr.sent(Cfp) if m.task_id == task_id]
    assert cfps, "no call for proposals was sent"
    return cfps[-1]


def bid(peer, cfp, free=1, cpu=10.0, slots=2):
    return peer.say(Bid(cfp.task_id, cfp.attempt, slots=slots, slots_free=free, cpu_percent=cpu, mem_available=1 << 33))


def test_submit_persists_before_replying(world):
    mgr, _ = world
    mgr.effects.clear()
    mgr.submit()
    kinds = [type(e) for e in mgr.effects if isinstance(e, (PersistTask, Reply))]
    assert kinds[:2] == [PersistTask, Reply]


def test_cfp_goes_to_capable_peers_only_and_award_to_best_bid(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    targets = {pid for targets, m in mgr.sent(Cfp) for pid, _ in targets}
    assert targets == {p1.id, p2.id, p3.id}                    # not the manager's own contractor (label)
    mgr.handle(bid(p1, cfp, free=0, cpu=80.0))
    mgr.handle(bid(p2, cfp, free=1, cpu=5.0))
    mgr.handle(bid(p3, cfp, free=0, cpu=50.0))                 # all answered: the round closes at once
    awards = mgr.sent(Award)
    assert len(awards) == 1 and awards[0][0][0][0] == p2.id
    task = mgr.node.manager.tasks["T-1"]
    assert task.state == "assigned" and task.attempts[-1].node == p2.id
    audit = [e.entry for e in mgr.effects if isinstance(e, Audit)]
    assert audit[-1]["event"] == "award" and audit[-1]["contractor"] == p2.id


def test_refusing_and_silent_peers_are_skipped(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    mgr.handle(p1.say(Refuse(cfp.task_id, cfp.attempt, "overloaded", "cpu 97% > 90%")))
    mgr.handle(bid(p3, cfp))
    assert mgr.sent(Award) == []                               # p2 has not answered yet
    mgr.tick(0.06)                                             # the bid window ends
    awards = mgr.sent(Award)
    assert [t[0][0] for t, _ in awards] == [p3.id]


def test_reject_awards_the_next_bid_and_accept_releases_the_rest(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    mgr.handle(bid(p1, cfp, free=1, cpu=5.0))
    mgr.handle(bid(p2, cfp, free=0, cpu=50.0))
    mgr.handle(bid(p3, cfp, free=0, cpu=60.0))
    (targets, first), = mgr.sent(Award)
    assert targets[0][0] == p1.id
    mgr.handle(p1.say(Reject(first.task_id, first.attempt, "no_slots", "all slots busy")))
    second = mgr.sent(Award)[-1]
    assert second[0][0][0] == p2.id and second[1].attempt != first.attempt
    mgr.handle(p2.say(Accept(second[1].task_id, second[1].attempt)))
    task = mgr.node.manager.tasks["T-1"]
    assert task.state == "running"
    assert [a.state for a in task.attempts] == ["rejected", "running"]
    released = mgr.sent(RejectBid, to=p3.id)
    assert released and released[-1][1].task_id == "T-1"


def test_award_without_answer_goes_to_next_bid(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    mgr.handle(bid(p1, cfp, free=1, cpu=5.0))
    mgr.handle(bid(p2, cfp, free=0, cpu=50.0))
    mgr.handle(p3.say(Refuse(cfp.task_id, cfp.attempt, "no_slots", "busy")))
    mgr.tick(1.5)                                              # award_timeout = 1 s
    awards = mgr.sent(Award)
    assert [t[0][0] for t, _ in awards] == [p1.id, p2.id]


def test_late_bid_is_answered_with_a_rejection(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    mgr.tick(0.06)                                             # nobody answered in time
    mgr.handle(bid(p1, cfp), t=0.07)
    (targets, msg), = mgr.sent(RejectBid)
    assert targets[0][0] == p1.id and msg.attempt == cfp.attempt


def test_no_bids_keeps_the_task_queued_with_the_reasons(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    mgr.handle(p1.say(Refuse(cfp.task_id, cfp.attempt, "overloaded", "cpu 97% > 90%")))
    mgr.handle(p2.say(Refuse(cfp.task_id, cfp.attempt, "overloaded", "cpu 95% > 90%")))
    mgr.handle(p3.say(Refuse(cfp.task_id, cfp.attempt, "mem", "not enough memory free")))
    task = mgr.node.manager.tasks["T-1"]
    assert task.state == "queued"
    assert task.why == "no_bids" and "1 refused: not enough memory free" in task.reason


def test_task_no_peer_can_run_waits_and_is_announced_when_one_appears(world):
    mgr, peers = world
    mgr.submit(gpus=1)
    assert mgr.sent(Cfp) == []
    task = mgr.node.manager.tasks["T-1"]
    assert task.state == "queued" and task.why == "no_peer_fits"
    from xchanged.protocol.messages import GpuInfo
    gpu_peer = Peer("gpu1", mgr.trust)
    load = gpu_peer.load(labels={"role": "worker"})
    load = dataclasses.replace(load, gpus=[GpuInfo(0, "H100", 80 << 30, 80 << 30, 0.0)])
    mgr.handle(gpu_peer.say(load), t=1.0)
    targets = {pid for targets, m in mgr.sent(Cfp) for pid, _ in targets}
    assert targets == {gpu_peer.id}


def test_result_success_is_recorded_once_and_acked(world):
    mgr, (p1, p2, p3) = world
    mgr.submit()
    cfp = cfp_of(mgr)
    for p in (p1, p2, p3):
        mgr.handle(bid(p, cfp, free=1 if p is p1 else 0))
    (_, award), = mgr.sent(Award)
    mgr.handle(p1.say(Accept("T-1", award.attempt)))
    result = Result("T-1", award.attempt, "exited", 0, runtime_ms=10, stdout=b"hello\n")
    mgr.handle(p1.say(result))
    mgr.handle(p1.say(result))                                 # a resend after a lost ack
    task = mgr.node.manager.tasks["T-1"]
    assert task.state == "succeeded" and task.exit_code == 0
    assert sum(1 for e in mgr.effects if isinstance(e, Audit) and e.entry["event"] == "result") == 1
    from xchanged.protocol.messages import Ack
    assert len(mgr.sent(Ack, to=p1.id)) == 2


# -- whole clusters on the simulator -----------------------------------------------------------


def test_sim_cluster_runs_every_task_and_uses_every_node():
    c = SimCluster(seed=3)
    for name in ("a", "b", "c"):
        c.add_node(name, slots=2)
    c.run_for(2.0)
    ids = [c.submit("a", TaskSpec(["sleep", "0.5"])) for _ in range(12)]
    assert c.run_until(lambda: all(c.task("a", t).state == "succeeded" for t in ids), 60)
    nodes = {c.task("a", t).attempts[-1].node_name for t in ids}
    assert nodes == {"a", "b", "c"}
    assert len(c.completions) == 12


def test_sim_queued_task_runs_when_a_slot_frees():
    c = SimCluster(seed=4)
    c.add_node("a", slots=1)
    c.add_node("b", slots=1)
    c.run_for(2.0)
    long = [c.submit("a", TaskSpec(["sleep", "5"])) for _ in range(2)]
    waiting = c.submit("a", TaskSpec(["sleep", "1"]))
    c.run_for(1.0)
    assert [c.task("a", t).state for t in long] == ["running", "running"]
    assert c.task("a", waiting).state == "queued"
    assert c.run_until(lambda: c.task("a", waiting).state == "succeeded", 30)
    assert c.now >= 7.0                     # it could only start after one of the long tasks ended


def test_a_batch_pumps_once_at_its_end_so_the_bid_window_starts_when_cfps_go_out(world):
    """A driver feeding a batch (pump=False, then settle) announces nothing until the batch ends; the
    cfps then carry the window from the settle time, and the batch's tasks are ranked together: the
    high-priority task submitted last in the batch is announced first."""
    mgr, _ = world
    node = mgr.node
    mgr.effects.clear()
    for i, prio in enumerate(["low", "low", "high"]):
        spec = TaskSpec(["work"], priority=prio, requirements=Requirements(labels={"role": "worker"}))
        mgr.effects += node.handle(TaskSubmitted(i, f"T-{i}", spec), Instant(0.001 * i, WALL), pump=False)
    assert mgr.sent(Cfp) == []
    mgr.effects += node.settle(Instant(0.2, WALL + 200))
    cfps = [m.task_id for _, m in mgr.sent(Cfp)]
    assert cfps[0] == "T-2"
    assert node.manager.tasks["T-2"].round.deadline == pytest.approx(0.2 + 0.05)
    assert node.settle(Instant(0.3, WALL + 300)) == []          # nothing changed since: no second pump


def test_with_more_tasks_than_free_slots_each_task_asks_one_peer_and_every_slot_is_asked_for(world):
    """Three peers with two free slots each and ten tasks submitted at once: six cfps, one peer each, two
    per peer (asking every peer about every task would hold all the room for two tasks until their
    bids came back)."""
    mgr, peers = world
    mgr.effects.clear()
    spec = TaskSpec(["work"], requirements=Requirements(labels={"role": "worker"}))
    for i in range(10):
        mgr.effects += mgr.node.handle(TaskSubmitted(i, f"T-{i}", spec), Instant(0.0, WALL), pump=False)
    mgr.effects += mgr.node.settle(Instant(0.0, WALL))
    cfps = mgr.sent(Cfp)
    assert all(len(targets) == 1 for targets, _ in cfps)
    per_peer = {p.id: sum(1 for targets, _ in cfps if targets[0][0] == p.id) for p in peers}
    assert len(cfps) == 6 and set(per_peer.values()) == {2}


def test_with_slots_to_spare_a_task_asks_several_peers(world):
    mgr, peers = world
    mgr.submit()
    targets = {pid for targets, _ in mgr.sent(Cfp) for pid, _ in targets}
    assert targets == {p.id for p in peers}


def test_a_queue_that_turned_us_away_gets_no_more_awards_until_its_next_load(trust):
    """Several managers see the same free queue place in a node's load; all but one are rejected. A
    rejected manager must not award into that queue again and again until the node's next load."""
    mgr = Manager(trust, bid_window=0.05, award_timeout=1.0)
    p1 = Peer("p1", trust)
    busy = dataclasses.replace(p1.load(slots=1, free=0, labels={"role": "worker"}), queue_free=1)
    mgr.handle(p1.say(busy))
    mgr.node.manager._record(p1.id).successes = 1             # known: direct awards
    spec = TaskSpec(["work"], requirements=Requirements(labels={"role": "worker"}))
    for i in range(20):
        mgr.effects += mgr.node.handle(TaskSubmitted(i, f"T-{i}", spec), Instant(0.0, WALL), pump=False)
    mgr.effects += mgr.node.settle(Instant(0.0, WALL))
    awards = mgr.sent(Award, to=p1.id)
    assert len(awards) == 1 and awards[0][1].queue_ok
    first = awards[0][1]
    mgr.handle(p1.say(Reject(first.task_id, first.attempt, "no_slots", "all 1 slots busy"), t=0.01), t=0.01)
    mgr.tick(0.02)
    assert len(mgr.sent(Award, to=p1.id)) == 1                 # not again
    mgr.handle(p1.say(busy, t=0.5), t=0.5)                     # its next load: room again
    assert len(mgr.sent(Award, to=p1.id)) == 2
