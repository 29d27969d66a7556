"""Task confinement rules (runtime/confine.py), task cgroups on a stand-in cgroup tree
(runtime/cgroups.py), and who may use the control socket (runtime/access.py)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from xchanged.config import config_from_dict
from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.runtime import cgroups
from xchanged.runtime.access import UNKNOWN, ControlAccess, Requester
from xchanged.runtime.confine import NEVER_INHERITED, TaskPolicy, _account, scrubbed_environment


def executor(**keys):
    return config_from_dict({"node": {"name": "n"}, "executor": keys}, check_files=False).executor


def test_the_environment_is_an_allow_list_and_systemds_variables_never_pass():
    daemon_env = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/root", "AWS_SECRET": "s3cr3t",
                  "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000", "XCHANGED_CONFIG": "/etc/x"}
    env = scrubbed_environment(daemon_env, ("PATH", "LANG", "LC_*", "NOTIFY_*", "WATCHDOG_*"),
                           {"MINE": "1", "NOTIFY_SOCKET": "/evil"}, {"XCHANGED_TASK_ID": "T-1"})
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "MINE": "1", "XCHANGED_TASK_ID": "T-1"}
    assert not set(env) & set(NEVER_INHERITED)
    assert scrubbed_environment({}, (), {}, {})["PATH"]                 # always a PATH


def test_run_as_daemon_needs_no_account_and_any_cwd_inside_the_task_directory(tmp_path):
    policy = TaskPolicy(executor(), tmp_path)
    assert policy.vet("true", "", None) is None and policy.vet("true", "alice", "sub/dir") is None
    assert "leaves" in policy.vet("true", "", "../../etc")
    assert "allow_cwd" in policy.vet("true", "", "/etc")
    allowed = TaskPolicy(executor(allow_cwd=["/srv/*"]), tmp_path)
    assert allowed.vet("true", "", "/srv/build") is None and allowed.vet("true", "", "/srv/../etc") is not None


def test_run_as_submitter_refuses_unknown_users_root_and_users_not_allowed(tmp_path):
    policy = TaskPolicy(executor(run_as="submitter", run_as_allow=["d*"]), tmp_path, daemon_uid=0)
    assert "does not exist" in policy.vet("true", "no-such-user-xc", None)
    assert "root" in policy.vet("true", "root", None)
    assert "names no submitting user" in policy.vet("true", "", None)
    assert "run_as_allow" in policy.vet("true", "nobody", None)
    daemon_user = next((p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("d") and p.pw_uid), None)
    if daemon_user:
        account, why = policy.account_for(daemon_user)
        assert why is None and account.name == daemon_user


def test_switching_users_needs_a_root_daemon(tmp_path):
    policy = TaskPolicy(executor(run_as="submitter"), tmp_path, daemon_uid=12345)
    assert "not run as root" in policy.vet("true", "nobody", None)
    assert TaskPolicy(executor(run_as="no-such-user-xc"), tmp_path).check_config() is not None


def test_limits_and_the_launcher(tmp_path):
    policy = TaskPolicy(executor(max_open_files=256, max_mem="1G"), tmp_path, daemon_uid=0)
    spec = TaskSpec(["true"], timeout=10, requirements=Requirements(cpus=2, mem=100 << 20))
    limits = policy.limits(spec)
    assert limits.mem == 100 << 20 and limits.data == 2 * (100 << 20) + (256 << 20)
    assert limits.cpu_s == 21 and limits.nofile == 256 and limits.cpus == 2
    assert policy.limits(TaskSpec(["true"])).mem == 1 << 30                  # the node's limit
    assert policy.limits(TaskSpec(["true"], requirements=Requirements(gpus=1, mem=1 << 20))).data is None
    account = _account("nobody")
    argv = policy.launcher(account, limits)
    if policy.prlimit:
        assert "--nofile=256:256" in argv and f"--data={limits.data}:{limits.data}" in argv and "--cpu=21:26" in argv
    if policy.setpriv:
        assert argv[-3:] == ["--pdeathsig", "KILL", "--"]
        assert "--reuid" in argv and str(pwd.getpwnam("nobody").pw_uid) in argv


def test_a_task_directory_is_made_for_the_attempt_and_removed(tmp_path):
    policy = TaskPolicy(executor(), tmp_path)
    plan = policy.plan("T-1", 2, TaskSpec(["true"], cwd="work/here"), {})
    policy.make_workdir(plan)
    assert plan.workdir == tmp_path / "tasks" / "T-1.2" and plan.cwd == plan.workdir / "work" / "here"
    assert plan.cwd.is_dir() and (os.stat(plan.workdir).st_mode & 0o777) == 0o700
    policy.remove_workdir(plan)
    assert not plan.workdir.exists()
    with pytest.raises(PermissionError):
        policy.plan("T-1", 3, TaskSpec(["true"], cwd="/etc"), {})


def fake_tree(tmp_path: Path, controllers: str = "cpu memory pids") -> Path:
    """A stand-in for /proc/self and a delegated cgroup v2 directory (files only, no kernel)."""
    proc, mount = tmp_path / "proc", tmp_path / "cgroup"
    own = mount / "system.slice" / "xchanged.service"
    own.mkdir(parents=True)
    proc.mkdir()
    (proc / "cgroup").write_text("0::/system.slice/xchanged.service\n")
    (proc / "mountinfo").write_text(f"30 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    return proc


def test_task_cgroups_on_a_delegated_tree(tmp_path):
    proc = fake_tree(tmp_path)
    tree, why = cgroups.detect("auto", proc)
    assert why == "" and tree.root == tmp_path / "cgroup" / "system.slice" / "xchanged.service"
    assert (tree.root / "daemon" / "cgroup.procs").read_text() == str(os.getpid())
    assert (tree.root / "cgroup.subtree_control").read_text() == "+memory +cpu"
    group = tree.create("T-1", 1, 64 << 20, 1.5)
    assert (group.path / "memory.max").read_text() == str(64 << 20)
    assert (group.path / "cpu.max").read_text() == "150000 100000"
    assert group.join_prefix()[-1] == str(group.path / "cgroup.procs")
    (group.path / "memory.current").write_text(str(50 << 20))
    (group.path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (group.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    usage = group.usage()
    assert usage == cgroups.Usage(50 << 20, 2.5, True)
    assert group.finish() == (usage, False)          # read, killed; a real cgroup's files go with rmdir
    assert (group.path / "cgroup.kill").read_text() == "1"


@pytest.mark.parametrize("case, why", [("v1", "cgroup v1 only"), ("root", "root cgroup"),
                                       ("no-memory", "not delegated"), ("off", "disabled")])
def test_no_task_cgroups_says_why(tmp_path, case, why):
    proc = fake_tree(tmp_path, "cpu pids" if case == "no-memory" else "cpu memory")
    if case == "v1":
        (proc / "cgroup").write_text("4:memory:/x\n")
    if case == "root":
        (proc / "cgroup").write_text("0::/\n")
    tree, reason = cgroups.detect("off" if case == "off" else "auto", proc)
    assert tree is None and why in reason


def who(name: str, uid: int = 1000, groups: tuple[str, ...] = ()) -> Requester:
    return Requester(1, uid, uid, name, frozenset(groups))


def test_control_access():
    control = config_from_dict({"node": {"name": "n"}, "control": {"allow_users": ["alice"], "allow_groups": ["ops"],
                                                                   "admin_groups": ["wheel"]}},
                               check_files=False).control
    access = ControlAccess(control, daemon_uid=999)
    assert access.may_submit(who("alice")) is None and access.may_submit(who("bob", groups=("ops",))) is None
    assert "may not submit" in access.may_submit(who("mallory"))
    assert access.may_submit(who("root", uid=0)) is None and access.may_submit(who("xchanged", uid=999)) is None
    assert access.may_touch(who("alice"), "alice", "cancel") is None
    assert "only its submitter" in access.may_touch(who("alice"), "bob", "cancel")
    assert access.may_touch(who("carol", groups=("wheel",)), "bob", "cancel") is None
    assert access.may_touch(who("mallory"), "", "read the output of") is not None
    assert not access.is_admin(UNKNOWN) and access.may_submit(UNKNOWN) is not None


def test_a_composite_parts_id_makes_one_directory_and_one_cgroup(tmp_path):
    policy = TaskPolicy(executor(), tmp_path)
    plan = policy.plan("T-ABC/1/build[2]", 3, TaskSpec(["true"]), {})
    assert plan.workdir == tmp_path / "tasks" / "T-ABC_1_build_2_.3"
    tree, _ = cgroups.detect("auto", fake_tree(tmp_path))
    assert tree.create("T-ABC/1/x", 1, None, 0).path.parent == tree.root
