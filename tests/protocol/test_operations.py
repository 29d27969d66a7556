"""Reload, drain and hand-back in the core (protocol/operations.py), on the simulator's virtual clock."""

import dataclasses
import random

from xchanged.protocol.events import DrainChanged, HandBackRunning, SettingsChanged
from xchanged.protocol.messages import Load, Requirements, TaskSpec
from xchanged.protocol.node import Node
from xchanged.protocol.operations import contractor_settings, manager_settings
from xchanged.sim.cluster import SimCluster


def cluster(*slots, prefetch=0, seed=3):
    c = SimCluster(seed=seed, latency=0.002, validate=True)
    for i, n in enumerate(slots):
        c.add_node(f"n{i}", slots=n, prefetch=prefetch)
    c.run_for(2.0)
    return c


def reload(c, name, **changes):
    sim = c.node(name)
    c.deliver(sim.node.id, SettingsChanged(dataclasses.replace(sim.node.settings, **changes)))


def succeeded_once(c, manager, ids):
    """Every task succeeded, and exactly one process per task ran to its end."""
    runs = {}
    for _, task_id, _ in c.completions:
        runs[task_id] = runs.get(task_id, 0) + 1
    return all(c.task(manager, t).state == "succeeded" for t in ids) and all(runs.get(t) == 1 for t in ids)


def test_derived_settings_match_a_fresh_node():
    c = cluster(2)
    node = c.node("n0").node
    fresh = Node(node.id, node.settings, random.Random(0))
    assert manager_settings(node.id, node.settings) == fresh.manager.settings
    assert contractor_settings(node.id, node.settings) == fresh.contractor.settings


def test_a_new_label_is_matched_by_the_next_task_that_asks_for_it():
    c = cluster(1, 1)
    tid = c.submit("n0", TaskSpec(["sleep", "0.1"], requirements=Requirements(labels={"cuda": "12"})))
    c.run_for(1.0)
    assert c.task("n0", tid).state == "queued" and c.task("n0", tid).why == "no_peer_fits"
    reload(c, "n1", labels={"cuda": "12"})
    assert c.run_until(lambda: c.task("n0", tid).state == "succeeded", 10)
    assert c.task("n0", tid).attempts[-1].node_name == "n1"
    assert any("labels changed" in line for line in c.node("n1").logs)


def test_fewer_slots_than_running_kills_nothing_and_drains_down():
    c = cluster(4)
    first_end = c.now + 3.1
    ids = [c.submit("n0", TaskSpec(["sleep", "3"])) for _ in range(8)]
    c.run_for(0.5)
    contractor = c.node("n0").node.contractor
    assert contractor.started == 4
    reload(c, "n0", slots=1)
    assert contractor.started == 4 and contractor.slots_free == 0       # nothing killed
    most = 0

    def check():
        nonlocal most
        if c.now > first_end:                # the first four ended: from then on one at a time
            most = max(most, contractor.started)
        return succeeded_once(c, "n0", ids)
    assert c.run_until(check, 60)
    assert most == 1
    assert all(len(c.task("n0", t).attempts) == 1 for t in ids)          # none restarted


def test_more_slots_are_used_at_once():
    c = cluster(1)
    ids = [c.submit("n0", TaskSpec(["sleep", "2"])) for _ in range(3)]
    c.run_for(0.5)
    assert c.node("n0").node.contractor.started == 1
    reload(c, "n0", slots=3)
    c.run_for(0.5)
    assert c.node("n0").node.contractor.started == 3
    assert c.run_until(lambda: succeeded_once(c, "n0", ids), 30)


def test_drain_hands_back_queued_work_lets_running_work_finish_and_takes_nothing_new():
    c = cluster(1, 1, prefetch=1)
    ids = [c.submit("n0", TaskSpec(["sleep", "2"])) for _ in range(12)]      # deep: n1 queues one
    n1c = c.node("n1").node.contractor
    assert c.run_until(lambda: len(n1c.waiting) == 1 and n1c.started == 1, 5)
    n1 = c.node("n1").node
    running = [k for k, claim in n1.contractor.running.items() if not claim.queued]
    queued = list(n1.contractor.waiting)
    c.deliver(n1.id, DrainChanged(True))
    assert not n1.contractor.waiting and set(n1.contractor.running) == set(running)
    handed = c.task("n0", queued[0][0])
    assert handed.attempts[-1].why != "handed_back"          # the result is on its way
    c.run_for(0.1)
    assert handed.attempts[-1].state != "waiting"
    back = [a for a in handed.attempts if a.why == "handed_back"]
    assert len(back) == 1 and back[0].state == "lost" and handed.failures == 0
    started_on_n1 = len([1 for node, _, _ in c.completions if node == "n1"])
    assert c.run_until(lambda: succeeded_once(c, "n0", ids), 60)
    # the attempt running at the drain finished there; nothing else ran on n1
    assert len([1 for node, _, _ in c.completions if node == "n1"]) == started_on_n1 + len(running)
    assert c.task("n0", running[0][0]).attempts[-1].node_name == "n1"
    peer = c.node("n0").node.membership.peers[n1.id]
    assert peer.load is not None and peer.load.draining


def test_undrain_takes_work_again():
    c = cluster(1, 1)
    n1 = c.node("n1").node
    c.deliver(n1.id, DrainChanged(True))
    c.run_for(0.1)
    first = [c.submit("n0", TaskSpec(["sleep", "0.2"])) for _ in range(4)]
    assert c.run_until(lambda: succeeded_once(c, "n0", first), 30)
    assert {c.task("n0", t).attempts[-1].node_name for t in first} == {"n0"}
    c.deliver(n1.id, DrainChanged(False))
    c.run_for(0.1)
    second = [c.submit("n0", TaskSpec(["sleep", "1"])) for _ in range(4)]
    assert c.run_until(lambda: succeeded_once(c, "n0", second), 30)
    assert "n1" in {c.task("n0", t).attempts[-1].node_name for t in second}


def test_the_manager_never_asks_a_draining_peer_even_before_hearing_of_it_by_gossip():
    c = cluster(1, 2)
    n1 = c.node("n1").node
    c.deliver(n1.id, DrainChanged(True))        # its fresh load goes to every live peer at once
    c.run_for(0.01)
    load: Load = c.node("n0").node.membership.peers[n1.id].load
    assert load.draining and load.slots_free == 0


def test_hand_back_running_re_awards_at_once_without_counting_a_failure():
    c = cluster(1, 1)
    tid = c.submit("n0", TaskSpec(["sleep", "30"]))
    assert c.run_until(lambda: c.task("n0", tid).state == "running", 5)
    where = c.task("n0", tid).attempts[-1].node_name
    sim = c.node(where)
    c.deliver(sim.node.id, DrainChanged(True))
    c.deliver(sim.node.id, HandBackRunning("the daemon is stopping"))
    assert not sim.started                      # its process was killed
    assert c.run_until(lambda: len(c.task("n0", tid).attempts) == 2 and c.task("n0", tid).state == "running", 1)
    task = c.task("n0", tid)
    assert task.attempts[0].why == "handed_back" and task.failures == 0
    assert task.attempts[-1].node_name != where
    assert c.run_until(lambda: c.task("n0", tid).state == "succeeded", 60)
    assert [name for name, t, _ in c.completions if t == tid] == [task.attempts[-1].node_name]


def test_totals_survive_a_restart():
    c = cluster(1)
    ids = [c.submit("n0", TaskSpec(["exit", "1"], retries=1)) for _ in range(2)]
    ids += [c.submit("n0", TaskSpec(["sleep", "0.1"])) for _ in range(3)]
    assert c.run_until(lambda: all(c.task("n0", t).state in ("succeeded", "failed") for t in ids), 300)
    from xchanged.protocol import readout
    before = readout.totals(c.node("n0").node)
    assert before["manager"]["submitted"] == 5 and before["manager"]["failed"] == 2
    assert before["contractor"]["failed_runs"] == 4 and before["contractor"]["completed"] == 7
    node = c.node("n0").node
    fresh = Node(node.id, node.settings, random.Random(0))
    from xchanged.protocol.events import Instant, StateRecovered
    fresh.handle(StateRecovered(totals=before), Instant(0.0, 0))
    assert readout.totals(fresh) == before
    assert fresh.load_signal(0.0).stats["attempts_failed"] == 4


def test_a_draining_contractor_refuses_cfps_and_rejects_awards_with_code_draining(trust):
    from tests.protocol.fakes import FakePeer, NodeUnderTest
    from xchanged.protocol.messages import Award, Cfp, Refuse, Reject
    node = NodeUnderTest(trust, slots=2)
    manager = FakePeer("manager", trust)
    node.hear(manager, manager.load())
    node.handle(DrainChanged(True))
    node.hear(manager, Cfp("T-1", 1, Requirements(), 1, 50, command="true"))
    node.hear(manager, Award("T-2", 1, TaskSpec(["true"]), 0.5))
    [(_, refuse)] = node.sent(Refuse, to=manager.id)
    [(_, reject)] = node.sent(Reject, to=manager.id)
    assert refuse.code == reject.code == "draining"
    assert node.node.contractor.refusals == {"draining": 2}
    assert node.node.load_signal(0.0).coord_free == 0
    assert node.node.load_signal(0.0).draining and node.node.load_signal(0.0).slots_free == 0
    node.hear(manager, Cfp("T-4", 1, Requirements(), 1, 50, composite=True))      # no new coordination either
    assert node.sent(Refuse, to=manager.id)[-1][1].code == "draining"
    node.handle(DrainChanged(False))
    node.hear(manager, Cfp("T-3", 1, Requirements(), 1, 50, command="true"))
    assert len(node.sent(Refuse, to=manager.id)) == 2
