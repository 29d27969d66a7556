"""Issue 10 as reported: 1,000 `true` tasks in one `submit -f` to two 1-slot daemons with the default
`overload_cpu_percent` (90, so on one busy host they refuse and queue often), several times in a row.
Every task must succeed, and none may wait at its contractor for long past its award."""

import subprocess
import sys

import pytest

from xchanged.client import build_spec
from xchanged.localcluster import LocalCluster

TASKS = 1000
ROUNDS = 3
MAX_AWARD_TO_START_MS = 10_000     # a queued attempt's promise (<= 1 s) plus the manager's margin, and then some


@pytest.fixture
def cluster():
    with LocalCluster([1, 1], settings={"bidding": {"overload_cpu_percent": 90}}) as c:
        yield c


def wait_all_ended(client, ids, timeout):
    """The documents of `ids` once none is queued, assigned or running (client.wait returns at once
    for an ended task, and blocks in the daemon, not here, for one that has not)."""
    return [client.wait(tid, timeout=timeout) for tid in ids]


def test_thousand_short_tasks_in_one_batch_all_finish_each_time(cluster, tmp_path):
    spec = tmp_path / "many.toml"
    spec.write_text("".join('[[task]]\ncommand = ["true"]\nretries = 0\n\n' for _ in range(TASKS)))
    conf = str(cluster.nodes[0].files.config)
    with cluster.client(0) as client:
        for round_ in range(ROUNDS):
            if round_ == 0:                 # as the user did it: through the CLI
                proc = subprocess.run([sys.executable, "-m", "xchanged", "submit", "-c", conf, "-f", str(spec)],
                                      capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, proc.stderr
                ids = proc.stdout.split()
            else:
                ids = [d["id"] for d in client.submit_specs([build_spec(["true"], retries=0)] * TASKS)]
            assert len(ids) == TASKS
            docs = wait_all_ended(client, ids, timeout=120)
            stuck = [d for d in docs if d["state"] != "succeeded"]
            assert not stuck, f"round {round_}: {len(stuck)} not succeeded, e.g. {stuck[0]}"
            slow = [(d["id"], a["node"], a["started"] - a["awarded"]) for d in docs for a in d["attempts"]
                    if a["started"] is not None and a["awarded"] is not None
                    and a["started"] - a["awarded"] > MAX_AWARD_TO_START_MS]
            assert not slow, f"round {round_}: attempts waited long for a start: {slow[:5]}"
    for node in cluster.nodes:              # and no slot is left held by nothing
        def idle(node=node):
            with cluster.client(node) as c:
                own = next(a for a in c.stats()["agents"] if a["name"] == node.name)
            return own["running"] == 0 and own["slots_free"] + own["running"] <= own["slots"]
        cluster.wait_for(idle, 10, f"{node.name} to be idle")
