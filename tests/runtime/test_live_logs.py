"""The manager's buffers of live output: positions survive trimming, resends and gaps are handled,
attempts replace each other, memory stays within its limits, and readers are woken."""

from __future__ import annotations

import asyncio

from xchanged.runtime.cluster_ops import complete_utf8
from xchanged.runtime.live_logs import LiveLogs, StreamBuffer


def test_a_stream_keeps_its_tail_with_absolute_positions():
    s = StreamBuffer(limit=10)
    s.add(0, b"0123456789")
    s.add(10, b"abcde")
    assert bytes(s.data) == b"56789abcde" and (s.base, s.end) == (5, 15)
    assert s.read(12) == (b"cde", 15, 0)
    assert s.read(0) == (b"56789abcde", 15, 5)          # 5 bytes were dropped before this reader got there
    assert s.read(15) == (b"", 15, 0)


def test_resends_add_only_what_is_new_and_gaps_are_marked():
    s = StreamBuffer(limit=1000)
    s.add(0, b"hello ")
    s.add(0, b"hello ")                                   # a resend
    s.add(3, b"lo world")                                 # overlaps
    assert bytes(s.data) == b"hello world"
    s.add(20, b"!")                                       # 9 bytes never came
    assert bytes(s.data).endswith(b"[xchanged: 9 bytes of output lost in transit]\n!")
    s.add(21, b"?")
    assert bytes(s.data).endswith(b"!?")


def test_a_newer_attempt_replaces_the_buffer_and_an_older_ones_output_is_dropped():
    logs = LiveLogs(limit=100)
    logs.add("T-1", 2, "stdout", 0, b"second\n")
    logs.add("T-1", 1, "stdout", 0, b"first\n")           # late output of an earlier attempt
    assert logs.get("T-1").attempt == 2 and bytes(logs.get("T-1").streams["stdout"].data) == b"second\n"
    logs.add("T-1", 3, "stderr", 0, b"third\n")
    buf = logs.get("T-1")
    assert buf.attempt == 3 and buf.streams["stdout"].end == 0 and logs.total == len(b"third\n")
    logs.add("T-1", 3, "stdin", 0, b"?")                  # not a stream: ignored
    assert logs.total == len(b"third\n")


def test_memory_stays_within_the_budget_and_finished_buffers_go_first():
    logs = LiveLogs(limit=100, budget=250, keep_finished=2)
    for i in range(3):
        logs.add(f"T-{i}", 1, "stdout", 0, b"x" * 100)
        logs.finish(f"T-{i}")
    assert set(logs.buffers) == {"T-1", "T-2"}            # keep_finished: the oldest finished went
    logs.add("T-9", 1, "stdout", 0, b"y" * 100)
    assert logs.total <= 250 and "T-9" in logs.buffers and "T-1" not in logs.buffers
    logs.add("T-8", 1, "stdout", 0, b"z" * 100)
    logs.add("T-8", 1, "stderr", 0, b"z" * 100)
    assert logs.total <= 250 and not logs.finished        # then the one that grew loses its front


def test_readers_are_woken_by_output_and_by_the_end():
    async def scenario():
        logs = LiveLogs(limit=100)
        assert await logs.changed("T-1", 0.01) is False and logs.waiters == {}
        waiting = asyncio.create_task(logs.changed("T-1", 30))
        await asyncio.sleep(0)
        logs.add("T-1", 1, "stdout", 0, b"hi\n")
        assert await waiting is True
        waiting = asyncio.create_task(logs.changed("T-1", 30))
        await asyncio.sleep(0)
        logs.task_changed({"id": "T-1", "state": "succeeded"})
        assert await waiting is True and logs.get("T-1").finished and logs.waiters == {}
    asyncio.run(scenario())


def test_a_follower_is_given_whole_utf8_characters():
    text = "née → ✓".encode()
    for cut in range(len(text) + 1):
        prefix = text[:cut][:complete_utf8(text[:cut])]
        prefix.decode()                                   # never ends inside a character
        assert len(text[:cut]) - len(prefix) < 4
    assert complete_utf8(text) == len(text)
