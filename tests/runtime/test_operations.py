"""Operating an in-process daemon: reload (good and bad configs), drain and undrain (persisted), a
graceful stop that hands running work back, systemd notifications, and the task environment."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from tests.runtime.inprocess import config_file, running, write_config
from xchanged.client import build_spec
from xchanged.config import load_config
from xchanged.config_check import ConfigRejected, check_config
from xchanged.protocol.lifecycle import TERMINAL
from xchanged.runtime.daemon import Daemon
from xchanged.runtime.transport import ControlError

WAIT = 30.0


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT))


async def finished(daemon: Daemon, task_id: str) -> dict:
    doc = await daemon.control.handle("wait", {"id": task_id, "timeout_s": WAIT})
    assert doc["state"] in TERMINAL, doc
    return doc


async def submit(daemon: Daemon, *argv: str, **options) -> str:
    [doc] = await daemon.control.handle("submit", {"specs": [build_spec(list(argv), **options)]})
    return doc["id"]


def test_reload_applies_labels_slots_and_log_level_and_reports_restart_only_keys(tmp_path):
    path = config_file(tmp_path)

    async def scenario():
        async with running(Daemon(load_config(path))) as daemon:
            waiting = await submit(daemon, "true", labels={"zone": "b"})
            write_config(path, node={"slots": 3, "labels": {"zone": "b"}, "log_level": "debug",
                                     "name": "renamed"})
            answer = await daemon.control.handle("reload", {})
            assert set(answer["changed"]) == {"node.slots", "node.labels", "node.log_level"}
            assert answer["restart_needed"] == ["node.name"]
            me = (await daemon.control.handle("peers", {}))[0]
            assert me["name"] == "solo" and me["slots"] == 3 and me["labels"] == {"zone": "b"}
            assert logging.getLogger("xchanged").getEffectiveLevel() == logging.DEBUG
            assert (await finished(daemon, waiting))["state"] == "succeeded"      # the new label matched
            stats = await daemon.control.handle("stats", {})
            assert stats["reloads"] == {"ok": 1, "rejected": 0}
    try:
        run(scenario)
    finally:
        logging.getLogger("xchanged").setLevel(logging.NOTSET)


@pytest.mark.parametrize("bad", [{"node": {"slots": 0}}, {"gossip": {"interval": "fast"}},
                                 {"bidding": {"windw": "1s"}}])
def test_a_config_that_fails_validation_is_rejected_with_config_checks_error(tmp_path, bad):
    path = config_file(tmp_path, node={"labels": {"zone": "a"}})

    async def scenario():
        async with running(Daemon(load_config(path))) as daemon:
            before = daemon.config
            write_config(path, **bad)
            with pytest.raises(ConfigRejected) as expected:
                check_config(path)                           # what `xchanged config check` says
            with pytest.raises(ControlError) as got:
                await daemon.control.handle("reload", {})
            assert str(got.value) == f"reload rejected, the daemon keeps its config: {expected.value}"
            assert "\n" not in str(got.value)
            assert daemon.config is before
            daemon._reload_on_signal()                        # SIGHUP: the same, logged
            tid = await submit(daemon, "true")
            assert (await finished(daemon, tid))["state"] == "succeeded"
            stats = await daemon.control.handle("stats", {})
            assert stats["reloads"] == {"ok": 0, "rejected": 2}
            me = (await daemon.control.handle("peers", {}))[0]
            assert me["labels"] == {"zone": "a"}
    run(scenario)


def test_drain_hands_back_nothing_running_finishes_and_holds_across_a_restart(tmp_path):
    path = config_file(tmp_path, node={"slots": 1})
    flag = tmp_path / "go"

    async def scenario():
        async with running(Daemon(load_config(path))) as daemon:
            first = await submit(daemon, "sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.02; done")
            while (await daemon.control.handle("status", {"id": first}))["state"] != "running":
                await asyncio.sleep(0.02)
            doc = await daemon.control.handle("drain", {})
            assert doc == {"draining": True, "running": 1, "queued": 0, "idle": False, "stopping": False}
            second = await submit(daemon, "true")
            assert (await daemon.control.handle("drain", {"wait": True, "timeout_s": 0.2}))["idle"] is False
            me = (await daemon.control.handle("peers", {}))[0]
            assert me["draining"] is True and me["slots_free"] == 0
            flag.touch()
            doc = await daemon.control.handle("drain", {"wait": True, "timeout_s": WAIT})
            assert doc["idle"] is True
            assert (await finished(daemon, first))["state"] == "succeeded"
            assert (await daemon.control.handle("status", {"id": second}))["state"] == "queued"
        async with running(Daemon(load_config(path))) as daemon:       # a drain holds across a restart
            assert (await daemon.control.handle("peers", {}))[0]["draining"] is True
            assert (await daemon.control.handle("status", {"id": second}))["state"] == "queued"
            await daemon.control.handle("undrain", {})
            assert (await finished(daemon, second))["state"] == "succeeded"
            stats = await daemon.control.handle("stats", {})
            assert stats["drains"] == {"drain": 0, "undrain": 1}
    run(scenario)


def test_a_graceful_stop_hands_running_work_back_after_its_grace(tmp_path):
    path = config_file(tmp_path, node={"slots": 1, "stop_grace": "200ms"})

    async def scenario():
        daemon = Daemon(load_config(path))
        async with running(daemon):
            tid = await submit(daemon, "sleep", "60")
            while (await daemon.control.handle("status", {"id": tid}))["state"] != "running":
                await asyncio.sleep(0.02)
            daemon.ops.request_stop()                       # what SIGTERM does
            await asyncio.wait_for(daemon._stopping.wait(), WAIT)
        async with running(Daemon(load_config(path))) as again:
            doc = await again.control.handle("status", {"id": tid})
            assert doc["attempts"][0]["reason_code"] == "handed_back", doc
            assert doc["attempts"][0]["state"] == "lost" and doc["failures"] == 0
            await again.control.handle("cancel", {"id": tid})
    run(scenario)


def test_systemd_hears_ready_reloading_and_watchdog_pings(tmp_path, monkeypatch):
    path = config_file(tmp_path)
    sock_path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")         # a ping every 100 ms

    async def scenario():
        loop = asyncio.get_running_loop()
        heard: list[str] = []
        news = asyncio.Condition()

        async def listen() -> None:                       # read all the time: systemd would
            while True:
                message = (await loop.sock_recv(listener, 4096)).decode()
                async with news:
                    heard.append(message)
                    news.notify_all()

        async def until(text: str) -> None:
            async with news:
                await asyncio.wait_for(news.wait_for(lambda: any(text in m for m in heard)), WAIT)
        reader = asyncio.create_task(listen())
        try:
            async with running(Daemon(load_config(path))) as daemon:
                await until("READY=1")
                await until("WATCHDOG=1")
                tid = await submit(daemon, "sh", "-c", "env")
                assert (await finished(daemon, tid))["state"] == "succeeded"
                out = (await daemon.control.handle("logs", {"id": tid}))["stdout"]
                await daemon.control.handle("reload", {})
                await until("RELOADING=1")
            await until("STOPPING=1")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        return out
    try:
        out = asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT))
    finally:
        listener.close()
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert "XCHANGED_TASK_ID" in names
    assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def test_notify_never_blocks_on_a_reader_that_fell_behind(tmp_path, monkeypatch):
    from xchanged.runtime.systemd import notify
    sock_path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    try:
        for _ in range(1000):                           # far beyond a datagram queue: dropped, not blocked
            notify("WATCHDOG=1")
    finally:
        listener.close()
