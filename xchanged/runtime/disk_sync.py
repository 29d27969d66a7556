"""Group fsync off the event loop, and the audit heads signed over what it made durable.

Why: single fsyncs stall for tenths of a second now and then (docs/reliability.md), and while they
were on the decision path they froze every award. So the loop only writes (a write survives a crash
of the daemon); everything written is fsynced (survives power loss) within SYNC_INTERVAL by a worker
thread. A client's submit or cancel is fsynced before its reply (protocol/effects.py: SYNC), also in
a worker thread (runtime/control.py): the reply waits, the loop does not.

Every gossip interval the same thread signs a new audit head over the records already on disk (never
over records a power cut could still take), and the daemon hands it to the core, which gossips it.
A failed write or fsync stops the daemon: the kernel may have dropped the dirty pages, so a retry
could "succeed" with the data lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ..protocol.audit_format import SignedTreeHead
from ..protocol.events import AuditHeadSigned
from .audit import AuditError, AuditLog
from .clock import wall_ms
from .store import Store

SYNC_INTERVAL = 0.1      # seconds: the longest a written decision waits to be fsynced


class DiskSync:
    """The worker thread's round: fsync `store` and `audit`, sign a head every `head_every` seconds
    and `put` it for the core; `fail` is told of a failed write or fsync (and the rounds end)."""

    def __init__(self, store: Store, audit: AuditLog, head_every: float, put: Callable[[Any], None],
                 fail: Callable[[Exception], None]) -> None:
        self.store = store
        self.audit = audit
        self.head_every = max(head_every, 0.05)
        self.put = put
        self.fail = fail

    async def run(self) -> None:
        """Group fsync, off the event loop: every SYNC_INTERVAL the store's log and the audit log are
        fsynced in a worker thread (what the loop wrote meanwhile waits for the next round), and every
        gossip interval a new audit head is signed over the records that are on disk, and gossiped."""
        next_head = time.monotonic()
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            now = time.monotonic()
            sign_at = wall_ms() if now >= next_head else None
            if sign_at is not None:
                next_head = now + self.head_every
            try:
                head = await asyncio.to_thread(self.sync_files, now, sign_at)
            except (AuditError, OSError, sqlite3.Error) as exc:
                self.fail(exc)
                return
            if head is not None:
                self.put(AuditHeadSigned(head.to_dict()))

    def sync_files(self, now: float, sign_at: int | None) -> SignedTreeHead | None:
        """(Worker thread.) fsync what was written; sign a head over the durable records if asked."""
        if self.store.unsynced:
            self.store.sync(now)
        self.audit.flush()
        if sign_at is None:
            return None
        head, size = self.audit.head, self.audit.durable_size
        if head is None or head.size != size:
            head = self.audit.sign_head(sign_at, size)
        return head
