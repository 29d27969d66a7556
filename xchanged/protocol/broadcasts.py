"""The bounded queue of signed frames a node passes on: what each gossip batch and probe carries.

Rules:
- An item is one relayable signed frame (a load, a suspicion, a death verdict) under a key; a newer
  frame under the same key replaces the older one (a node's newer load, a suspecter's newer word).
- Each item is passed on at most `limit` times (a probe's piggyback counts one, a gossip batch one per
  node it goes to); after that it has done its part of the epidemic and is dropped.
- `take(n)` picks what rides next: urgent items (membership news: suspicions, verdicts, refutations,
  changes of what a node is) before routine loads, then those that rode the fewest messages, then the
  newest. That is memberlist's transmit-limited queue: new news spreads first, whatever is queued.
- At most `capacity` items are held; beyond that the routine item that rode the most (oldest first)
  is dropped, so a flood of loads costs bounded memory and bandwidth, never an urgent item's place
  while a routine one is left.
Every operation is bounded by `capacity` and the number of ride counts (a few), never by the
cluster's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Key = tuple[Any, ...]            # ("load", node), ("suspect", node, suspecter), ("dead", node)


@dataclass(slots=True)
class Item:
    key: Key
    frame: bytes
    urgent: bool
    limit: int
    about: str = ""                 # the node it is news of (to drop what a refutation supersedes)
    sent: int = 0


class Broadcasts:
    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._items: dict[Key, Item] = {}
        self._buckets: dict[tuple[int, int], dict[Key, Item]] = {}   # (0 urgent | 1 routine, sent) -> items
        self._about: dict[str, dict[Key, None]] = {}               # node -> keys of news of it, in order
        self._top = 0                                               # the highest ride count of any bucket
        self.dropped = 0                                            # items pushed out by the capacity

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def put(self, key: Key, frame: bytes, urgent: bool, limit: int, about: str = "") -> None:
        old = self._items.get(key)
        if old is not None:
            if old.frame == frame:
                return
            self.drop(key)
        item = Item(key, frame, urgent, max(1, limit), about)
        self._items[key] = item
        self._bucket(item)[key] = item
        if about:
            self._about.setdefault(about, {})[key] = None
        while len(self._items) > self.capacity:
            self._evict()

    def drop(self, key: Key) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        del self._bucket(item)[key]
        if item.about:
            keys = self._about.get(item.about)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._about[item.about]

    def about(self, node: str) -> list[Key]:
        return list(self._about.get(node, ()))

    def has_urgent(self) -> bool:
        return any(bucket for (rank, _), bucket in self._buckets.items() if rank == 0)

    def pending_urgent(self) -> bool:
        """Is there urgent news that has not ridden any message yet?"""
        return bool(self._buckets.get((0, 0)))

    def take(self, n: int, urgent_only: bool = False, first: list[Key] | tuple[Key, ...] = (),
             copies: int = 1) -> list[bytes]:
        """Up to `n` frames to ride one message to `copies` nodes; `first`: keys to put first."""
        chosen: list[Item] = [self._items[k] for k in first if k in self._items][:n]
        picked = {item.key for item in chosen}
        if len(chosen) < n:
            for rank in ((0,) if urgent_only else (0, 1)):
                for sent in range(self._top + 1):
                    bucket = self._buckets.get((rank, sent))
                    if not bucket:
                        continue
                    for item in reversed(bucket.values()):        # newest first
                        if item.key not in picked:
                            chosen.append(item)
                            if len(chosen) >= n:
                                break
                    if len(chosen) >= n:
                        break
                if len(chosen) >= n:
                    break
        for item in chosen:
            del self._bucket(item)[item.key]
            item.sent = min(item.sent + copies, item.limit)
            if item.sent >= item.limit:
                self._items.pop(item.key)
                if item.about:
                    self._forget_about(item)
            else:
                self._bucket(item)[item.key] = item
        return [item.frame for item in chosen]

    def _forget_about(self, item: Item) -> None:
        keys = self._about.get(item.about)
        if keys is not None:
            keys.pop(item.key, None)
            if not keys:
                del self._about[item.about]

    def _bucket(self, item: Item) -> dict[Key, Item]:
        where = (0 if item.urgent else 1, item.sent)
        bucket = self._buckets.get(where)
        if bucket is None:
            bucket = self._buckets[where] = {}
            self._top = max(self._top, item.sent)
        return bucket

    def _evict(self) -> None:
        """Drop the routine item that rode the most (the oldest of those); urgent ones only when no
        routine one is left."""
        for rank in (1, 0):
            for sent in range(self._top, -1, -1):
                bucket = self._buckets.get((rank, sent))
                if bucket:
                    self.drop(next(iter(bucket)))
                    self.dropped += 1
                    return
