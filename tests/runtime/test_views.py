"""`peers` and `stats` documents (issue 4): utilisation, free slots, queues, success rate and score."""

from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.runtime import views
from xchanged.sim.cluster import SimCluster


def test_stats_and_peers_show_load_per_node_and_in_total():
    sim = SimCluster(seed=4)
    sim.add_node("mgr", slots=1, labels={"role": "manager"})
    sim.add_node("a", slots=2, labels={"role": "worker"})
    sim.add_node("b", slots=4, labels={"role": "worker"})
    sim.run_for(3.0)
    req = Requirements(labels={"role": "worker"})
    tids = [sim.submit("mgr", TaskSpec(argv=["sleep", "5"], requirements=req)) for _ in range(8)]
    sim.run_for(3.0)                                    # six running, two queued; loads gossiped
    node = sim.node("mgr").node
    doc = views.stats(node, 6.0)
    assert doc["total_capacity"] == 7 and doc["current_load"] == 6
    assert doc["utilization_percent"] == round(100 * 6 / 7, 1)
    assert doc["free_slots"] == 1 and doc["queued_jobs"] == 2 and doc["queued_total"] == 2
    agents = {a["name"]: a for a in doc["agents"]}
    assert agents["a"]["load_percent"] == 100.0 and agents["b"]["current_jobs"] == 4
    assert all(a["score"] is not None and a["is_healthy"] for a in agents.values())
    for t in tids:
        assert sim.run_until(lambda: sim.task("mgr", t).state == "succeeded", 60)
    peers = {p["name"]: p for p in views.peers(node, sim.now)}
    assert peers["a"]["success_rate"] > 0.5 and peers["a"]["successes"] + peers["b"]["successes"] == 8
    assert {"utilisation", "slots_free", "queued", "score", "breaker", "bid_accuracy"} <= set(peers["b"])
