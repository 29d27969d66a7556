"""What a task may do on this node and how it is confined: account, environment, directory, limits.

    policy = TaskPolicy(config.executor, state_dir)
    policy.vet(command, user, cwd)       # the core's policy check (contractor.py): None, or why not
    plan = policy.plan(task_id, attempt, spec)   # account, environment, directory, limits, launcher

Rules (docs/security.md):
- Account (`[executor] run_as`): "daemon" runs tasks as the daemon's own user; "submitter" as the
  user named by the signed task (TaskSpec.user), which must exist here, must not be root, and must
  match `run_as_allow`; a user name runs every task as that user. Switching users needs a root
  daemon; otherwise such tasks are refused (`policy`), never run as the daemon instead.
- Environment: only the daemon's variables matching `env_allow`, then HOME/USER/LOGNAME/SHELL of the
  account (when it switches), then the task's own variables, then the contractor's (XCHANGED_*,
  CUDA_VISIBLE_DEVICES). The systemd variables of the daemon's own process (NOTIFY_SOCKET,
  WATCHDOG_*, LISTEN_*, ...) never reach a task, whatever `env_allow` or the task say
  (`scrubbed_environment`, kept apart; executor.task_environment is the minimal version for what
  runs without a policy).
- Directory: a task runs in a fresh directory of its own, state_dir/tasks/<task>.<attempt> (mode
  0700, owned by its account, removed when it ends); a relative --cwd is taken inside it; an absolute
  --cwd only if it matches `allow_cwd`. Anything else is refused (`policy`) before a bid.
- Limits (setrlimit, through util-linux `prlimit` in the launcher, so the daemon never forks itself
  with a preexec hook): RLIMIT_NOFILE = max_open_files; RLIMIT_CPU = max_cpu_time, else the task's
  timeout times its --cpus (at least 1 s), with SIGKILL 5 s later; RLIMIT_DATA = twice the memory
  limit plus 256 MiB (a backstop against runaway allocation: the memory limit itself is enforced by
  the task's cgroup, or by the executor watching its RSS; see executor.py), not for GPU tasks (the
  CUDA runtime maps large regions). The memory limit is the lower of --mem and `max_mem` (0: none).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import pwd
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from ..protocol.messages import TaskSpec

if TYPE_CHECKING:
    from ..config import ExecutorConfig

#: Variables of the daemon's own process a task never gets (systemd's service protocol, the daemon's
#: credentials and journal streams).
NEVER_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY",
                   "MANAGERPID", "SYSTEMD_EXEC_PID", "XCHANGED_CONFIG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DATA_SLACK = 256 << 20          # RLIMIT_DATA = 2 * memory limit + this (a backstop, see the docstring)
CPU_KILL_AFTER = 5              # seconds from RLIMIT_CPU's SIGXCPU to its SIGKILL


def attempt_name(task_id: str, attempt: int) -> str:
    """A file name for an attempt (a composite part's id has slashes: T-.../1/key)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{task_id}.{attempt}")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class Limits:
    mem: int | None             # bytes the task may use (cgroup memory.max / RSS watch); None: no limit
    data: int | None            # RLIMIT_DATA
    cpu_s: int | None           # RLIMIT_CPU (soft)
    nofile: int                 # RLIMIT_NOFILE
    cpus: float                 # cgroup cpu.max share (0: none)


@dataclass(frozen=True)
class Plan:
    """How one attempt is started."""

    account: Account | None     # None: as the daemon
    env: dict[str, str]
    workdir: Path               # its own directory (removed at the end)
    cwd: Path                   # where it runs (the workdir, a directory inside it, or an allowed one)
    limits: Limits
    launcher: list[str]         # argv prefix: limits, account, death signal (the cgroup prefix is added later)


def _inheritable(name: str) -> bool:
    return name not in NEVER_INHERITED and not name.startswith("WATCHDOG_")


def scrubbed_environment(base: Mapping[str, str], allow: Sequence[str], task_env: Mapping[str, str],
                     extra: Mapping[str, str], account: Account | None = None) -> dict[str, str]:
    """A task's environment: `base` (the daemon's) filtered by `allow` globs, the account's identity,
    the task's own variables, the contractor's `extra`; NEVER_INHERITED dropped from all of them."""
    env = {k: v for k, v in base.items() if _inheritable(k) and any(fnmatch.fnmatchcase(k, p) for p in allow)}
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell)
    env.update({k: v for k, v in task_env.items() if _inheritable(k)})
    env.update(extra)
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def _account(name: str) -> Account | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/", pw.pw_shell or "/bin/sh")


class TaskPolicy:
    def __init__(self, config: ExecutorConfig, state_dir: Path, daemon_uid: int | None = None,
                 environ: Mapping[str, str] | None = None):
        self.config = config
        self.tasks_dir = Path(state_dir) / "tasks"
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
        self.environ = os.environ if environ is None else environ
        self.setpriv = shutil.which("setpriv")
        self.prlimit = shutil.which("prlimit")

    def check_config(self) -> str | None:
        """Why this node's run_as cannot work at all (a fixed user that does not exist; switching
        without root or setpriv), or None. The daemon refuses to start on it."""
        run_as = self.config.run_as
        if run_as == "daemon":
            return None
        if run_as != "submitter" and _account(run_as) is None:
            return f"executor.run_as: no user {run_as!r} on this host"
        return self._why_no_switch(run_as)

    def _why_no_switch(self, user: str) -> str | None:
        if self.setpriv is None:
            return f"cannot run tasks as {user}: util-linux setpriv is not installed"
        if self.daemon_uid != 0:
            return f"cannot run tasks as {user}: the daemon does not run as root"
        return None

    # -- the core's question --------------------------------------------------------------------

    def vet(self, command: str, user: str, cwd: str | None) -> str | None:
        """Why a task of `user` running `command` in `cwd` may not run here (None: it may)."""
        _, why = self.account_for(user)
        if why is None:
            why = self.cwd_refusal(cwd)
        return why

    def account_for(self, user: str) -> tuple[Account | None, str | None]:
        """(account to run as, None) or (None, why not); (None, None) means as the daemon."""
        run_as = self.config.run_as
        if run_as == "daemon":
            return None, None
        if run_as == "submitter":
            if not user:
                return None, "run_as = submitter, and the task names no submitting user"
            account = _account(user)
            if account is None:
                return None, f"user {user!r} does not exist here"
            if account.uid == 0:
                return None, "tasks may not run as root here"
            if not any(fnmatch.fnmatchcase(user, p) for p in self.config.run_as_allow):
                return None, f"user {user!r} is not in executor.run_as_allow here"
        else:
            account = _account(run_as)
            if account is None:
                return None, f"executor.run_as user {run_as!r} does not exist here"
        if account.uid == self.daemon_uid:
            return None, None                      # no switch needed
        why = self._why_no_switch(account.name)
        return (None, why) if why else (account, None)

    def cwd_refusal(self, cwd: str | None) -> str | None:
        if not cwd:
            return None
        if not posixpath.isabs(cwd):
            normal = posixpath.normpath(cwd)
            if normal == ".." or normal.startswith("../"):
                return f"working directory {cwd!r} leaves the task's own directory"
            return None
        normal = posixpath.normpath(cwd)
        if any(fnmatch.fnmatchcase(normal, p) for p in self.config.allow_cwd):
            return None
        return f"working directory {cwd!r} not allowed here (executor.allow_cwd)"

    # -- starting a task ------------------------------------------------------------------------

    def limits(self, spec: TaskSpec) -> Limits:
        c, req = self.config, spec.requirements
        mem = min((m for m in (req.mem, c.max_mem) if m > 0), default=None)
        data = None if mem is None or req.gpus else 2 * mem + DATA_SLACK
        if c.max_cpu_time > 0:
            cpu_s: int | None = max(1, int(c.max_cpu_time))
        elif spec.timeout is not None:
            cpu_s = max(1, int(spec.timeout * max(req.cpus, 1.0)) + 1)
        else:
            cpu_s = None
        return Limits(mem, data, cpu_s, c.max_open_files, req.cpus)

    def launcher(self, account: Account | None, limits: Limits) -> list[str]:
        """argv prefix that applies the limits, switches the account and makes the task die with the
        daemon (setpriv sets the death signal after switching, as the kernel clears it on a switch)."""
        argv: list[str] = []
        if self.prlimit:
            argv += [self.prlimit, f"--nofile={limits.nofile}:{limits.nofile}"]
            if limits.data is not None:
                argv.append(f"--data={limits.data}:{limits.data}")
            if limits.cpu_s is not None:
                argv.append(f"--cpu={limits.cpu_s}:{limits.cpu_s + CPU_KILL_AFTER}")
        if self.setpriv:
            argv.append(self.setpriv)
            if account is not None:
                argv += ["--reuid", str(account.uid), "--regid", str(account.gid), "--init-groups"]
            argv += ["--pdeathsig", "KILL", "--"]
        return argv

    def plan(self, task_id: str, attempt: int, spec: TaskSpec, extra_env: Mapping[str, str]) -> Plan:
        """Everything needed to start an attempt; PermissionError (policy) or OSError if it cannot."""
        account, why = self.account_for(spec.user)
        why = why or self.cwd_refusal(spec.cwd)
        if why:
            raise PermissionError(why)
        workdir = self.tasks_dir / attempt_name(task_id, attempt)
        cwd = workdir
        if spec.cwd and posixpath.isabs(spec.cwd):
            cwd = Path(posixpath.normpath(spec.cwd))
        elif spec.cwd:
            cwd = workdir / posixpath.normpath(spec.cwd)
        limits = self.limits(spec)
        env = scrubbed_environment(self.environ, self.config.env_allow, spec.env, extra_env, account)
        return Plan(account, env, workdir, cwd, limits, self.launcher(account, limits))

    def make_workdir(self, plan: Plan) -> None:
        """Create the attempt's directory (0700, owned by its account) and a relative cwd inside it."""
        try:                                # one mkdir in the usual case (it is on every task's path)
            plan.workdir.mkdir(mode=0o700)
        except FileNotFoundError:           # the first attempt here
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            plan.workdir.mkdir(mode=0o700)
        except FileExistsError:             # a leftover of a crash: start clean
            shutil.rmtree(plan.workdir, ignore_errors=True)
            plan.workdir.mkdir(mode=0o700)
        made = [plan.workdir]
        if plan.cwd != plan.workdir and plan.workdir in plan.cwd.parents:
            plan.cwd.mkdir(mode=0o700, parents=True, exist_ok=True)
            made += [p for p in plan.cwd.parents if plan.workdir in p.parents] + [plan.cwd]
        if plan.account is not None:
            for path in made:
                os.chown(path, plan.account.uid, plan.account.gid)
        if plan.cwd != plan.workdir and not plan.cwd.is_dir():
            raise FileNotFoundError(f"working directory {str(plan.cwd)!r} does not exist")

    def write_file(self, plan: Plan, name: str, text: str) -> Path:
        """A file in the attempt's directory, readable by its account only (a reduce's input)."""
        path = plan.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if plan.account is not None:
            os.chown(path, plan.account.uid, plan.account.gid)
        return path

    def remove_workdir(self, plan: Plan) -> None:
        try:
            os.rmdir(plan.workdir)          # the usual case: the task left nothing behind
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(plan.workdir, ignore_errors=True)
