"""The executor alone (no daemon): it starts commands, captures bounded output, reports exit codes,
kills a timed-out or cancelled attempt's whole process group, and says why a command cannot start."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess

import psutil
import pytest

from xchanged.protocol.events import OutputWritten, TaskExited, TaskStarted
from xchanged.protocol.messages import TaskSpec
from xchanged.runtime.executor import Executor, process_start_time

WAIT = 30.0        # seconds an event may take before the test fails


class Events:
    """The executor's `emit`: what it reports, in order, awaited one by one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, event) -> None:
        self.queue.put_nowait(event)

    async def next(self, kind: type):
        event = await asyncio.wait_for(self.queue.get(), WAIT)
        assert isinstance(event, kind), event
        return event


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 2 * WAIT))


def sh(script: str, **spec) -> TaskSpec:
    return TaskSpec(["sh", "-c", script], **spec)


def assert_gone(pid: int) -> None:
    """`pid` has ended (a zombie waiting for init to reap it counts as ended)."""
    try:
        proc = psutil.Process(pid)
        proc.wait(WAIT)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        assert proc.status() == psutil.STATUS_ZOMBIE, f"process {pid} still runs"


async def until(condition, limit: float = WAIT) -> None:
    """Poll a condition the command makes true (a file it writes); nothing signals it to us."""
    end = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


async def start(executor: Executor, events: Events, spec: TaskSpec, extra_env: dict | None = None) -> TaskStarted:
    executor.start("T-1", 1, spec, extra_env or {})
    started = await events.next(TaskStarted)
    assert (started.task_id, started.attempt) == ("T-1", 1) and started.pid > 0
    return started


def test_output_exit_code_and_environment_are_reported():
    async def scenario():
        events = Events()
        executor = Executor(events)
        await start(executor, events, sh('echo "$FROM_SPEC $FROM_DAEMON"; echo oops >&2; exit 3',
                                         env={"FROM_SPEC": "spec"}), {"FROM_DAEMON": "daemon"})
        exited = await events.next(TaskExited)
        assert (exited.outcome, exited.exit_code, exited.reason) == ("exited", 3, "exit code 3")
        assert (exited.stdout, exited.stderr) == (b"spec daemon\n", b"oops\n")
        assert executor.runs == {}
    run(scenario)


def test_success_and_death_by_signal():
    async def scenario():
        events = Events()
        executor = Executor(events)
        await start(executor, events, sh("true"))
        exited = await events.next(TaskExited)
        assert (exited.outcome, exited.exit_code, exited.reason) == ("exited", 0, "")
        await start(executor, events, sh("kill -KILL $$"))
        exited = await events.next(TaskExited)
        assert (exited.outcome, exited.exit_code, exited.reason) == ("exited", -9, "killed by signal 9")
    run(scenario)


def test_output_is_bounded_keeping_its_end():
    async def scenario():
        events = Events()
        executor = Executor(events, max_output=100)
        await start(executor, events, sh("head -c 5000 /dev/zero | tr '\\0' a; printf END; printf short >&2"))
        exited = await events.next(TaskExited)
        assert exited.stdout == b"[xchanged: 4903 earlier bytes dropped]\n" + b"a" * 97 + b"END"
        assert exited.stderr == b"short"
    run(scenario)


def test_timeout_kills_the_whole_process_group(tmp_path):
    async def scenario():
        events = Events()
        executor = Executor(events, kill_grace=5.0)
        pidfile = tmp_path / "child.pid"
        # the command starts a child of its own and waits for it: both must go
        started = await start(executor, events, sh(f"sleep 60 & echo $! > {pidfile}; wait", timeout=0.5))
        exited = await events.next(TaskExited)
        assert (exited.outcome, exited.exit_code) == ("timeout", None)
        assert exited.reason == "timed out after 0.5s"
        assert_gone(started.pid)
        assert_gone(int(pidfile.read_text()))
    run(scenario)


def test_cancel_stops_a_running_attempt_even_one_that_ignores_sigterm(tmp_path):
    async def scenario():
        events = Events()
        executor = Executor(events, kill_grace=0.2)
        ready = tmp_path / "ready"
        started = await start(executor, events, sh(f"trap '' TERM; touch {ready}; sleep 60"))
        await until(ready.exists)                     # SIGTERM is ignored from now on
        executor.kill("T-1", 1, "cancelled by its submitter")
        exited = await events.next(TaskExited)
        assert (exited.outcome, exited.exit_code, exited.reason) == ("cancelled", None, "cancelled by its submitter")
        assert_gone(started.pid)
        executor.kill("T-1", 1, "again")             # a finished attempt: nothing happens
        assert events.queue.empty()
    run(scenario)


def test_cancel_before_the_process_exists_still_stops_it():
    async def scenario():
        events = Events()
        executor = Executor(events, kill_grace=0.2)
        executor.start("T-1", 1, sh("sleep 60"), {})
        executor.kill("T-1", 1, "cancelled")          # its process is not started yet
        started = await events.next(TaskStarted)
        exited = await events.next(TaskExited)
        assert exited.outcome == "cancelled"
        assert_gone(started.pid)
    run(scenario)


def test_close_kills_what_still_runs():
    async def scenario():
        events = Events()
        executor = Executor(events)
        started = await start(executor, events, sh("sleep 60"))
        await executor.close()
        assert executor.runs == {}
        assert_gone(started.pid)
    run(scenario)


@pytest.mark.parametrize("argv, cwd, code, why", [
    (["/no/such/program"], None, 127, "no such file: '/no/such/program'"),
    (["no-such-command-xyz"], None, 127, "command 'no-such-command-xyz' not found on PATH"),
    (["true"], "/no/such/dir", 127, "working directory '/no/such/dir' does not exist"),
    (["./not-executable"], "TMP", 126, "not executable: './not-executable'"),
])
def test_a_command_that_cannot_start_is_an_error_with_its_reason(tmp_path, argv, cwd, code, why):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, stat.S_IRUSR | stat.S_IWUSR)

    async def scenario():
        events = Events()
        executor = Executor(events)
        executor.start("T-1", 1, TaskSpec(argv, cwd=str(tmp_path) if cwd == "TMP" else cwd), {})
        exited = await events.next(TaskExited)         # and no TaskStarted before it
        assert (exited.outcome, exited.exit_code) == ("error", code)
        assert exited.reason == f"could not start: {why}" and exited.stderr == why.encode()
        assert executor.runs == {}
    run(scenario)


async def live_output(events: Events) -> tuple[list[OutputWritten], TaskExited]:
    """The OutputWritten events up to the attempt's exit, and the exit."""
    chunks = []
    while True:
        event = await asyncio.wait_for(events.queue.get(), WAIT)
        if isinstance(event, TaskExited):
            return chunks, event
        assert isinstance(event, OutputWritten) and (event.task_id, event.attempt) == ("T-1", 1), event
        chunks.append(event)


def test_live_output_is_handed_over_as_it_is_written_before_the_exit(tmp_path):
    async def scenario():
        events = Events()
        executor = Executor(events, stream_interval=0.05)
        go = tmp_path / "go"
        await start(executor, events, sh(f"echo one; echo err >&2; while [ ! -e {go} ]; do sleep 0.01; done; echo two"))
        seen = {}
        while seen.get("stdout") != b"one\n" or seen.get("stderr") != b"err\n":   # before the command may go on
            event = await events.next(OutputWritten)
            seen[event.stream] = seen.get(event.stream, b"") + event.data
        go.touch()
        chunks, exited = await live_output(events)
        assert b"".join(c.data for c in chunks) == b"two\n" and exited.stdout == b"one\ntwo\n"
    run(scenario)


def test_live_output_is_coalesced_and_bounded_by_max_output():
    async def scenario():
        events = Events()
        executor = Executor(events, max_output=100, stream_interval=5.0)
        await start(executor, events, sh("for i in $(seq 1 50); do echo line-$i; done; head -c 5000 /dev/zero"))
        chunks, exited = await live_output(events)
        assert len(chunks) <= 2                      # one at once, the rest at the exit: not one per line
        data = b"".join(c.data for c in chunks)
        assert data.startswith(b"line-1\nline-2\n") and b"live output stops after 100 bytes" in data
        assert len(data) < 100 + 200 and exited.stdout.endswith(b"\0" * 50)
    run(scenario)


def test_without_a_stream_interval_nothing_is_streamed():
    async def scenario():
        events = Events()
        executor = Executor(events)
        await start(executor, events, sh("echo quiet"))
        exited = await events.next(TaskExited)
        assert exited.stdout == b"quiet\n"
    run(scenario)


def test_process_start_time_is_psutils_create_time_read_from_proc():
    child = subprocess.Popen(["sleep", "5"])
    try:
        for pid in (os.getpid(), child.pid):
            assert process_start_time(pid) == pytest.approx(psutil.Process(pid).create_time(), abs=0.011)
    finally:
        child.kill()
        child.wait()
    assert process_start_time(child.pid) == 0.0               # gone (and reaped)
