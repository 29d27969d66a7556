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


def test_histograms_refusals_and_the_daemons_own_counts():
    from xchanged.protocol.events import DrainChanged
    sim = SimCluster(seed=5, latency=0.002)
    sim.add_node("n0", slots=1)
    sim.add_node("n1", slots=1)
    sim.run_for(2.0)
    ids = [sim.submit("n0", TaskSpec(["sleep", "0.5"])) for _ in range(4)]
    assert sim.run_until(lambda: all(sim.task("n0", t).state == "succeeded" for t in ids), 30)
    n1 = sim.node("n1").node
    sim.deliver(n1.id, DrainChanged(True))
    sim.submit("n0", TaskSpec(["sleep", "0.5"]))
    sim.run_for(1.0)
    runtime = {"gossip_bytes": {"in": 5, "out": 7}, "reloads": {"ok": 1, "rejected": 2},
               "drains": {"drain": 1, "undrain": 0}, "history_pruned": 3, "autoscale": {"up": {"run": 1}}}
    out = {}
    for family in NodeCollector(lambda: views.Figures(views.counters(sim.node("n0").node), runtime)).collect():
        for s in family.samples:
            out[s.name + "".join(f"[{v}]" for v in s.labels.values())] = s.value
    for name in ("queue_wait", "award_to_start", "run_time"):
        assert out[f"xchanged_{name}_seconds_count"] >= 4, name
        assert out[f"xchanged_{name}_seconds_bucket[+Inf]"] == out[f"xchanged_{name}_seconds_count"]
    assert out["xchanged_run_time_seconds_bucket[0.25]"] == 0 and out["xchanged_run_time_seconds_bucket[1]"] >= 4
    assert "xchanged_bid_window_seconds_count" in out
    assert out["xchanged_gossip_bytes_total[in]"] == 5 and out["xchanged_reloads_total[rejected]"] == 2
    assert out["xchanged_drains_total[drain]"] == 1 and out["xchanged_autoscale_total[up][run]"] == 1
    assert out["xchanged_history_pruned_total"] == 3
    drained = {}
    for family in NodeCollector(lambda: views.counters(n1)).collect():
        for s in family.samples:
            drained[s.name + "".join(f"[{v}]" for v in s.labels.values())] = s.value
    assert drained["xchanged_draining"] == 1
