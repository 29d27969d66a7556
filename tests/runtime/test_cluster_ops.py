"""The daemon's side of the cluster view, on one real in-process daemon: a running task's output can
be read and followed while it is written, `tasks --cluster` lists this manager, a task nobody has is
`no_such_task`, and answers too large for the peer protocol are cut where they can be."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.runtime.inprocess import running_daemon
from xchanged.client import build_spec
from xchanged.protocol.task_ids import make_task_id, names
from xchanged.runtime.cluster_ops import MAX_ANSWER_BYTES, fit_answer
from xchanged.runtime.transport import ControlError


def test_a_running_tasks_output_is_read_and_followed_as_it_is_written(tmp_path):
    go = tmp_path / "go"
    spec = build_spec(["sh", "-c", f"echo one; while [ ! -e {go} ]; do sleep 0.01; done; echo two"])

    async def scenario():
        async with running_daemon(tmp_path, executor={"stream_interval": "50ms"}) as daemon:
            control = daemon.control
            [doc] = await control.handle("submit", {"specs": [spec]})
            assert names(doc["id"], daemon.id)                   # the id names this node as its manager
            poll = {"id": doc["id"], "follow": True, "offsets": [0, 0], "wait_s": 30}
            first = await control.handle("logs", poll)
            while first["stdout"] == "":                        # started, nothing written yet
                first = await control.handle("logs", dict(poll, attempt=first["attempt"]))
            assert first["stdout"] == "one\n" and not first["done"] and first["state"] == "running"
            so_far = await control.handle("logs", {"id": doc["id"]})    # without -f: what it wrote so far
            assert so_far["stdout"] == "one\n" and so_far["live"]
            go.touch()
            rest, offsets, attempt = "", first["offsets"], first["attempt"]
            while True:
                got = await control.handle("logs", dict(poll, offsets=offsets, attempt=attempt))
                rest += got["stdout"]
                offsets = got["offsets"]
                if got["done"]:
                    break
            assert rest == "two\n" and got["state"] == "succeeded"
            again = await control.handle("logs", dict(poll, offsets=offsets, attempt=attempt))
            assert again["done"] and again["stdout"] == ""       # a poll after the end returns at once
            with pytest.raises(ControlError, match="offsets"):
                await control.handle("logs", dict(poll, offsets="x"))
    asyncio.run(scenario())


def test_tasks_of_the_cluster_on_a_lone_node_and_a_task_nobody_has(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            control = daemon.control
            [doc] = await control.handle("submit", {"specs": [build_spec(["true"])]})
            listed = await control.handle("tasks", {"cluster": True, "limit": 10})
            assert [m["name"] for m in listed["managers"]] == ["solo"] and listed["managers"][0]["status"] == "ok"
            assert [(t["id"], t["manager"]) for t in listed["tasks"]] == [(doc["id"], "solo")]
            with pytest.raises(ControlError, match="limit"):
                await control.handle("tasks", {"cluster": True, "limit": "many"})
            other = make_task_id("N0123456789abcdef", bytes(10))
            for op in ("status", "logs", "wait", "cancel", "audit"):
                with pytest.raises(ControlError, match="no such task") as err:
                    await control.handle(op, {"id": other})
                assert err.value.code == "no_such_task"
                with pytest.raises(ControlError, match="no such task"):
                    await control.handle(op, {"id": other, "local": True})
            await control.handle("wait", {"id": doc["id"], "timeout_s": 30})     # awarded (and audited) by now
            records = await control.handle("audit", {"id": doc["id"]})
            assert records["node"] == "solo" and records["records"] and \
                all(r["task"] == doc["id"] for r in records["records"])
    asyncio.run(scenario())


def test_a_forwarded_request_keeps_what_the_client_asked_for(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            ops = daemon.control.cluster
            q = ops.query(7, "logs", {"id": "T-X", "part": "build[2]", "follow": True, "offsets": [5, 6],
                                      "attempt": 2, "wait_s": 1.5})
            assert (q.request_id, q.op, q.task_id, q.part, q.follow, q.offsets, q.attempt, q.wait_ms) == \
                (7, "logs", "T-X", "build[2]", True, [5, 6], 2, 1500)
            assert ops.query(8, "wait", {"id": "T-X", "timeout_s": 1000}).wait_ms == 60_000     # capped
            assert ops.query(9, "cancel", {"id": "T-X", "user": "alice"}).user == "alice"
            for bad in ({"id": "T-X", "attempt": "two"}, {"id": "T-X", "offsets": [1]}, {"id": ""}):
                with pytest.raises(ControlError, match="bad request"):
                    ops.query(10, "logs", bad)
    asyncio.run(scenario())


def test_answers_too_large_for_the_peer_protocol_are_cut_where_they_can_be():
    huge = "x" * MAX_ANSWER_BYTES
    logs = json.loads(fit_answer("logs", {"id": "T-1", "stdout": huge + "END", "stderr": "short"}))
    assert logs["stdout"].endswith("END") and "cut to its last" in logs["stdout"] and logs["stderr"] == "short"
    tasks = [{"id": f"T-{i}", "blob": "y" * 100_000} for i in range(400)]
    listed = json.loads(fit_answer("tasks", {"tasks": tasks, "total": 400, "truncated": False}))
    assert listed["truncated"] and listed["tasks"][-1]["id"] == "T-399" and len(listed["tasks"]) < 400
    with pytest.raises(ControlError, match="larger than"):
        fit_answer("status", {"blob": huge})
    assert len(fit_answer("status", {"id": "T-1"})) < 100
