"""What the running attempts of this node's tasks have written so far, for `logs` and `logs -f`.

The core hands the manager each chunk a contractor streams (`LiveOutput`: an attempt, a stream, the
chunk's byte offset in the contractor's stream); this keeps them per task, for its latest attempt.

Rules:
- Positions. A reader asks for what follows a position in *this* buffer's stream (bytes kept plus
  bytes dropped before them), and gets the bytes, the new position and how many bytes it missed.
- Bounded. Each stream keeps its last `limit` bytes (the node's `max_output`); all buffers together
  at most `budget` bytes: past it, finished buffers go first, then the front of the one that grew.
  Finished buffers (the task ended) are kept for late readers, the `keep_finished` newest of them.
- Faithful. A chunk overlapping what came before (a resend) adds only its new bytes; a gap (a chunk
  lost in transit) is marked in the text. Chunks of an older attempt than the buffer's are dropped;
  a newer attempt starts a new buffer (readers see `attempt` change and start again from 0).
- Readers wait on `changed(task_id)`: new output, the task's state changing, or its end wake them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from ..protocol.lifecycle import TERMINAL
from ..protocol.messages import STREAMS

LIVE_BUDGET = 64 << 20         # bytes of live output kept for all tasks together
KEEP_FINISHED = 64             # buffers of ended tasks kept for late readers


class StreamBuffer:
    """The tail of one stream of one attempt, with absolute positions."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.base = 0                  # position of data[0]: bytes dropped from the front so far
        self.expected = 0              # the contractor's offset of the next byte we expect

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def add(self, offset: int, chunk: bytes) -> None:
        """Add bytes `offset`.. of the contractor's stream."""
        if offset + len(chunk) <= self.expected:
            return                                     # a resend of what we have
        if offset > self.expected:
            self._append(f"\n[xchanged: {offset - self.expected} bytes of output lost in transit]\n".encode())
        else:
            chunk = chunk[self.expected - offset:]
            offset = self.expected
        self._append(chunk)
        self.expected = offset + len(chunk)

    def _append(self, chunk: bytes) -> None:
        self.data += chunk
        self.trim(len(self.data) - self.limit)

    def trim(self, excess: int) -> int:
        """Drop up to `excess` bytes from the front; returns how many were dropped."""
        excess = max(0, min(excess, len(self.data)))
        if excess:
            del self.data[:excess]
            self.base += excess
        return excess

    def read(self, position: int) -> tuple[bytes, int, int]:
        """(bytes after `position`, the position after them, bytes missed: dropped before we got there)."""
        position = max(0, min(position, self.end))
        missed = max(0, self.base - position)
        start = max(position, self.base)
        return bytes(self.data[start - self.base:]), self.end, missed


@dataclass
class LiveBuffer:
    attempt: int
    streams: dict[str, StreamBuffer]
    finished: bool = False

    def total(self) -> int:
        return sum(len(s.data) for s in self.streams.values())


class LiveLogs:
    def __init__(self, limit: int, budget: int = LIVE_BUDGET, keep_finished: int = KEEP_FINISHED):
        self.limit = max(1, limit)
        self.budget = budget
        self.keep_finished = keep_finished
        self.buffers: OrderedDict[str, LiveBuffer] = OrderedDict()   # task id -> its latest attempt's
        self.finished: OrderedDict[str, None] = OrderedDict()        # ended tasks' buffers, oldest first
        self.waiters: dict[str, list[asyncio.Future]] = {}
        self.total = 0

    def get(self, task_id: str) -> LiveBuffer | None:
        return self.buffers.get(task_id)

    def add(self, task_id: str, attempt: int, stream: str, offset: int, chunk: bytes) -> None:
        if stream not in STREAMS:
            return
        buf = self.buffers.get(task_id)
        if buf is not None and buf.attempt > attempt:
            return                                               # an older attempt's late output
        if buf is None or buf.attempt < attempt:
            self._drop(task_id)
            buf = LiveBuffer(attempt, {s: StreamBuffer(self.limit) for s in STREAMS})
            self.buffers[task_id] = buf
        before = buf.total()
        buf.streams[stream].add(offset, chunk)
        self.total += buf.total() - before
        self._keep_budget(buf.streams[stream])
        self._wake(task_id)

    def finish(self, task_id: str) -> None:
        """The task ended (or its attempt's result came): no more output will come for this buffer."""
        buf = self.buffers.get(task_id)
        if buf is not None and not buf.finished:
            buf.finished = True
            self.finished[task_id] = None
            while len(self.finished) > self.keep_finished:
                self._drop(next(iter(self.finished)))
        self._wake(task_id)

    def task_changed(self, doc: dict) -> None:
        """A task's document was persisted: wake its readers (it may have started, or ended)."""
        if doc.get("state") in TERMINAL:
            self.finish(doc["id"])
        elif doc["id"] in self.waiters:
            self._wake(doc["id"])

    async def changed(self, task_id: str, timeout: float) -> bool:
        """Wait until the task's output or state changes, at most `timeout` seconds; True if it did."""
        future = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, []).append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            parked = self.waiters.get(task_id)
            if parked is not None and future in parked:
                parked.remove(future)
                if not parked:
                    del self.waiters[task_id]

    def _wake(self, task_id: str) -> None:
        for future in self.waiters.pop(task_id, []):
            if not future.done():
                future.set_result(None)

    def _drop(self, task_id: str) -> None:
        buf = self.buffers.pop(task_id, None)
        self.finished.pop(task_id, None)
        if buf is not None:
            self.total -= buf.total()

    def _keep_budget(self, grown: StreamBuffer) -> None:
        while self.total > self.budget and self.finished:
            self._drop(next(iter(self.finished)))
        if self.total > self.budget:
            self.total -= grown.trim(self.total - self.budget)
