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
    doc = views.stats(node, sim.now, 6.0)
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


def test_stats_scores_each_agent_as_peers_does():
    """Both documents score a peer as a bid from it would be scored now; `stats` once scored at time 0,
    so a peer awarded at t seconds got a fairness term of -t/30 (hugely negative on a long-running host)."""
    sim = SimCluster(seed=9)
    for name in ("mgr", "a", "b"):
        sim.add_node(name, slots=2)
    sim.run_for(300.0)                                   # a host up for a while: awards come late
    tids = [sim.submit("mgr", TaskSpec(argv=["sleep", "1"])) for _ in range(6)]
    for t in tids:
        assert sim.run_until(lambda: sim.task("mgr", t).state == "succeeded", 60)
    node = sim.node("mgr").node
    by_peers = {p["name"]: p["score"] for p in views.peers(node, sim.now)}
    by_stats = {a["name"]: a["score"] for a in views.stats(node, sim.now, 1.0)["agents"]}
    assert by_stats == by_peers
    assert all(score is not None and score > 0 for score in by_stats.values()), by_stats
