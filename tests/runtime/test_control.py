"""Control operations of a real in-process daemon: a wait that times out or is cancelled leaves no
waiter behind; one that sees its task end gets the final document."""

from __future__ import annotations

import asyncio

import pytest

from tests.runtime.inprocess import running_daemon
from xchanged.client import build_spec
from xchanged.runtime.transport import ControlError

NOWHERE = build_spec(["true"], labels={"rack": "none-has-it"})      # stays queued: no node carries the label


def test_waits_that_time_out_leave_no_waiters(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            control = daemon.control
            [doc] = await control.handle("submit", {"specs": [NOWHERE]})
            for _ in range(20):                       # what a long `submit --wait` does every second
                got = await control.handle("wait", {"id": doc["id"], "timeout_s": 0.01})
                assert got["state"] == "queued"
            assert control.waiters == {}
    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_no_waiter(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            control = daemon.control
            [doc] = await control.handle("submit", {"specs": [NOWHERE]})
            waiting = asyncio.create_task(control.handle("wait", {"id": doc["id"], "timeout_s": 60}))
            while doc["id"] not in control.waiters:   # let the op park its future (no time passes)
                await asyncio.sleep(0)
            waiting.cancel()                           # its client went away
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert control.waiters == {}
    asyncio.run(scenario())


def test_wait_returns_the_final_document_when_the_task_ends(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            control = daemon.control
            [doc] = await control.handle("submit", {"specs": [NOWHERE]})
            waiting = asyncio.create_task(control.handle("wait", {"id": doc["id"], "timeout_s": 60}))
            while doc["id"] not in control.waiters:
                await asyncio.sleep(0)
            cancelled = await control.handle("cancel", {"id": doc["id"]})
            final = await waiting
            assert cancelled["state"] == final["state"] == "cancelled"
            assert control.waiters == {} and control.requests == {}
    asyncio.run(scenario())


def test_unknown_task_and_unknown_operation_are_control_errors(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            with pytest.raises(ControlError, match="no such task: T-NOPE"):
                await daemon.control.handle("wait", {"id": "T-NOPE"})
            with pytest.raises(ControlError, match="unknown operation 'frob'"):
                await daemon.control.handle("frob", {})
            with pytest.raises(ControlError, match="non-empty list 'specs'"):
                await daemon.control.handle("submit", {"specs": []})
            pong = await daemon.control.handle("ping", {})
            assert pong["name"] == "solo" and pong["id"] == daemon.id
    asyncio.run(scenario())


def test_wait_all_answers_when_the_last_task_ends_and_leaves_no_waiter(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            control = daemon.control
            docs = await control.handle("submit", {"specs": [build_spec(["true"]), build_spec(["sleep", "0.3"])]})
            ended = await control.handle("wait_all", {"ids": [d["id"] for d in docs], "timeout_s": 30})
            assert [d["state"] for d in ended] == ["succeeded", "succeeded"]
            [stuck] = await control.handle("submit", {"specs": [NOWHERE]})
            [still] = await control.handle("wait_all", {"ids": [stuck["id"]], "timeout_s": 0.05})
            assert still["state"] == "queued" and control.waiters == {}
            with pytest.raises(ControlError):
                await control.handle("wait_all", {"ids": "T-1"})
    asyncio.run(scenario())


def test_a_submit_is_answered_only_once_on_disk_and_the_loop_serves_meanwhile(tmp_path):
    """The submit's fsync runs in a worker thread: held there, the reply waits, other requests do not."""
    import threading

    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            store, release, entered = daemon.store, threading.Event(), threading.Event()
            real_sync = store.sync

            def slow_sync(now=None):
                entered.set()
                release.wait(30)
                real_sync(now)
            store.sync = slow_sync
            submit = asyncio.create_task(daemon.control.handle("submit", {"specs": [NOWHERE]}))
            assert await asyncio.to_thread(entered.wait, 30)           # the fsync began (a thread's event)
            assert not submit.done()                                  # not on disk yet: no answer
            assert store.unsynced                                     # committed (written), not synced
            [listed] = await daemon.control.handle("tasks", {})       # the loop goes on meanwhile
            assert listed["state"] == "queued" and not submit.done()
            release.set()
            [doc] = await submit
            assert doc["id"] == listed["id"]
            store.sync = real_sync
    asyncio.run(scenario())


def test_a_wait_of_0_s_answers_at_once_and_a_client_out_of_time_asks_for_that(tmp_path):
    """timeout_s 0 means "do not wait" (absent means the daemon's 30 s): the op answers without
    parking (no time passes: a few turns of the loop), and Client.wait / wait_all that ran out of
    time ask for 0, so they never block past their timeout."""
    from xchanged.client import Client

    asked = []

    class Recording(Client):
        def call(self, op, timeout=None, **args):
            if op in ("wait", "wait_all"):
                asked.append((op, args["timeout_s"]))
            return super().call(op, timeout=timeout, **args)

    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            [doc] = await daemon.control.handle("submit", {"specs": [NOWHERE]})
            for op, args in (("wait", {"id": doc["id"]}), ("wait_all", {"ids": [doc["id"]]}),
                             ("drain", {"wait": True})):
                answer = asyncio.ensure_future(daemon.control.handle(op, dict(args, timeout_s=0)))
                for _ in range(5):
                    await asyncio.sleep(0)
                assert answer.done(), op
                assert daemon.control.waiters == {}
            await daemon.control.handle("undrain", {})

            def calls():
                with Recording(socket=tmp_path / "control.sock") as c:
                    return c.wait(doc["id"], timeout=0)["state"], c.wait_all([doc["id"]], timeout=0)[0]["state"]
            return await asyncio.to_thread(calls)
    assert asyncio.run(scenario()) == ("queued", "queued")
    assert asked == [("wait", 0.0), ("wait_all", 0.0)]
