"""The executor with a task policy (no daemon): limits, the CPU-time limit's outcome, the memory watch,
the policy checked again at start, and the attempt's directory."""

from __future__ import annotations

import asyncio
import sys

from tests.runtime.test_executor import Events, run
from xchanged.config import config_from_dict
from xchanged.protocol.events import TaskExited, TaskStarted
from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.runtime.confine import TaskPolicy
from xchanged.runtime.executor import Executor


def executor(tmp_path, **keys) -> tuple[Executor, Events]:
    config = config_from_dict({"node": {"name": "n"}, "executor": keys}, check_files=False).executor
    events = Events()
    return Executor(events, policy=TaskPolicy(config, tmp_path), kill_grace=0.5), events


def test_the_cpu_time_limit_ends_a_task_with_reason_cpu_limit(tmp_path):
    async def scenario():
        ex, events = executor(tmp_path, max_cpu_time="1s")
        ex.start("T-1", 1, TaskSpec([sys.executable, "-c", "while True: pass"], timeout=60), {})
        await events.next(TaskStarted)
        done = await events.next(TaskExited)
        assert done.outcome == "cpu_limit" and "CPU time limit" in done.reason, done
        await ex.close()
    run(scenario)


def test_the_memory_watch_kills_a_task_over_its_limit(tmp_path):
    hold = "x = bytearray(160 << 20)\nimport time\ntime.sleep(60)\n"
    async def scenario():
        ex, events = executor(tmp_path)
        ex.start("T-2", 1, TaskSpec([sys.executable, "-c", hold], requirements=Requirements(mem=64 << 20)), {})
        await events.next(TaskStarted)
        done = await events.next(TaskExited)
        assert done.outcome == "oom" and done.peak_mem > 64 << 20 and "memory limit" in done.reason, done
        await ex.close()
    run(scenario)


def test_the_policy_is_checked_again_at_start_and_the_directory_is_the_attempts(tmp_path):
    async def scenario():
        ex, events = executor(tmp_path, run_as="submitter")
        ex.start("T-3", 1, TaskSpec(["true"], user="no-such-user-xc"), {})
        refused = await events.next(TaskExited)
        assert refused.outcome == "error" and refused.exit_code == 126 and "does not exist" in refused.reason
        ex2, events2 = executor(tmp_path)
        ex2.start("T-4", 2, TaskSpec(["sh", "-c", "pwd; ls -a | wc -l"]), {})
        await events2.next(TaskStarted)
        done = await events2.next(TaskExited)
        assert done.outcome == "exited" and done.exit_code == 0
        assert done.stdout.split()[0] == str(tmp_path / "tasks" / "T-4.2").encode() and done.stdout.split()[1] == b"2"
        await asyncio.gather(ex.close(), ex2.close())       # the directory goes after the exit is told
        assert not (tmp_path / "tasks" / "T-4.2").exists()
    run(scenario)


def test_a_burst_of_exits_leaves_no_attempt_directory(tmp_path):
    async def scenario():
        ex, events = executor(tmp_path)
        for i in range(6):
            ex.start(f"T-{i}", 1, TaskSpec(["sh", "-c", "echo x > left-behind"]), {})
        ended = []
        while len(ended) < 6:
            event = await asyncio.wait_for(events.queue.get(), 30)
            if isinstance(event, TaskExited):
                ended.append(event)
        assert all(e.outcome == "exited" and e.exit_code == 0 for e in ended), ended
        await ex.close()                               # removals still queued are done by now
        assert list((tmp_path / "tasks").iterdir()) == []
    run(scenario)
