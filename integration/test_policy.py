"""Who may submit, as whom tasks run, and how they are confined, on real daemons (docs/security.md):
a disallowed command is refused with reason `policy`; no daemon variable leaks into a task; a task
that allocates past --mem fails with reason `oom`; a user outside allow_users cannot submit; with
run_as = "submitter" each of two users' tasks runs as that user (users created here: root only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from xchanged.client import Client, RequestFailed, build_spec
from xchanged.localcluster import LocalCluster

WAIT = 60.0


def wait_state(client: Client, tid: str, predicate, what: str, timeout: float = WAIT) -> dict:
    end = __import__("time").monotonic() + timeout
    while True:
        doc = client.wait(tid, timeout=1.0)
        if predicate(doc):
            return doc
        assert __import__("time").monotonic() < end, f"timed out waiting for {what}: {doc}"


def test_a_disallowed_command_is_refused_with_reason_policy():
    with LocalCluster([1, 1], settings={"executor": {"allow": ["true", "sh"]}}) as cluster:
        with cluster.client(0) as client:
            tid = client.submit(["ls", "/"])
            doc = wait_state(client, tid, lambda d: d["reason_code"] == "policy", "a policy refusal")
            assert doc["state"] == "queued" and "not allowed" in doc["reason"]
            ok = client.submit(["true"])
            assert client.wait(ok, timeout=WAIT)["state"] == "succeeded"


def test_no_daemon_variable_reaches_a_task_which_runs_in_its_own_directory(monkeypatch):
    monkeypatch.setenv("XC_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify-test")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    with LocalCluster([1]) as cluster:
        with cluster.client(0) as client:
            tid = client.submit(["sh", "-c", "env; echo cwd=$(pwd)"], env={"MINE": "42"})
            doc = client.wait(tid, timeout=WAIT)
            assert doc["state"] == "succeeded", doc
            out = client.logs(tid)["stdout"]
    variables = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("cwd="))
    assert "XC_SECRET_TOKEN" not in variables and "NOTIFY_SOCKET" not in variables
    assert not any(k.startswith("WATCHDOG_") for k in variables)
    assert variables["MINE"] == "42" and variables["XCHANGED_TASK_ID"] == tid and "PATH" in variables
    state_dir = cluster.nodes[0].files.directory / "state"
    assert f"cwd={state_dir / 'tasks' / tid}.1" in out
    assert not (state_dir / "tasks" / f"{tid}.1").exists()                  # removed when it ended


def test_a_task_over_its_memory_fails_with_reason_oom_and_its_use_is_recorded():
    hold = ("import time\nchunks = []\nfor _ in range(48):\n    chunks.append(bytearray(4 << 20))\n"
            "    time.sleep(0.01)\ntime.sleep(60)\n")          # 192 MiB touched, then held
    with LocalCluster([1]) as cluster:
        with cluster.client(0) as client:
            greedy = client.submit([sys.executable, "-c", hold], mem="64M", retries=0)
            spike = client.submit([sys.executable, "-c", "x = bytearray(2 << 30)"], mem="64M", retries=0)
            busy = client.submit([sys.executable, "-c", "import time\nt = time.process_time()\n"
                                  "while time.process_time() - t < 1.2: pass"], mem="1G", retries=0)
            docs = {name: client.wait(tid, timeout=WAIT) for name, tid in
                    (("greedy", greedy), ("spike", spike), ("busy", busy))}
    for name in ("greedy", "spike"):
        doc = docs[name]
        assert doc["state"] == "failed", doc
        assert doc["attempts"][-1]["reason_code"] == "oom", doc
        assert "memory limit" in doc["attempts"][-1]["reason"]
    assert docs["greedy"]["attempts"][-1]["peak_mem"] > 64 << 20
    busy = docs["busy"]["attempts"][-1]
    assert docs["busy"]["state"] == "succeeded" and busy["cpu_s"] is not None and busy["cpu_s"] >= 0.7, busy
    assert 0 < busy["peak_mem"] < 1 << 30


# -- users ------------------------------------------------------------------------------------------


def _can_make_users() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root (useradd, setuid)"
    if not shutil.which("useradd") or not shutil.which("userdel"):
        return False, "useradd/userdel not installed"
    return True, ""


@pytest.fixture
def users():
    """Two throw-away local users, removed afterwards."""
    ok, why = _can_make_users()
    if not ok:
        pytest.skip(why)
    names = [f"xc{uuid.uuid4().hex[:8]}" for _ in range(2)]
    made = []
    try:
        for name in names:
            subprocess.run(["useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/bin/sh", name], check=True,
                           capture_output=True)
            made.append(name)
        yield names
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


def as_user(name: str, socket_path, op: str, **args) -> dict:
    """One control request made by a process running as user `name` (forked, then setuid)."""
    import pwd
    pw = pwd.getpwnam(name)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: drop to the user, ask, report, exit
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                answer = {"ok": True, "result": Client(socket=socket_path, timeout=20).call(op, **args)}
            except RequestFailed as exc:
                answer = {"ok": False, "error": str(exc)}
            except Exception as exc:                        # reported to the parent, which fails the test
                answer = {"ok": False, "error": f"client failed: {exc!r}"}
            os.write(write, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def open_socket_to_all(cluster: LocalCluster) -> None:
    """The test's users must reach the control socket (a real host would use its group, mode 0660)."""
    for path in (cluster.base, *(n.files.directory for n in cluster.nodes)):
        os.chmod(path, 0o755)
    for node in cluster.nodes:
        os.chmod(node.socket, 0o666)


def test_a_user_outside_allow_users_cannot_submit_or_cancel_others_tasks(users):
    alice, mallory = users
    with LocalCluster([1], settings={"control": {"allow_users": [alice]}}) as cluster:
        open_socket_to_all(cluster)
        sock = cluster.nodes[0].socket
        spec = build_spec(["sleep", "30"])
        refused = as_user(mallory, sock, "submit", specs=[spec])
        assert not refused["ok"] and f"user {mallory}" in refused["error"] and "allow_users" in refused["error"]
        accepted = as_user(alice, sock, "submit", specs=[spec])
        assert accepted["ok"], accepted
        tid = accepted["result"][0]["id"]
        assert accepted["result"][0]["spec"]["user"] == alice                 # recorded, not client-chosen
        assert not as_user(mallory, sock, "cancel", id=tid)["ok"]
        assert not as_user(mallory, sock, "logs", id=tid)["ok"]
        assert as_user(mallory, sock, "status", id=tid)["ok"]                 # reading status is open
        assert as_user(alice, sock, "cancel", id=tid)["ok"]
        with cluster.client(0) as client:                                    # root: an admin
            assert client.wait(tid, timeout=WAIT)["state"] == "cancelled"


def test_run_as_submitter_runs_each_users_task_as_that_user_and_never_as_root(users):
    settings = {"executor": {"run_as": "submitter"}, "control": {"allow_users": users}}
    with LocalCluster([1, 1], settings=settings) as cluster:
        open_socket_to_all(cluster)
        sock = cluster.nodes[0].socket
        ids = {}
        for user in users:
            answer = as_user(user, sock, "submit", specs=[build_spec(["sh", "-c", "id -un; pwd; echo $HOME"])])
            assert answer["ok"], answer
            ids[user] = answer["result"][0]["id"]
        with cluster.client(0) as client:
            for user, tid in ids.items():
                doc = client.wait(tid, timeout=WAIT)
                assert doc["state"] == "succeeded", doc
                name, cwd, home = client.logs(tid)["stdout"].split()
                assert name == user and cwd.endswith(f"/tasks/{tid}.{doc['attempts'][-1]['attempt']}")
                assert home == "/nonexistent"
            as_root = client.submit(["id", "-un"])                          # root submits: policy refusal
            doc = wait_state(client, as_root, lambda d: d["reason_code"] == "policy", "a policy refusal")
            assert "root" in doc["reason"]


def test_a_composites_parts_and_reduce_run_as_its_submitter(users):
    """The user name goes on every task inside a composite (whatever the spec says), so its parts run
    as the submitter wherever they are announced, and the reduce reads its input as that user."""
    from xchanged import specfile
    alice, mallory = users
    settings = {"executor": {"run_as": "submitter"}, "control": {"allow_users": users}}
    with LocalCluster([2, 2], settings=settings) as cluster:
        open_socket_to_all(cluster)
        [body] = specfile.from_dict({"command": ["sh", "-c", "echo {item} $(id -un)"], "items": ["a", "b", "c"],
                                     "reduce": ["sh", "-c", "id -un; wc -l < $XCHANGED_PARTS"]}, "<test>", None)
        body["composite"]["steps"][0]["task"]["user"] = mallory        # a forged name inside: overwritten
        answer = as_user(alice, cluster.nodes[0].socket, "submit", specs=[body])
        assert answer["ok"], answer
        tid = answer["result"][0]["id"]
        with cluster.client(0) as client:
            doc = client.wait(tid, timeout=WAIT)
            assert doc["state"] == "succeeded", doc
            assert client.logs(tid)["stdout"].split() == [alice, "3"]
            for part in ("0", "1", "2"):
                item, user = client.logs(tid, part=part)["stdout"].split()
                assert user == alice
