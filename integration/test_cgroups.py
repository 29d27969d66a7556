"""A cgroup v2 per task on a real daemon, where the daemon's cgroup is delegated (systemd Delegate=yes).

The test plays systemd: it makes a cgroup with the memory and cpu controllers, starts the daemon in
it, and checks that a running task has its own cgroup with memory.max and cpu.max from --mem and
--cpus, that a task allocating past --mem fails with reason `oom`, and that peak memory and CPU
seconds are recorded. Skipped, with the reason, where cgroup v2 cannot do that (cgroup v1 hosts, no
memory controller in v2, not root).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from xchanged.localcluster import LocalCluster


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split(" - ")
        if len(parts) == 2 and parts[1].split()[0] == "cgroup2":
            return Path(line.split()[4])
    return None


def delegated_parent() -> tuple[Path | None, str]:
    """A fresh cgroup with memory and cpu for the daemon to run in, or (None, why not)."""
    if os.geteuid() != 0:
        return None, "needs root to make a cgroup"
    mount = cgroup2_mount()
    if mount is None:
        return None, "no cgroup2 file system mounted"
    controllers = (mount / "cgroup.controllers").read_text().split()
    if not {"memory", "cpu"} <= set(controllers):
        return None, (f"cgroup v2 at {mount} has no memory/cpu controllers (they are on cgroup v1 here: "
                      f"{' '.join(controllers) or 'none'})")
    try:
        enabled = (mount / "cgroup.subtree_control").read_text().split()
        missing = [c for c in ("memory", "cpu") if c not in enabled]
        if missing:
            (mount / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        parent = mount / f"xchanged-test-{uuid.uuid4().hex[:8]}"
        parent.mkdir()
    except OSError as exc:
        return None, f"cannot make a cgroup under {mount}: {exc}"
    return parent, ""


def remove_tree(path: Path) -> None:
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


@pytest.fixture
def cluster():
    parent, why = delegated_parent()
    if parent is None:
        pytest.skip(f"no delegated cgroup v2 here: {why}")
    c = LocalCluster([2])
    c.launch_prefix = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(parent / "cgroup.procs")]
    try:
        with c:
            c.cgroup_parent = parent
            yield c
    finally:
        remove_tree(parent)


def test_each_task_runs_in_its_own_limited_cgroup(cluster):
    parent = cluster.cgroup_parent
    hold = "x = bytearray(300 << 20)\nimport time\ntime.sleep(60)\n"
    with cluster.client(0) as client:
        assert client.stats()["security"]["task_cgroups"] == str(parent)
        tid = client.submit(["sleep", "30"], mem="128M", cpus=0.5)
        cluster.wait_for(lambda: any(parent.glob(f"task-{tid}.*")), 30, "the task's cgroup")
        group = next(parent.glob(f"task-{tid}.*"))
        assert (group / "memory.max").read_text().strip() == str(128 << 20)
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        client.cancel(tid)
        greedy = client.submit([sys.executable, "-c", hold], mem="64M", retries=0)
        busy = client.submit([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass"], retries=0)
        greedy_doc, busy_doc = client.wait(greedy, timeout=60), client.wait(busy, timeout=60)
    assert greedy_doc["state"] == "failed" and greedy_doc["attempts"][-1]["reason_code"] == "oom", greedy_doc
    attempt = busy_doc["attempts"][-1]
    assert busy_doc["state"] == "succeeded" and attempt["cpu_s"] >= 0.4 and attempt["peak_mem"] > 0
    assert not list(parent.glob(f"task-{busy}.*"))                 # removed when the attempt ended
