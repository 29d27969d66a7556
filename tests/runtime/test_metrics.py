"""/metrics figures: `xchanged_running` counts started attempts only; queued ones have their own gauge."""

from xchanged.protocol.messages import TaskSpec
from xchanged.runtime import views
from xchanged.runtime.metrics import NodeCollector
from xchanged.sim.cluster import SimCluster


def samples(node) -> dict[str, float]:
    out = {}
    for family in NodeCollector(lambda: views.counters(node)).collect():
        for s in family.samples:
            out[s.name + "".join(f"[{v}]" for v in s.labels.values())] = s.value
    return out


def test_running_counts_started_attempts_and_queued_ones_apart():
    sim = SimCluster(seed=5, latency=0.002)
    sim.add_node("n0", slots=1, prefetch=1)
    sim.run_for(2.0)
    for seconds in ("2", "1", "1", "1", "1"):              # a deep backlog: one starts, one queues here
        sim.submit("n0", TaskSpec(["sleep", seconds]))
    sim.run_for(0.5)
    node = sim.node("n0").node
    got = samples(node)
    assert got["xchanged_slots"] == 1
    assert got["xchanged_running"] == 1
    assert got["xchanged_queued"] == 1
    assert got["xchanged_tasks[queued]"] == 3 and got["xchanged_tasks[assigned]"] == 1
    assert got["xchanged_tasks[running]"] == 1


def test_no_node_no_metrics():
    assert list(NodeCollector(lambda: None).collect()) == []
