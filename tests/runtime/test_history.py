"""History: finished tasks are pruned by age and by count, in batches, with their outputs; `tasks`
answers the newest few by index; the totals survive a restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.runtime.inprocess import config_file, running
from xchanged.client import build_spec
from xchanged.config import load_config
from xchanged.protocol.messages import TaskSpec
from xchanged.protocol.tasks import Task
from xchanged.runtime.daemon import Daemon
from xchanged.runtime.store import SCHEMA_VERSION, Store
from xchanged.runtime.transport import ControlError

DAY_MS = 86_400_000
SEED_KEYS = {"total_agents", "healthy_agents", "total_capacity", "current_load", "utilization", "queued_jobs",
             "assigned_jobs", "total_jobs_queued", "total_jobs_assigned", "total_jobs_failed", "total_jobs_retried"}
AGENT_KEYS = {"agent_id", "current_jobs", "max_jobs", "load_percent", "total_completed", "total_failed",
              "success_rate", "avg_time", "score", "is_healthy"}


def doc(n: int, state: str, submitted: int, finished: int | None = None) -> dict:
    task = Task(f"T-{n:016d}", TaskSpec(["true"]), submitted, n)
    out = task.to_doc()
    out.update(state=state, finished=finished)
    return out


def fill(store: Store, now_ms: int, old: int, new: int, unfinished: int = 0) -> None:
    """`old` tasks finished 10 days ago (with outputs), `new` finished an hour ago, `unfinished` queued
    20 days ago."""
    n = 0
    for _ in range(old):
        n += 1
        store.put_task(doc(n, "succeeded", now_ms - 11 * DAY_MS + n, now_ms - 10 * DAY_MS + n))
        store.put_output(f"T-{n:016d}", 1, b"out", b"")
    for _ in range(new):
        n += 1
        store.put_task(doc(n, "failed", now_ms - 2 * 3_600_000 + n, now_ms - 3_600_000 + n))
    for _ in range(unfinished):
        n += 1
        store.put_task(doc(n, "queued", now_ms - 20 * DAY_MS + n))
    store.commit()


def test_prune_by_age_deletes_old_finished_tasks_and_their_outputs_in_batches(tmp_path):
    store = Store(tmp_path / "s.db")
    try:
        now = int(time.time() * 1000)
        fill(store, now, old=450, new=5, unfinished=3)
        store.put_parts("T-0000000000000001", [{"key": "a/0", "state": "succeeded"}])
        store.commit()
        rounds = []
        while deleted := store.prune(now - 7 * DAY_MS, batch=200):
            rounds.append(deleted)
        assert rounds == [200, 200, 50]
        assert store.count_by_state() == {"failed": 5, "queued": 3}
        assert store.db.execute("SELECT count(*) FROM outputs").fetchone() == (0,)
        assert store.parts("T-0000000000000001") == []
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    finally:
        store.close()


def test_prune_by_count_keeps_the_newest_finished(tmp_path):
    store = Store(tmp_path / "s.db")
    try:
        now = int(time.time() * 1000)
        fill(store, now, old=30, new=5, unfinished=2)
        while store.prune(None, keep=10):
            pass
        kept = {d["id"] for d in store.list_tasks(limit=100)}
        assert store.count_by_state() == {"succeeded": 5, "failed": 5, "queued": 2}
        assert kept == {f"T-{n:016d}" for n in range(26, 38)}       # the newest 10 finished, the unfinished
    finally:
        store.close()


def test_list_tasks_answers_the_newest_by_index_in_submission_order(tmp_path):
    store = Store(tmp_path / "s.db")
    try:
        now = int(time.time() * 1000)
        fill(store, now, old=50, new=10, unfinished=2)
        newest = store.list_tasks(limit=3)
        assert [d["id"] for d in newest] == ["T-0000000000000058", "T-0000000000000059", "T-0000000000000060"]
        assert len(store.list_tasks(state="failed", limit=100)) == 10
        assert len(store.list_tasks(since_ms=now - 3 * 3_600_000, limit=100)) == 10
        plan = " ".join(str(r) for r in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM tasks ORDER BY submitted DESC, rowid DESC LIMIT 3"))
        assert "tasks_submitted" in plan
    finally:
        store.close()


def test_the_daemon_prunes_in_the_background_and_tasks_is_bounded(tmp_path):
    path = config_file(tmp_path, node={"history": "7d"})
    store = Store(tmp_path / "state" / "xchanged.db")
    fill(store, int(time.time() * 1000), old=500, new=150)
    store.close()

    async def scenario():
        async with running(Daemon(load_config(path))) as daemon:
            while daemon.ops.pruned < 500:
                await asyncio.sleep(0.02)           # the pruner's worker thread: nothing to wait on
            docs = await daemon.control.handle("tasks", {})
            assert len(docs) == 100 and docs[-1]["id"] == "T-0000000000000650"
            assert len(await daemon.control.handle("tasks", {"limit": 1000})) == 150
            [mine] = await daemon.control.handle("submit", {"specs": [build_spec(["true"])]})
            await daemon.control.handle("wait", {"id": mine["id"], "timeout_s": 30})
            assert [d["id"] for d in await daemon.control.handle("tasks", {"limit": 1})] == [mine["id"]]
            since = int(time.time() * 1000) - 60_000
            assert [d["id"] for d in await daemon.control.handle("tasks", {"since_ms": since})] == [mine["id"]]
            with pytest.raises(ControlError):
                await daemon.control.handle("tasks", {"limit": 0})
            with pytest.raises(ControlError):
                await daemon.control.handle("tasks", {"since_ms": "yesterday"})
            stats = await daemon.control.handle("stats", {})
            assert stats["history_pruned"] == 500
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_stats_carry_the_seeds_keys_and_the_totals_survive_a_restart(tmp_path):
    path = config_file(tmp_path, node={"slots": 2})

    async def scenario():
        async with running(Daemon(load_config(path))) as daemon:
            docs = await daemon.control.handle("submit", {"specs": [build_spec(["true"]) for _ in range(3)]
                                                          + [build_spec(["false"], retries=1)]})
            for d in docs:
                await daemon.control.handle("wait", {"id": d["id"], "timeout_s": 30})
            before = await daemon.control.handle("stats", {})
        async with running(Daemon(load_config(path))) as daemon:
            after = await daemon.control.handle("stats", {})
        return before, after
    before, after = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert SEED_KEYS <= set(before) and all(AGENT_KEYS <= set(a) for a in before["agents"])
    assert (before["total_jobs_queued"], before["total_jobs_failed"], before["total_jobs_retried"]) == (4, 1, 1)
    assert before["total_jobs_assigned"] == 5
    me = before["agents"][0]
    assert (me["total_completed"], me["total_failed"]) == (5, 2) and me["avg_time"] is not None
    for key in ("total_jobs_queued", "total_jobs_assigned", "total_jobs_failed", "total_jobs_retried"):
        assert after[key] == before[key], key
    assert (after["agents"][0]["total_completed"], after["agents"][0]["total_failed"]) == (5, 2)
    assert before["fairness_index"] == 1.0 and before["load_variance"] == 0.0
    latency = before["queue_latency"]
    assert latency["count"] == 5 and latency["p50"] is not None and latency["p99"] >= latency["p50"]
