"""Real daemons: a manager's record of its contractors (success rate, breaker, bid accuracy) is the
same after a restart of its daemon as before (protocol/reputation.py, the store's `reputation` table)."""

from __future__ import annotations

from xchanged.localcluster import LocalCluster

KEYS = ("success_rate", "successes", "failures", "breaker", "bid_accuracy")


def reputations(cluster, node) -> dict[str, dict]:
    with cluster.client(node) as c:
        return {p["name"]: {k: p[k] for k in KEYS} for p in c.peers() if p["successes"] or p["failures"]}


def test_peers_shows_the_same_success_rate_after_a_restart():
    with LocalCluster([2, 2], settings={"gossip": {"interval": "200ms"}}) as cluster:
        manager = cluster.nodes[0]
        tids = []
        with cluster.client(manager) as c:
            tids += c.submit_many([["sh", "-c", "exit 3"]] * 3, retries=0)
            tids += c.submit_many([["sleep", "0.2"]] * 6, est_runtime=0.1)
            docs = [c.wait(t, timeout=120) for t in tids]
        assert sorted(d["state"] for d in docs) == ["failed"] * 3 + ["succeeded"] * 6
        before = reputations(cluster, manager)
        assert sum(r["failures"] for r in before.values()) == 3
        assert sum(r["successes"] for r in before.values()) == 6
        assert all(0 < r["success_rate"] < 1 for r in before.values())

        cluster.stop_node(manager)
        cluster.start_node(manager)
        cluster.wait_ready(manager)
        cluster.wait_connected()                  # the other node is in its peer table again
        assert reputations(cluster, manager) == before
