"""Prefetch: a full contractor may queue a few accepted tasks, only while the manager's queue is deep."""


from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.sim.cluster import SimCluster


def cluster(prefetch=1, slots=(1, 2), seed=5):
    c = SimCluster(seed=seed, latency=0.002)
    for i, n in enumerate(slots):
        c.add_node(f"n{i}", slots=n, prefetch=prefetch)
    c.run_for(2.0)
    return c


def running_and_queued(c):
    return {s.node.settings.name: (s.node.contractor.started, len(s.node.contractor.waiting))
            for s in c.nodes.values()}


def test_a_deep_queue_fills_local_queues_but_never_more_than_slots_run():
    c = cluster(prefetch=1, slots=(1, 2))
    ids = [c.submit("n0", TaskSpec(["sleep", "1"])) for _ in range(10)]
    seen_queued = 0
    def check():
        nonlocal seen_queued
        for name, (started, queued) in running_and_queued(c).items():
            slots = c.node(name).node.settings.slots
            assert started <= slots and queued <= 1
            seen_queued = max(seen_queued, queued)
        return all(c.task("n0", t).state == "succeeded" for t in ids)
    assert c.run_until(check, 60)
    assert seen_queued == 1
    waited = [a for t in ids for a in c.task("n0", t).attempts if a.state == "succeeded"]
    assert len(waited) == 10


def test_queued_attempt_is_shown_waiting_then_running_with_its_real_start():
    c = cluster(prefetch=1, slots=(1,))
    first = c.submit("n0", TaskSpec(["sleep", "2"]))
    second = c.submit("n0", TaskSpec(["sleep", "1"]))
    third, *_ = [c.submit("n0", TaskSpec(["sleep", "1"])) for _ in range(3)]    # keep the backlog deep
    c.run_for(0.5)
    task = c.task("n0", second)
    assert task.state == "assigned" and task.attempts[-1].state == "waiting"
    assert task.why == "queued_there"
    assert c.task("n0", third).state == "queued"
    assert c.run_until(lambda: c.task("n0", second).state == "running", 5)
    t_first = c.task("n0", first)
    assert t_first.state == "succeeded"
    assert task.attempts[-1].started >= t_first.attempts[-1].ended - 50      # started when the slot freed


def test_no_queueing_at_the_tail_of_a_workload():
    """Two slots, five tasks: three wait, fewer than two rounds of the cluster's slots, so each waits
    for the first slot that frees anywhere rather than behind one particular node."""
    c = cluster(prefetch=1, slots=(1, 1))
    ids = [c.submit("n0", TaskSpec(["sleep", "1"])) for _ in range(5)]
    c.run_for(0.5)
    assert sorted(c.task("n0", t).attempts[-1].node_name for t in ids[:2]) == ["n0", "n1"]
    assert all(len(s.node.contractor.waiting) == 0 for s in c.nodes.values())
    assert [c.task("n0", t).state for t in ids[2:]] == ["queued"] * 3


def test_cancel_of_a_queued_attempt_reports_cancelled_without_a_process():
    c = cluster(prefetch=1, slots=(1,))
    c.submit("n0", TaskSpec(["sleep", "5"]))
    queued = c.submit("n0", TaskSpec(["sleep", "5"]))
    for _ in range(3):
        c.submit("n0", TaskSpec(["sleep", "5"]))             # keep the backlog deep
    c.run_for(0.5)
    assert c.task("n0", queued).attempts[-1].state == "waiting"
    c.cancel("n0", queued)
    c.run_for(0.5)
    assert c.task("n0", queued).state == "cancelled"
    assert not any(t == queued for _, t, _ in c.completions)
    assert all(task_id != queued for task_id, _ in c.node("n0").node.contractor.waiting)


def test_prefetch_zero_never_queues():
    c = cluster(prefetch=0, slots=(1, 1))
    ids = [c.submit("n0", TaskSpec(["sleep", "0.5"])) for _ in range(6)]
    def check():
        assert all(q == 0 for _, q in running_and_queued(c).values())
        return all(c.task("n0", t).state == "succeeded" for t in ids)
    assert c.run_until(check, 60)


def test_no_queueing_while_tasks_of_different_priorities_wait():
    """A task queued on one node cannot be overtaken there, but a less urgent task given a slot that
    frees elsewhere would start before it: local queues take work only while the backlog is uniform.
    Here l5 waits, then h arrives. a frees a slot first and starts its queued long l3; had h been
    queued behind l3, l5 would have been queued behind b's short l4 and started long before h."""
    c = SimCluster(seed=5, latency=0.002)
    for name in ("a", "b"):
        c.add_node(name, slots=1, labels={"host": name}, prefetch=1)
    c.run_for(2.0)
    def low(seconds, host=None):
        return c.submit("a", TaskSpec(["sleep", str(seconds)], priority="low",
                                      requirements=Requirements(labels={"host": host} if host else {})))
    low(0.9, "a"), low(1, "b"), low(3, "a"), low(0.5, "b")
    l5 = low(1)
    c.run_for(0.1)                          # each node runs one task and has one queued; l5 waits
    assert c.task("a", l5).state == "queued"
    h = c.submit("a", TaskSpec(["sleep", "1"], priority="high"))
    assert c.run_until(lambda: all(c.task("a", t).state == "succeeded" for t in (l5, h)), 60)
    started = {t: c.task("a", t).attempts[-1].started for t in (l5, h)}
    assert started[h] < started[l5]


def test_no_queueing_behind_tasks_expected_to_run_long():
    """A node whose running command is known to take minutes offers no queue room: a task parked
    there would wait behind it while other nodes free up."""
    c = cluster(prefetch=1, slots=(1,))
    first = c.submit("n0", TaskSpec(["sleep", "120"]))
    assert c.run_until(lambda: c.task("n0", first).state == "succeeded", 200)   # 120 s: the history
    ids = [c.submit("n0", TaskSpec(["sleep", "120"])) for _ in range(3)]
    c.run_for(1.0)
    assert c.node("n0").node.contractor.started == 1
    assert len(c.node("n0").node.contractor.waiting) == 0
    assert [c.task("n0", t).state for t in ids].count("queued") == 2
