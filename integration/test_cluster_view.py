"""One cluster, one view, with three real daemons on loopback: a task is inspected, followed live
and cancelled from a node that does not manage it; `tasks --cluster` lists every manager's tasks;
a dead manager is reported as unreachable within seconds, with what was last known."""

import json
import subprocess
import sys
import time

import pytest

from xchanged.client import ManagerUnreachable
from xchanged.localcluster import LocalCluster

SLOW = ["sh", "-c", "for i in $(seq 1 100); do echo line-$i; sleep 0.2; done"]    # 20 s, a line per 0.2 s


@pytest.fixture
def cluster():
    with LocalCluster([1, 1, 1]) as c:
        yield c


def cli(cluster, node: int, command: str, *args):
    """`xchanged COMMAND -c NODE'S-CONFIG ARGS...` (COMMAND may be a group and a command: "audit show")."""
    conf = str(cluster.nodes[node].files.config)
    return subprocess.run([sys.executable, "-m", "xchanged", *command.split(), "-c", conf, *args], capture_output=True,
                          text=True, timeout=120)


def test_a_task_of_node1_is_inspected_followed_and_cancelled_from_node3(cluster):
    with cluster.client(0) as n1, cluster.client(2) as n3:
        tid = n1.submit(SLOW)
        proc = cli(cluster, 2, "status", tid, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout).keys() == n1.status(tid).keys()       # the manager's own document
        follow = n3.logs(tid, follow=True)
        lines = []
        for chunk in follow:
            if chunk["stream"] == "stdout":
                lines += chunk["data"].splitlines()
            if len(lines) >= 5:
                break
        assert lines[:5] == [f"line-{i}" for i in range(1, 6)]
        assert n3.status(tid)["state"] == "running"          # the lines came while it runs (20 s in all)
        so_far = cli(cluster, 2, "logs", tid)                 # without -f: what it wrote so far
        assert so_far.returncode == 0 and so_far.stdout.startswith("line-1\nline-2\n"), so_far.stderr
        cancelled = cli(cluster, 2, "cancel", tid, "--json")
        assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["state"] == "cancelled", cancelled.stderr
        rest = list(follow)                                   # following ends with the task
        assert all(c["stream"] in ("stdout", "note") for c in rest)
        assert n3.wait(tid, timeout=30)["state"] == "cancelled"
        waited = cli(cluster, 2, "wait", tid, "--json")      # xchanged wait: exit 1, the task did not succeed
        assert waited.returncode == 1 and json.loads(waited.stdout)["state"] == "cancelled", waited.stderr
        assert n1.status(tid)["state"] == "cancelled"
        [entry] = [r for r in n1.audit_task(tid)["records"] if r["event"] == "cancel"]
        assert entry["requested_by"] == n3.ping()["id"] and "user" in entry
    shown = cli(cluster, 2, "audit show", "--task", tid, "--json")      # node3's log and node1's
    assert shown.returncode == 0, shown.stderr
    logs_of = {(r["log"], r["event"]) for r in json.loads(shown.stdout)}
    assert ("node1", "cancel") in logs_of and ("node1", "award") in logs_of


def test_tasks_of_every_manager_from_node2(cluster):
    ids = {}
    for i, node in enumerate(cluster.nodes):
        with cluster.client(i) as client:
            tid = client.submit(["true"])
            assert client.wait(tid, timeout=60)["state"] == "succeeded"
            ids[node.name] = tid
    proc = cli(cluster, 1, "tasks", "--cluster", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {m["name"]: m["status"] for m in doc["managers"]} == {"node1": "ok", "node2": "ok", "node3": "ok"}
    assert {t["id"]: t["manager"] for t in doc["tasks"]} == {tid: name for name, tid in ids.items()}
    assert cli(cluster, 1, "wait", ids["node3"]).returncode == 0
    table = cli(cluster, 1, "tasks", "--cluster").stdout
    assert all(tid in table for tid in ids.values()) and "manager" in table


def test_a_dead_managers_task_is_reported_unreachable_within_seconds(cluster):
    with cluster.client(0) as n1:
        tid = n1.submit(["true"])
        assert n1.wait(tid, timeout=60)["state"] == "succeeded"
    with cluster.client(1) as n2:
        assert n2.status(tid)["state"] == "succeeded"          # node2 has seen it: its last known state
    cluster.kill9(cluster.nodes[0])
    start = time.monotonic()
    proc = cli(cluster, 1, "status", tid, "--json")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1 and elapsed < 8.0, (elapsed, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["code"] == "manager_unreachable" and doc["error"].startswith("manager unreachable: node1")
    assert doc["last_known"]["state"] == "succeeded" and doc["manager"]["name"] == "node1"
    with cluster.client(1) as n2:
        with pytest.raises(ManagerUnreachable):
            list(n2.logs(tid, follow=True))
        listed = n2.tasks(cluster=True)
    status = {m["name"]: m["status"] for m in listed["managers"]}
    assert status == {"node1": "unreachable", "node2": "ok", "node3": "ok"}
