"""Run awarded commands as subprocesses: own process group, timeout, kill, capped output capture.

Each attempt runs in a new session (process group) so a timeout or a cancel kills the command and
everything it started: SIGTERM to the group, SIGKILL after `kill_grace`. Output is captured per
stream up to `max_output` bytes, keeping the tail (the end of a log says why it failed).

Live output (`stream_interval` > 0): what the command writes is also handed to the core as it comes
(`OutputWritten`, which sends it to the task's manager for `logs -f`), coalesced into at most one
event per stream every `stream_interval`, and at most `max_output` bytes per stream (then one note:
the rest comes with the result, as its tail). What is pending is handed over before the exit is.

Orphans: because each attempt has its own session, a daemon killed with SIGKILL would leave its
commands running. On Linux each command is therefore started through util-linux's
`setpriv --pdeathsig KILL` (which sets PR_SET_PDEATHSIG, kept across its exec of the command), so it
dies with the daemon. Not a Python `preexec_fn`: that forces a slow fork of the whole daemon (about
5 ms per task here) and is unsafe in a process with threads (the metrics server, NVML readings).
What the command started itself (in its process group) is killed at the next start of the daemon
(`kill_orphans`: by the pid and start time recorded with the attempt, and by the XCHANGED_NODE
variable every attempt's processes inherit). The restarted contractor then reports
such attempts to their managers as lost.

Confinement (with a `policy`, as the daemon always gives: confine.py): the account, environment,
directory and rlimits of each attempt come from the policy's plan, and, where the daemon's cgroup
is delegated, a cgroup of its own (cgroups.py). What the attempt uses is sampled every WATCH_INTERVAL
(taskwatch.py, or its cgroup): its peak memory and CPU seconds go into TaskExited. How it ended:
- `oom` when it went over its memory limit: killed by the kernel in its cgroup (memory.events), or
  by us when its process group's RSS was seen above the limit, or when it failed under its data
  rlimit saying so (MemoryError, ENOMEM, bad_alloc: OOM_MARKERS in the end of its stderr);
- `cpu_limit` when RLIMIT_CPU ended it (SIGXCPU, or the SIGKILL after it);
- `error` when the policy or the system refused to start it (code 126 policy, 127 not found).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import psutil

from ..protocol.events import OutputWritten, TaskExited, TaskStarted
from ..protocol.messages import Outcome, TaskSpec
from . import taskwatch
from .cgroups import CgroupTree, TaskCgroup
from .confine import Plan, TaskPolicy

WATCH_INTERVAL = 0.25       # seconds between samples of running attempts with a memory limit
WATCH_INTERVAL_IDLE = 1.0   # ... when none has one (peak memory and CPU seconds only)
OOM_MARKERS = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc", b"out of memory",
               b"Out of memory")


def _death_signal_launcher() -> list[str]:
    """argv prefix that makes the command die with the daemon, where the system has one."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


DIE_WITH_DAEMON = _death_signal_launcher()

#: Variables of the daemon's environment a task never inherits: systemd's notification socket and
#: watchdog (a task must not be able to speak for the daemon). Kept minimal on purpose: scrubbing a
#: task's environment to an allow-list is the task policy's job (confine.scrubbed_environment, which
#: drops these too); this is for what runs without one (an executor with no policy, autoscale hooks).
DAEMON_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def task_environment(daemon_env: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment less what belongs to the daemon alone (DAEMON_ONLY_ENV, WATCHDOG_*)."""
    return {k: v for k, v in daemon_env.items() if k not in DAEMON_ONLY_ENV and not k.startswith("WATCHDOG_")}


@functools.cache
def _boot_time() -> float:
    return psutil.boot_time()          # read once, as psutil itself does for create_time


def process_start_time(pid: int) -> float:
    """When `pid` started, in seconds since the epoch, as psutil's `create_time` gives it (boot time
    plus the start ticks of /proc/PID/stat), read directly: a psutil.Process per task cost ~0.2 ms of
    the loop on every spawn. 0.0 if the process is gone."""
    ticks = taskwatch.start_ticks(pid)
    if ticks is not None:
        return _boot_time() + taskwatch.ticks_to_seconds(ticks)
    try:                                          # not Linux, or no /proc: psutil knows how
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def kill_orphans(node_id: str, attempts: list[dict]) -> dict[tuple[str, int], str]:
    """Kill the processes a previous run of this daemon left behind: each recorded running attempt's
    process group (if its pid still names the same process: same start time), then any process whose
    environment carries XCHANGED_NODE=node_id. Returns (task_id, attempt) -> what was found."""
    found: dict[tuple[str, int], str] = {}
    for doc in attempts:
        pid = doc.get("pid")
        if doc.get("state") != "running" or not pid:
            continue
        start = process_start_time(pid)
        if start and abs(start - (doc.get("pid_start") or 0.0)) < 0.05:
            _signal_group(pid, signal.SIGKILL)
            found[(doc["task_id"], doc["attempt"])] = f"orphaned process {pid} killed"
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("XCHANGED_NODE") == node_id:
            key = (env.get("XCHANGED_TASK_ID", ""), int(env.get("XCHANGED_ATTEMPT", "0") or 0))
            try:
                proc.kill()
            except psutil.Error:
                continue
            found.setdefault(key, f"orphaned process {proc.pid} killed")
    return found


class TailBuffer:
    """Keeps the last `limit` bytes written to it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def write(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def value(self) -> bytes:
        if self.dropped:
            return f"[xchanged: {self.dropped} earlier bytes dropped]\n".encode() + bytes(self.data)
        return bytes(self.data)


class LiveStream:
    """Coalesces an attempt's output into `OutputWritten` events: at most one per stream every
    `interval` seconds, at most `limit` bytes per stream in all (then a note)."""

    def __init__(self, emit: Callable[[object], None], task_id: str, attempt: int, interval: float, limit: int):
        self.emit, self.task_id, self.attempt = emit, task_id, attempt
        self.interval, self.limit = interval, limit
        self.pending = {"stdout": bytearray(), "stderr": bytearray()}
        self.taken = {"stdout": 0, "stderr": 0}          # bytes accepted for streaming so far
        self.handle: asyncio.TimerHandle | None = None
        self.last_flush = float("-inf")

    def write(self, stream: str, chunk: bytes) -> None:
        room = self.limit - self.taken[stream]
        if room <= 0:
            return
        if len(chunk) >= room:
            chunk = chunk[:room] + (f"\n[xchanged: live output stops after {self.limit} bytes (max_output); "
                                    "the end comes with the result: xchanged logs]\n").encode()
        self.taken[stream] += min(len(chunk), room)
        self.pending[stream] += chunk
        if self.handle is None:
            loop = asyncio.get_running_loop()
            self.handle = loop.call_later(max(0.0, self.last_flush + self.interval - loop.time()), self.flush)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.last_flush = asyncio.get_running_loop().time()
        for stream, data in self.pending.items():
            if data:
                self.emit(OutputWritten(self.task_id, self.attempt, stream, bytes(data)))
                data.clear()


@dataclass
class _Run:
    task: asyncio.Task
    process: asyncio.subprocess.Process | None = None
    kill_reason: str = ""
    outcome: str = ""
    mem_limit: int | None = None
    cgroup: TaskCgroup | None = None
    peak_mem: int = 0
    cpu_s: float | None = None


@dataclass
class Executor:
    emit: Callable[[object], None]      # feeds TaskStarted / TaskExited back to the daemon loop
    max_output: int = 1 << 20
    kill_grace: float = 2.0
    stream_interval: float = 0.0        # > 0: hand output to the core as it is written (LiveStream)
    scratch: Path | None = None         # where a reduce's input file is written without a policy (default:
                                        # the temp dir); with one, in the attempt's own directory
    policy: TaskPolicy | None = None    # None: no confinement (the command runs as the daemon, in its env)
    cgroups: CgroupTree | None = None
    runs: dict[tuple[str, int], _Run] = field(default_factory=dict)
    _watcher: asyncio.Task | None = None
    _doomed: collections.deque = field(default_factory=collections.deque)   # directories to remove
    _remover: asyncio.Future | None = None                                   # the worker job removing them

    def start(self, task_id: str, attempt: int, spec: TaskSpec, extra_env: dict[str, str]) -> None:
        key = (task_id, attempt)
        if key in self.runs:
            return
        run = _Run(asyncio.get_running_loop().create_task(self._run(key, spec, extra_env)))
        self.runs[key] = run
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Sample the running attempts (memory, CPU) while there are any; kill one over its memory limit."""
        while self.runs:
            limited = any(r.mem_limit for r in self.runs.values())
            await asyncio.sleep(WATCH_INTERVAL if limited else WATCH_INTERVAL_IDLE)
            self.sample()

    def sample(self) -> None:
        """One sample of every running attempt (the watcher calls it; tests may too)."""
        running = {r.process.pid: r for r in self.runs.values() if r.process is not None and not r.outcome}
        use = taskwatch.sample(set(running))
        for pid, run in running.items():
            found = use.get(pid)
            rss = found.rss if found else 0
            if run.cgroup is not None:
                rss = max(rss, run.cgroup.sample())
            if found is not None:
                run.cpu_s = found.cpu_s
            run.peak_mem = max(run.peak_mem, rss)
            if run.mem_limit and rss > run.mem_limit:
                run.outcome = Outcome.OOM
                run.kill_reason = f"memory limit exceeded: {rss >> 20} MiB in use, limit {run.mem_limit >> 20} MiB"
                asyncio.get_running_loop().create_task(self._terminate(run.process, grace=0.0))

    def kill(self, task_id: str, attempt: int, reason: str) -> None:
        run = self.runs.get((task_id, attempt))
        if run is None or run.outcome:
            return
        run.outcome, run.kill_reason = "cancelled", reason
        if run.process is not None:
            asyncio.get_running_loop().create_task(self._terminate(run.process))

    async def _terminate(self, proc: asyncio.subprocess.Process, grace: float | None = None) -> None:
        grace = self.kill_grace if grace is None else grace
        if grace > 0:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                pass
        _signal_group(proc.pid, signal.SIGKILL)   # also reaps stragglers that ignored SIGTERM

    async def _run(self, key: tuple[str, int], spec: TaskSpec, extra_env: dict[str, str]) -> None:
        run = self.runs[key]
        started = time.monotonic()
        inputs = None
        if self.policy is None:             # confined, a reduce's input goes in its own directory (_exec)
            inputs = self._write_parts_input(key, spec)
            if inputs is not None:
                extra_env = dict(extra_env, XCHANGED_PARTS=str(inputs))
        try:
            await self._exec(key, run, spec, extra_env, started)
        finally:
            if inputs is not None:
                inputs.unlink(missing_ok=True)

    def _write_parts_input(self, key: tuple[str, int], spec: TaskSpec) -> Path | None:
        """A reduce's input: its composite's part results as JSON lines, in a file of its own."""
        if spec.parts_input is None:
            return None
        directory = self.scratch or Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{key[0]}-{key[1]}") + ".parts.jsonl"
        path = directory / name
        path.write_text(spec.parts_input)
        return path

    async def _exec(self, key: tuple[str, int], run: _Run, spec: TaskSpec, extra_env: dict[str, str],
                    started: float) -> None:
        task_id, attempt = key
        plan: Plan | None = None
        try:
            if self.policy is None:
                env = {**task_environment({**os.environ, **spec.env}), **extra_env}  # a spec cannot set them either
                cwd, launcher = spec.cwd, list(DIE_WITH_DAEMON)
                if cwd and not os.path.isdir(cwd):
                    raise FileNotFoundError(f"working directory {cwd!r} does not exist")
            else:
                plan = self.policy.plan(task_id, attempt, spec, extra_env)
                self.policy.make_workdir(plan)
                env, cwd, launcher = plan.env, str(plan.cwd), plan.launcher
                if spec.parts_input is not None:
                    env["XCHANGED_PARTS"] = str(self.policy.write_file(plan, "parts.jsonl", spec.parts_input))
                run.mem_limit = plan.limits.mem
                if self.cgroups is not None:
                    run.cgroup = self.cgroups.create(task_id, attempt, plan.limits.mem, plan.limits.cpus)
                    launcher = run.cgroup.join_prefix() + launcher
            # checked here because the launcher, not us, would otherwise be the one failing to exec it
            command = spec.argv[0]
            if "/" not in command and not shutil.which(command, path=env.get("PATH")):
                raise FileNotFoundError(f"command {command!r} not found on PATH")
            if "/" in command and not os.path.isfile(os.path.join(cwd or "", command)):
                raise FileNotFoundError(f"no such file: {command!r}")
            if "/" in command and not os.access(os.path.join(cwd or "", command), os.X_OK):
                raise PermissionError(f"not executable: {command!r}")
            proc = await asyncio.create_subprocess_exec(
                *launcher, *spec.argv, cwd=cwd or None, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except (OSError, ValueError) as exc:
            self.runs.pop(key, None)
            self._clean_up(run)
            if plan is not None and self.policy is not None:
                self.policy.remove_workdir(plan)
            self.emit(TaskExited(task_id, attempt, "error", 127 if isinstance(exc, FileNotFoundError) else 126,
                                 0, b"", str(exc).encode(), reason=f"could not start: {exc}"))
            return
        run.process = proc
        self.emit(TaskStarted(task_id, attempt, proc.pid, process_start_time(proc.pid)))
        if run.outcome:                     # cancelled while starting
            asyncio.get_running_loop().create_task(self._terminate(proc))
        out, err = TailBuffer(self.max_output), TailBuffer(self.max_output)
        live = LiveStream(self.emit, task_id, attempt, self.stream_interval, self.max_output) \
            if self.stream_interval > 0 else None
        readers = asyncio.gather(_pump(proc.stdout, out, live, "stdout"), _pump(proc.stderr, err, live, "stderr"))
        try:
            try:
                await asyncio.wait_for(proc.wait(), spec.timeout)
            except asyncio.TimeoutError:
                run.outcome = "timeout"
                run.kill_reason = f"timed out after {spec.timeout:g}s"
                await self._terminate(proc)
                await proc.wait()
            try:
                await asyncio.wait_for(readers, self.kill_grace)   # a grandchild may hold the pipes open
            except asyncio.TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
        finally:
            if live is not None and live.handle is not None:   # cancelled (the daemon stops): no late flush
                live.handle.cancel()
                live.handle = None
        runtime_ms = int((time.monotonic() - started) * 1000)
        if live is not None:
            live.flush()                     # the last output before the exit
        self.runs.pop(key, None)
        oom_killed = self._clean_up(run)
        stderr = err.value()
        peak, cpu = run.peak_mem or None, run.cpu_s
        code = proc.returncode
        if run.outcome in ("timeout", "cancelled", Outcome.OOM):
            self.emit(TaskExited(task_id, attempt, run.outcome, None, runtime_ms, out.value(), stderr,
                                 reason=run.kill_reason, peak_mem=peak, cpu_s=cpu))
        elif oom_killed or (code and run.mem_limit and any(m in stderr[-4096:] for m in OOM_MARKERS)):
            limit = f" of {run.mem_limit >> 20} MiB" if run.mem_limit else ""
            why = "killed by the kernel" if oom_killed else "failed to allocate"
            self.emit(TaskExited(task_id, attempt, Outcome.OOM, code, runtime_ms, out.value(), stderr,
                                 reason=f"memory limit{limit} exceeded ({why})", peak_mem=peak, cpu_s=cpu))
        elif code in (-signal.SIGXCPU, -signal.SIGKILL) and plan is not None and plan.limits.cpu_s is not None \
                and (code == -signal.SIGXCPU or (cpu or 0) >= plan.limits.cpu_s):
            self.emit(TaskExited(task_id, attempt, Outcome.CPU_LIMIT, code, runtime_ms, out.value(), stderr,
                                 reason=f"CPU time limit of {plan.limits.cpu_s}s exceeded", peak_mem=peak,
                                 cpu_s=cpu))
        else:
            reason = f"killed by signal {-code}" if code < 0 else ("" if code == 0 else f"exit code {code}")
            self.emit(TaskExited(task_id, attempt, "exited", code, runtime_ms, out.value(), stderr,
                                 reason=reason, peak_mem=peak, cpu_s=cpu))
        self._remove_workdir_later(plan)

    def _clean_up(self, run: _Run) -> bool:
        """Read and remove the attempt's cgroup; True if the kernel OOM-killed it."""
        oom = False
        if run.cgroup is not None:
            usage, gone = run.cgroup.finish()
            if not gone:
                _remove_later(run.cgroup)
            run.peak_mem = max(run.peak_mem, usage.peak_mem or 0)
            run.cpu_s = usage.cpu_s if usage.cpu_s is not None else run.cpu_s
            oom = usage.oom_killed
            run.cgroup = None
        return oom

    def _remove_workdir_later(self, plan: Plan | None) -> None:
        """The attempt's directory goes off the loop, after its exit is told: an rmdir waits for the
        file system's journal behind any fsync in progress (measured ~1 ms a task, blocking the loop).
        One worker job drains the queue, so a burst of exits costs one hand-off to a thread, not one
        each (that cost about as much as the rmdir)."""
        if plan is None or self.policy is None:
            return
        self._doomed.append(plan)
        if self._remover is None:
            self._start_remover()

    def _start_remover(self, _done: object = None) -> None:
        """A worker job drains the queue; when it ends with more queued (put there as it finished),
        another starts, so no directory waits for the next exit."""
        self._remover = None
        if self._doomed:
            self._remover = asyncio.get_running_loop().run_in_executor(None, self._remove_doomed)
            self._remover.add_done_callback(self._start_remover)

    def _remove_doomed(self) -> None:
        """(Worker thread.) Remove the queued directories."""
        assert self.policy is not None                   # directories are queued only with a policy
        while self._doomed:
            self.policy.remove_workdir(self._doomed.popleft())

    async def close(self) -> None:
        """Kill every attempt's process group and let each run end as a killed process does (so its
        pipes are drained and closed); a run still not over after `kill_grace` (+1 s) is cancelled."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        runs = list(self.runs.values())
        for run in runs:
            if not run.outcome:
                run.outcome, run.kill_reason = "cancelled", "the daemon stopped"
            if run.process is not None:
                _signal_group(run.process.pid, signal.SIGKILL)
        if runs:
            _, late = await asyncio.wait([r.task for r in runs], timeout=self.kill_grace + 1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self.runs.clear()
        while self._remover is not None:                 # each job, ending, starts the next while any are queued
            await asyncio.gather(self._remover, return_exceptions=True)


def _remove_later(group: TaskCgroup, tries: int = 5) -> None:
    """Remove a task cgroup once its killed processes are gone (a few tries, a second apart)."""
    def again() -> None:
        if not group.remove() and tries > 1:
            _remove_later(group, tries - 1)
    asyncio.get_running_loop().call_later(1.0, again)


async def _pump(stream: asyncio.StreamReader | None, sink: TailBuffer, live: LiveStream | None = None,
                name: str = "") -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink.write(chunk)
        if live is not None:
            live.write(name, chunk)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
