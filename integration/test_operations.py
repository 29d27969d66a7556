"""Fleet operations on real daemons: reload under load, drain and undrain through the CLI, SIGTERM's
grace and hand-back, and a bounded `tasks` answer however long the history."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil

from xchanged.localcluster import LocalCluster
from xchanged.protocol.messages import TaskSpec
from xchanged.protocol.tasks import Task
from xchanged.runtime.store import Store


def cli(node, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xchanged", args[0], "-c", str(node.files.config), *args[1:]],
                          capture_output=True, text=True, timeout=180)


def rewrite(node, old: str, new: str) -> None:
    text = node.files.config.read_text()
    assert old in text, text
    node.files.config.write_text(text.replace(old, new))


def test_reload_changes_labels_and_slots_under_load_without_losing_or_restarting_a_task():
    with LocalCluster([2, 2]) as cluster:
        node1, node2 = cluster.nodes
        with cluster.client(node1) as client:
            ids = client.submit_many([["sleep", "0.3"]] * 40)
            rewrite(node2, "slots = 2", "slots = 1")
            rewrite(node2, "labels = {  }", 'labels = { gpu = "yes" }')
            reload = cli(node2, "reload", "--json")
            assert reload.returncode == 0, reload.stderr
            assert set(json.loads(reload.stdout)["changed"]) == {"node.slots", "node.labels"}
            cluster.wait_for(lambda: any(p["labels"] == {"gpu": "yes"} and p["slots"] == 1 for p in client.peers()),
                             30, "node1 to see node2's new labels and slots")
            labelled = client.submit(["true"], labels={"gpu": "yes"})
            docs = [client.wait(t, timeout=180) for t in ids + [labelled]]
        assert all(d["state"] == "succeeded" for d in docs)
        for d in docs:        # one attempt ran; an award that came as the slots shrank may be rejected, unrun
            ran = [a for a in d["attempts"] if a["state"] != "rejected"]
            assert [a["state"] for a in ran] == ["succeeded"], d["attempts"]
            assert all(a["started"] is None for a in d["attempts"] if a["state"] == "rejected")
        assert docs[-1]["node"] == "node2"
        # a bad config: refused with config check's error, the old one kept. A bad value stops the CLI
        # itself (it reads the config to find the socket); a missing key file the daemon.
        good = node2.files.config.read_text()
        for old, new in (("slots = 1", "slots = -1"), ("[node]", '[trust]\nauthorized_keys = "gone"\n\n[node]')):
            node2.files.config.write_text(good.replace(old, new))
            check = subprocess.run([sys.executable, "-m", "xchanged", "config", "check", "-c", str(node2.files.config)],
                                   capture_output=True, text=True, timeout=60)
            refused = cli(node2, "reload")
            assert check.returncode == 2 and refused.returncode in (1, 2), refused.stderr
            error = check.stderr.strip().removeprefix("Error: ")
            assert "\n" not in error and refused.stderr.strip().endswith(error), (refused.stderr, error)
        with cluster.client(node2) as client:
            assert client.peers()[0]["slots"] == 1 and client.stats()["reloads"]["rejected"] == 1


def test_drain_finishes_running_work_hands_back_queued_work_and_undrain_takes_work_again(tmp_path):
    flag = tmp_path / "finish"
    with LocalCluster([1, 1], settings={"node": {"prefetch": 1}}) as cluster:
        node1, node2 = cluster.nodes
        with cluster.client(node1) as c1, cluster.client(node2) as c2:
            node2_id = c2.ping()["id"]
            slow = ["sh", "-c", f'test "$XCHANGED_NODE" = {node2_id} || exec sleep 0.3; '
                                f"while [ ! -e {flag} ]; do sleep 0.05; done"]
            ids = c1.submit_many([slow] * 12)        # node2 runs one until `flag`, and queues one behind it
            cluster.wait_for(lambda: c2.stats()["queued_here"] == 1, 60, "an attempt queued on node2")
            drained = json.loads(cli(node2, "drain", "--json").stdout)
            assert drained["draining"] and drained["running"] == 1 and drained["queued"] == 0
            cluster.wait_for(lambda: any(p["name"] == "node2" and p["draining"] for p in c1.peers()), 30,
                             "node1 to see node2 draining")
            waiter = subprocess.Popen([sys.executable, "-m", "xchanged", "drain", "--wait", "-c",
                                       str(node2.files.config)], stdout=subprocess.PIPE, text=True)
            try:
                late = c1.submit_many([["true"]] * 5)
                late_docs = [c1.wait(t, timeout=120) for t in late]
                assert {d["node"] for d in late_docs} == {"node1"}
                assert waiter.poll() is None                      # node2 still runs its attempt
                flag.touch()
                out, _ = waiter.communicate(timeout=120)
            finally:
                if waiter.poll() is None:
                    waiter.kill()
                    waiter.wait()
            assert waiter.returncode == 0 and "drained" in out
            docs = [c1.wait(t, timeout=120) for t in ids]
            assert all(d["state"] == "succeeded" for d in docs)
            handed = [d for d in docs if any(a["reason_code"] == "handed_back" for a in d["attempts"])]
            assert len(handed) == 1 and handed[0]["node"] == "node1" and handed[0]["failures"] == 0
            assert json.loads(cli(node2, "peers", "--json").stdout)[0]["draining"] is True
            assert cli(node2, "undrain").returncode == 0
            cluster.wait_for(lambda: not any(p["draining"] for p in c1.peers()), 30, "node2 to undrain")
            more = c1.submit_many([["sleep", "0.5"]] * 6)
            assert "node2" in {c1.wait(t, timeout=120)["node"] for t in more}
        newest = json.loads(cli(node1, "tasks", "--json", "--since", "1h", "--limit", "3").stdout)
        assert [d["id"] for d in newest] == more[-3:]


def test_sigterm_gives_running_work_its_grace_then_hands_it_back(tmp_path):
    with LocalCluster([1, 1], settings={"node": {"stop_grace": "1s"}}) as cluster:
        node1, node2 = cluster.nodes
        with cluster.client(node1) as c1, cluster.client(node2) as c2:
            node2_id = c2.ping()["id"]
            stuck = ["sh", "-c", f'test "$XCHANGED_NODE" = {node2_id} && exec sleep 120; sleep 1']
            ids = c1.submit_many([stuck, stuck])
            cluster.wait_for(lambda: [c1.status(t)["state"] for t in ids] == ["running"] * 2, 60, "both running")
            on_node2 = next(t for t in ids if c1.status(t)["node"] == "node2")
            started = time.monotonic()
            node2.process.send_signal(signal.SIGTERM)
            assert node2.process.wait(30) == 0
            stopped_after = time.monotonic() - started
            doc = c1.wait(on_node2, timeout=60)
        assert 1.0 <= stopped_after < 10, stopped_after
        assert doc["state"] == "succeeded" and doc["node"] == "node1"
        assert doc["attempts"][0]["reason_code"] == "handed_back" and doc["failures"] == 0
        assert "handing back 1 running attempts" in cluster.tail_log(node2, lines=100)


def _fill_history(path, n: int) -> None:
    store = Store(path)
    try:
        now = int(time.time() * 1000)
        for i in range(n):
            task = Task(f"T-OLD{i:012d}", TaskSpec(["sh", "-c", "echo " + "x" * 200]), now - 3_600_000 + i, i)
            doc = task.to_doc()
            doc.update(state="succeeded", finished=now - 3_000_000 + i)
            store.put_task(doc)
        store.commit()
    finally:
        store.close()


def test_polling_tasks_during_many_tasks_does_not_grow_the_daemon():
    """Today's `tasks` answer is bounded (newest 100 by default): polling it through 400 tasks on top of
    a 20,000-task history leaves the daemon's memory where the tasks alone put it (the issue: polls
    of an unbounded answer grew a daemon from 53 to 176 MiB)."""
    with LocalCluster([4]) as cluster:
        node = cluster.nodes[0]
        cluster.stop_node(node)
        _fill_history(node.files.directory / "state" / "xchanged.db", 20_000)
        cluster.start_node(node)
        cluster.wait_ready(node)
        proc = psutil.Process(node.process.pid)
        with cluster.client(node) as client:
            for _ in range(20):                         # warm up: caches, first answers
                client.tasks()
            before = proc.memory_info().rss
            ids = client.submit_many([["true"]] * 400)
            polls = sizes = 0
            while client.status(ids[-1])["state"] not in ("succeeded", "failed") or polls < 300:
                docs = client.tasks()
                sizes = max(sizes, len(docs))
                polls += 1
            grown = (proc.memory_info().rss - before) / 2**20
            assert all(client.wait(t, timeout=120)["state"] == "succeeded" for t in ids)
            assert len(client.tasks(limit=10_000)) == 10_000
        assert sizes == 100
        assert grown < 25, f"the daemon grew {grown:.1f} MiB over {polls} polls"
