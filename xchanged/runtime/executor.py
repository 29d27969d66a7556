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
"""

from __future__ import annotations

import asyncio
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
from ..protocol.messages import TaskSpec


def _death_signal_launcher() -> list[str]:
    """argv prefix that makes the command die with the daemon, where the system has one."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


DIE_WITH_DAEMON = _death_signal_launcher()

#: Variables of the daemon's environment a task never inherits: systemd's notification socket and
#: watchdog (a task must not be able to speak for the daemon). Kept minimal on purpose: scrubbing a
#: task's environment to an allow-list is the security policy's job (issue 16), not this list's.
DAEMON_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def task_environment(daemon_env: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment less what belongs to the daemon alone (DAEMON_ONLY_ENV, WATCHDOG_*)."""
    return {k: v for k, v in daemon_env.items() if k not in DAEMON_ONLY_ENV and not k.startswith("WATCHDOG_")}


def process_start_time(pid: int) -> float:
    try:
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


@dataclass
class Executor:
    emit: Callable[[object], None]      # feeds TaskStarted / TaskExited back to the daemon loop
    max_output: int = 1 << 20
    kill_grace: float = 2.0
    stream_interval: float = 0.0        # > 0: hand output to the core as it is written (LiveStream)
    scratch: Path | None = None         # where a reduce's input file is written (default: the temp dir)
    runs: dict[tuple[str, int], _Run] = field(default_factory=dict)

    def start(self, task_id: str, attempt: int, spec: TaskSpec, extra_env: dict[str, str]) -> None:
        key = (task_id, attempt)
        if key in self.runs:
            return
        run = _Run(asyncio.get_running_loop().create_task(self._run(key, spec, extra_env)))
        self.runs[key] = run

    def kill(self, task_id: str, attempt: int, reason: str) -> None:
        run = self.runs.get((task_id, attempt))
        if run is None or run.outcome:
            return
        run.outcome, run.kill_reason = "cancelled", reason
        if run.process is not None:
            asyncio.get_running_loop().create_task(self._terminate(run.process))

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.kill_grace)
        except asyncio.TimeoutError:
            pass
        _signal_group(proc.pid, signal.SIGKILL)   # also reaps stragglers that ignored SIGTERM

    async def _run(self, key: tuple[str, int], spec: TaskSpec, extra_env: dict[str, str]) -> None:
        run = self.runs[key]
        env = {**task_environment({**os.environ, **spec.env}), **extra_env}   # a spec cannot set them either
        started = time.monotonic()
        inputs = self._write_parts_input(key, spec)
        if inputs is not None:
            env["XCHANGED_PARTS"] = str(inputs)
        try:
            await self._exec(key, run, spec, env, started)
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

    async def _exec(self, key: tuple[str, int], run: _Run, spec: TaskSpec, env: dict[str, str],
                    started: float) -> None:
        task_id, attempt = key
        try:
            if spec.cwd and not os.path.isdir(spec.cwd):
                raise FileNotFoundError(f"working directory {spec.cwd!r} does not exist")
            # checked here because the launcher, not us, would otherwise be the one failing to exec it
            command = spec.argv[0]
            if "/" not in command and not shutil.which(command, path=env.get("PATH")):
                raise FileNotFoundError(f"command {command!r} not found on PATH")
            if "/" in command and not os.path.isfile(os.path.join(spec.cwd or "", command)):
                raise FileNotFoundError(f"no such file: {command!r}")
            if "/" in command and not os.access(os.path.join(spec.cwd or "", command), os.X_OK):
                raise PermissionError(f"not executable: {command!r}")
            proc = await asyncio.create_subprocess_exec(
                *DIE_WITH_DAEMON, *spec.argv, cwd=spec.cwd or None, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except (OSError, ValueError) as exc:
            self.runs.pop(key, None)
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
        if run.outcome in ("timeout", "cancelled"):
            self.emit(TaskExited(task_id, attempt, run.outcome, None, runtime_ms, out.value(), err.value(),
                                 reason=run.kill_reason))
        else:
            code = proc.returncode
            reason = f"killed by signal {-code}" if code < 0 else ("" if code == 0 else f"exit code {code}")
            self.emit(TaskExited(task_id, attempt, "exited", code, runtime_ms, out.value(), err.value(),
                                 reason=reason))

    async def close(self) -> None:
        """Kill every attempt's process group and let each run end as a killed process does (so its
        pipes are drained and closed); a run still not over after `kill_grace` (+1 s) is cancelled."""
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
