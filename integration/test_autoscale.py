"""Autoscale hooks on three real daemons with the same [autoscale] config: every node takes each
decision, exactly one (the lowest healthy id) runs the hook. A recorder script logs its calls."""

from __future__ import annotations

import json
import sys

from xchanged.localcluster import LocalCluster

RECORDER = """\
import json, os, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("XCHANGED_")}) + "\\n")
"""


def calls(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def decided(cluster, direction: str) -> list[dict]:
    """Each node's count of `direction` decisions: run here or left to the leader."""
    out = []
    for node in cluster.nodes:
        with cluster.client(node) as client:
            out.append(client.stats()["autoscale"].get(direction, {}))
    return out


def test_one_call_per_decision_not_three(tmp_path):
    recorder, log = tmp_path / "recorder.py", tmp_path / "calls.jsonl"
    recorder.write_text(RECORDER)
    hook = f"{sys.executable} {recorder} {log}"
    autoscale = {"scale_up": hook, "scale_down": hook, "backlog_up": 2, "utilization_up": 50,
                 "utilization_down": 10, "hold": "1s", "cooldown": "1h", "min_nodes": 1}
    with LocalCluster([1, 1, 1], settings={"autoscale": autoscale}) as cluster:
        ids = {}
        for node in cluster.nodes:
            with cluster.client(node) as client:
                ids[node.name] = client.ping()["id"]
        leader = min(ids, key=ids.get)
        with cluster.client(0) as client:
            tasks = client.submit_many([["sleep", "6"]] * 6)           # 3 run, 3 wait: backlog 3, 100% busy
            cluster.wait_for(lambda: all(sum(d.values()) >= 1 for d in decided(cluster, "up")), 60,
                             "every node to take the scale-up decision")
            assert all(client.wait(t, timeout=120)["state"] == "succeeded" for t in tasks)
        cluster.wait_for(lambda: all(sum(d.values()) >= 1 for d in decided(cluster, "down")), 60,
                         "every node to take the scale-down decision")
        at = list(ids).index(leader)             # decided() answers in the cluster's order, as `ids` is
        cluster.wait_for(lambda: all({"ok", "failed"} & set(decided(cluster, d)[at]) for d in ("up", "down")), 30,
                         "the hooks to finish")
        up_counts, down_counts = decided(cluster, "up"), decided(cluster, "down")
    made = calls(log)
    assert [c["XCHANGED_SCALE"] for c in made] == ["up", "down"], made
    up, down = made
    assert int(up["XCHANGED_BACKLOG"]) >= 2 and up["XCHANGED_NODES"] == "3"
    assert down["XCHANGED_REMOVE_NODE"] in ids and down["XCHANGED_REMOVE_ID"] == ids[down["XCHANGED_REMOVE_NODE"]]
    assert down["XCHANGED_REMOVE_NODE"] != leader             # the leader keeps itself
    for counts in (up_counts, down_counts):
        by_node = dict(zip(ids, counts))
        assert by_node[leader].get("run") == 1 and by_node[leader].get("ok") == 1, by_node
        assert all(c.get("left") == 1 and "run" not in c for name, c in by_node.items() if name != leader), by_node
