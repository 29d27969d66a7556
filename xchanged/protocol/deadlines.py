"""Keyed deadlines: what is due next, without walking everything that has one.

Rules:
- `set(key, when)` gives a key its (one) deadline, replacing any earlier one; `cancel(key)` drops it.
- `next()` is the earliest live deadline (math.inf when none); `due(now)` removes and returns the keys
  whose deadline has passed, earliest first.
- A min-heap with lazy deletion: a replaced or cancelled entry stays in the heap until it reaches the
  top, where it is recognised (its time no longer matches the key's) and discarded. Every operation
  is O(log n); the heap is rebuilt when stale entries outnumber live ones, so it stays O(live keys).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    def __init__(self) -> None:
        self._when: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, key: object) -> bool:
        return key in self._when

    def get(self, key: K) -> float | None:
        return self._when.get(key)

    def set(self, key: K, when: float) -> None:
        if self._when.get(key) == when:
            return
        self._when[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if len(self._heap) > 2 * len(self._when) + 16:
            self._compact()

    def cancel(self, key: K) -> None:
        self._when.pop(key, None)

    def next(self) -> float:
        heap, when = self._heap, self._when
        while heap and when.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def due(self, now: float) -> list[K]:
        out: list[K] = []
        while self.next() <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._when[key]
            out.append(key)
        return out

    def _compact(self) -> None:
        self._heap = [(t, next(self._seq), k) for k, t in self._when.items()]
        heapq.heapify(self._heap)
