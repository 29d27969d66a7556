"""Composite tasks on real daemons: an array with a reduce, a DAG in order, a coordinator killed with
-9 mid-run, and a cancelled tree. Commands leave marker files, so the tests count real executions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xchanged.localcluster import LocalCluster


@pytest.fixture
def cluster():
    # node1 submits and never coordinates itself, so its coordinator can be killed apart from it
    with LocalCluster([2, 2, 2, 2], node_settings={0: {"node": {"coordinations": 0}}}) as c:
        yield c


def submit(cluster: LocalCluster, spec: Path, *args: str) -> subprocess.CompletedProcess:
    conf = str(cluster.nodes[0].files.config)
    return subprocess.run([sys.executable, "-m", "xchanged", "submit", "-c", conf, "-f", str(spec), *args],
                          capture_output=True, text=True, timeout=300)


def test_a_hundred_part_array_completes_and_the_reduce_sees_every_result_in_order(cluster, tmp_path):
    out = tmp_path / "reduced.jsonl"
    spec = tmp_path / "array.toml"
    spec.write_text(f'''
command = ["sh", "-c", "echo part {{index}} of {{item}}"]
range = [1000, 1100]
reduce = ["sh", "-c", "cp $XCHANGED_PARTS {out}"]
''')
    proc = submit(cluster, spec, "--wait", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["state"] == "succeeded" and doc["progress"] == {"done": 101, "total": 101, "failed": 0}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(100))
    assert [line["item"] for line in lines] == [str(i) for i in range(1000, 1100)]
    assert all(line["state"] == "succeeded" and line["stdout_tail"] == f"part {line['index']} of {line['item']}\n"
               for line in lines)
    assert len({line["node"] for line in lines}) > 1, "every part ran on one node"
    conf = str(cluster.nodes[0].files.config)
    logs = subprocess.run([sys.executable, "-m", "xchanged", "logs", "-c", conf, doc["id"], "--part", "7", "--json"],
                          capture_output=True, text=True, timeout=60)
    part = json.loads(logs.stdout)             # the whole output, from the node that coordinated the part
    assert part["complete"] and part["stdout"] == "part 7 of 1007\n" and part["part"] == "7"


def test_a_diamond_runs_in_order(cluster, tmp_path):
    spec = tmp_path / "dag.toml"
    step = 'command = ["sh", "-c", "date +%s.%N > {d}/{n}.start; sleep 0.3; date +%s.%N > {d}/{n}.end"]'
    spec.write_text("\n".join(f"[tasks.{n}]\n{step.format(d=tmp_path, n=n)}\n{deps}\n" for n, deps in (
        ("a", ""), ("b", 'depends_on = ["a"]'), ("c", 'depends_on = ["a"]'), ("d", 'depends_on = ["b", "c"]'))))
    proc = submit(cluster, spec, "--wait", "--json")
    assert proc.returncode == 0, proc.stderr
    t = {f"{n}.{edge}": float((tmp_path / f"{n}.{edge}").read_text()) for n in "abcd" for edge in ("start", "end")}
    assert t["a.end"] <= t["b.start"] and t["a.end"] <= t["c.start"]
    assert max(t["b.end"], t["c.end"]) <= t["d.start"]


def test_killing_the_coordinator_reruns_no_part_it_reported(cluster, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    spec = tmp_path / "array.toml"
    spec.write_text(f'''
command = ["sh", "-c", "sleep 0.4; echo $XCHANGED_TASK_ID >> {runs}/{{index}}"]
range = [0, 48]
''')
    proc = submit(cluster, spec, "--json")
    assert proc.returncode == 0, proc.stderr
    tid = json.loads(proc.stdout)["id"]
    with cluster.client(0) as client:
        cluster.wait_for(lambda: client.status(tid)["progress"]["done"] >= 12, 60, "a dozen parts reported")
        doc = client.status(tid)
        reported = {p["key"] for p in doc["parts"] if p["state"] == "succeeded"}
        victim = next(n for n in cluster.nodes if n.name == doc["node"])
        assert victim is not cluster.nodes[0]
        cluster.kill9(victim)
        final = client.wait(tid, timeout=180)
    assert final["state"] == "succeeded" and final["progress"]["done"] == 48
    assert final["attempts"][0]["state"] == "lost" and final["attempts"][-1]["node"] != victim.name
    for key in reported:
        assert len((runs / key).read_text().splitlines()) == 1, f"part {key} ran again after it was reported"
    assert sorted(int(p.name) for p in runs.iterdir()) == list(range(48))


def test_cancel_kills_every_part_of_the_tree(cluster, tmp_path):
    spec = tmp_path / "tree.toml"
    spec.write_text(f'''
[tasks.wide]
command = ["sh", "-c", "echo $$ > {tmp_path}/pid.{{index}}; exec sleep 120"]
range = [0, 5]
[tasks.nested]
spec = "inner.toml"
''')
    (tmp_path / "inner.toml").write_text(f'''
command = ["sh", "-c", "echo $$ > {tmp_path}/pid.inner.{{index}}; exec sleep 120"]
range = [0, 2]
''')
    proc = submit(cluster, spec, "--json")
    assert proc.returncode == 0, proc.stderr
    tid = json.loads(proc.stdout)["id"]
    pid_files = [tmp_path / f"pid.{i}" for i in range(5)] + [tmp_path / f"pid.inner.{i}" for i in range(2)]
    cluster.wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), 60, "every part running")
    pids = [int(p.read_text()) for p in pid_files]
    conf = str(cluster.nodes[0].files.config)
    cancel = subprocess.run([sys.executable, "-m", "xchanged", "cancel", "-c", conf, tid], capture_output=True,
                            text=True, timeout=60)
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return _zombie(pid)
    cluster.wait_for(lambda: all(gone(pid) for pid in pids), 30, "every part process to end")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_resubmit_reruns_only_what_did_not_succeed(cluster, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    flag = tmp_path / "fixed"
    spec = tmp_path / "flaky.toml"
    spec.write_text(f'''
command = ["sh", "-c", "echo x >> {runs}/{{index}}; [ {{item}} != 3 ] || [ -e {flag} ]"]
items = ["0", "1", "2", "3", "4"]
retries = 0
''')
    proc = submit(cluster, spec, "--wait", "--json")
    assert proc.returncode == 1
    first = json.loads(proc.stdout)
    assert first["state"] == "failed" and first["progress"] == {"done": 5, "total": 5, "failed": 1}
    flag.touch()
    conf = str(cluster.nodes[0].files.config)
    rerun = subprocess.run([sys.executable, "-m", "xchanged", "resubmit", "-c", conf, "--wait", "--json",
                            first["id"]], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    second = json.loads(rerun.stdout)
    assert second["state"] == "succeeded" and second["resubmit_of"] == first["id"]
    counts = {p.name: len(p.read_text().splitlines()) for p in runs.iterdir()}
    assert counts == {"0": 1, "1": 1, "2": 1, "3": 2, "4": 1}


def test_a_bad_spec_is_refused_naming_the_file_table_and_key(cluster, tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('[tasks.a]\ncommand = ["true"]\ndepends_on = ["b"]\n')
    proc = submit(cluster, spec)
    assert proc.returncode == 2 and f"{spec}: tasks.a.depends_on: no step named 'b'" in proc.stderr
    spec.write_text('command = ["x", "{file}"]\nitems = ["1"]\n')
    proc = submit(cluster, spec)
    assert proc.returncode == 2 and "command: bad template" in proc.stderr
    with cluster.client(0) as client:
        assert client.tasks() == []
