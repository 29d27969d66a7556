"""A simulated node's store, with the daemon's durability levels (docs/reliability.md, Durability),
so a simulated crash loses exactly what a real one would.

Writes are staged in one open transaction, as in runtime/store.py; `commit_due(phase)` commits all of
it when some staged write is due in that phase of a batch (BEFORE, or AFTER; LAZY ones wait for the
next commit or LAZY_COMMIT_S). Committed writes survive a crash of the process; once SYNC_INTERVAL
has passed (the daemon's group fsync), or at once for SYNC writes, they survive a power cut too.
"""

from __future__ import annotations

from typing import Any

from ..protocol.effects import AFTER, BEFORE, LAZY, SYNC

LAZY_COMMIT_S = 1.0
SYNC_INTERVAL = 0.1
_RANK = {LAZY: 0, AFTER: 1, BEFORE: 2, SYNC: 3}
_DELETED = object()


class SimStore:
    def __init__(self) -> None:
        self.committed: dict[tuple[str, Any], Any] = {}    # (table, key) -> document; survives a crash
        self._staged: dict[tuple[str, Any], Any] = {}
        self._unsynced: dict[tuple[str, Any], Any] = {}    # committed since the last sync: the values before
        self._next_sync = 0.0
        self._due = LAZY
        self._lazy_since: float | None = None

    def put(self, table: str, key: Any, doc: Any, when: str) -> None:
        self._staged[(table, key)] = doc
        if _RANK[when] > _RANK[self._due]:
            self._due = when

    def delete(self, table: str, key: Any, when: str = LAZY) -> None:
        self.put(table, key, _DELETED, when)

    def commit_due(self, now: float, phase: str) -> None:
        self._tick(now)
        if not self._staged:
            return
        if self._lazy_since is None:
            self._lazy_since = now
        if _RANK[self._due] >= _RANK[phase] or (phase == AFTER and now - self._lazy_since >= LAZY_COMMIT_S):
            must_sync = self._due == SYNC
            for key, doc in self._staged.items():
                if key not in self._unsynced:
                    self._unsynced[key] = self.committed.get(key, _DELETED)
                if doc is _DELETED:
                    self.committed.pop(key, None)
                else:
                    self.committed[key] = doc
            self._staged, self._due, self._lazy_since = {}, LAZY, None
            if must_sync:
                self._unsynced.clear()

    def _tick(self, now: float) -> None:
        """The daemon's worker thread fsyncs every SYNC_INTERVAL: what was committed is on disk."""
        if now >= self._next_sync:
            self._unsynced.clear()
            self._next_sync = now + SYNC_INTERVAL

    def crash(self, now: float, power_loss: bool = False) -> None:
        """The process dies: staged writes are lost; on a power cut, commits not yet synced too."""
        self._tick(now)
        self._staged, self._due, self._lazy_since = {}, LAZY, None
        if power_loss:
            for key, old in self._unsynced.items():
                if old is _DELETED:
                    self.committed.pop(key, None)
                else:
                    self.committed[key] = old
        self._unsynced.clear()

    def table(self, name: str) -> dict[Any, Any]:
        """What a restarted node reads back from one table (committed)."""
        return {key: doc for (table, key), doc in self.committed.items() if table == name}

    def get(self, table: str, key: Any) -> Any:
        """The latest write, staged or committed (what the running node itself sees)."""
        doc = self._staged.get((table, key), self.committed.get((table, key)))
        return None if doc is _DELETED else doc

    def latest(self, name: str) -> dict[Any, Any]:
        docs = self.table(name)
        for (table, key), doc in self._staged.items():
            if table == name:
                if doc is _DELETED:
                    docs.pop(key, None)
                else:
                    docs[key] = doc
        return docs
