"""Three real daemons on loopback: tasks submitted through the CLI run across the cluster."""

import json
import subprocess
import sys

import pytest

from xchanged.localcluster import LocalCluster


@pytest.fixture
def cluster():
    with LocalCluster([2, 2, 2]) as c:
        yield c


def cli(cluster, *args):
    conf = str(cluster.nodes[0].files.config)
    proc = subprocess.run([sys.executable, "-m", "xchanged", args[0], "-c", conf, *args[1:]], capture_output=True,
                          text=True, timeout=120)
    return proc


def test_twenty_tasks_through_the_cli(cluster):
    ids = []
    for i in range(20):
        proc = cli(cluster, "submit", "--json", "--", "sh", "-c", f"sleep 0.{i % 5 + 1}; echo task-{i} on $(hostname)")
        assert proc.returncode == 0, proc.stderr
        ids.append(json.loads(proc.stdout)["id"])
    assert len(set(ids)) == 20
    with cluster.client(0) as client:
        docs = [client.wait(tid, timeout=120) for tid in ids]
    assert [d["state"] for d in docs] == ["succeeded"] * 20
    assert len({d["node"] for d in docs}) > 1, "all tasks ran on one node"
    for i, tid in enumerate(ids):
        proc = cli(cluster, "logs", tid)
        assert proc.returncode == 0 and proc.stdout.startswith(f"task-{i} on "), proc.stdout
        status = json.loads(cli(cluster, "status", tid, "--json").stdout)
        assert status["state"] == "succeeded" and status["exit_code"] == 0
        assert set(status) >= {"id", "state", "node", "priority", "attempts", "exit_code", "reason", "submitted"}
        assert set(status["attempts"][0]) >= {"attempt", "node", "state", "exit_code", "reason", "started", "ended"}
    peers = json.loads(cli(cluster, "peers", "--json").stdout)
    assert {p["name"] for p in peers} == {"node1", "node2", "node3"}
    assert all(p["health"] == "alive" for p in peers)


def test_wait_exits_with_the_task_exit_code_and_failure_is_reported(cluster):
    proc = cli(cluster, "submit", "--wait", "--retries", "0", "--", "sh", "-c", "echo oops >&2; exit 7")
    assert proc.returncode == 7
    tid = json.loads(cli(cluster, "tasks", "--json").stdout)[-1]["id"]
    status = json.loads(cli(cluster, "status", tid, "--json").stdout)
    assert status["state"] == "failed" and status["exit_code"] == 7
    assert cli(cluster, "logs", tid, "--stderr").stdout == "oops\n"


def test_unknown_command_fails_with_a_reason(cluster):
    proc = cli(cluster, "submit", "--wait", "--json", "--retries", "1", "--", "/no/such/program")
    doc = json.loads(proc.stdout)
    assert proc.returncode != 0 and doc["state"] == "failed"
    assert len(doc["attempts"]) == 2 and "could not start" in doc["attempts"][0]["reason"]


def test_stats_and_top_render(cluster):
    with cluster.client(0) as client:
        for tid in client.submit_many([["true"]] * 3):
            assert client.wait(tid, timeout=60)["state"] == "succeeded"
    stats = json.loads(cli(cluster, "stats", "--json").stdout)
    assert stats["total_agents"] == 3 and stats["total_capacity"] == 6
    assert stats["tasks_by_state"] == {"succeeded": 3} and stats["succeeded"] == 3
    proc = cli(cluster, "top", "--once")
    assert proc.returncode == 0 and "node2" in proc.stdout and "utilisation" in proc.stdout
