"""What an in-process daemon does with its input queue when it is full."""

from __future__ import annotations

import asyncio
import logging

from tests.runtime.inprocess import running_daemon
from xchanged.protocol.events import FrameDropped
from xchanged.runtime import daemon as daemon_module


def test_a_full_input_queue_logs_one_line_not_one_per_drop(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="xchanged")

    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            for _ in range(daemon_module.MAX_INPUTS + 5_000):    # the loop cannot run meanwhile
                daemon.put(FrameDropped("flood"))
            return daemon.inputs.qsize()
    assert asyncio.run(scenario()) == daemon_module.MAX_INPUTS
    full = [r.getMessage() for r in caplog.records if "input queue full" in r.getMessage()]
    assert full == ["input queue full; dropped 1 since the last report (FrameDropped 1)",     # at once
                    "input queue full; dropped 4999 since the last report (FrameDropped 4999)"]  # at stop
