"""Timings the core observes as it goes, for /metrics histograms and `xchanged stats` percentiles.

Rules:
- Each timing is a `Histogram`: cumulative counts over fixed buckets (what Prometheus wants, never
  reset), their sum and count, and the most recent RECENT samples (exact percentiles of the recent
  past for `stats`). Memory is fixed, however long the node runs.
- The core records a sample where the fact happens (manager.py, negotiation.py); drivers read copies
  only (`snapshot`, through readout.py), never the live object.
- Values are seconds.

What is observed (names are the keys of `Observations.timings`):
    queue_wait      from a task's (re)queueing to the start of the attempt that runs it
    bid_window      how long a bidding round stayed open (it closes early once every candidate answered)
    award_to_start  from an award to the start of its process on the contractor
    run_time        run time of an attempt that ended with an exit (or a timeout) on its contractor
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                              60.0, 300.0, 1800.0, 3600.0)
RECENT = 1024                  # samples kept per timing for percentiles
TIMINGS = ("queue_wait", "bid_window", "award_to_start", "run_time")


@dataclass(frozen=True, slots=True)
class HistogramView:
    """A copy of a histogram: `counts[i]` samples <= BUCKETS[i] (cumulative), then `count` in all."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int
    recent: tuple[float, ...]           # the newest samples, oldest first

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0..100) of the recent samples (nearest rank); None without samples."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        return ordered[rank]


class Histogram:
    def __init__(self) -> None:
        self._counts = [0] * len(BUCKETS)       # per bucket, not cumulative
        self.total = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=RECENT)

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        i = bisect.bisect_left(BUCKETS, value)
        if i < len(BUCKETS):
            self._counts[i] += 1
        self.total += value
        self.count += 1
        self.recent.append(value)

    def snapshot(self) -> HistogramView:
        cumulative, running = [], 0
        for n in self._counts:
            running += n
            cumulative.append(running)
        return HistogramView(BUCKETS, tuple(cumulative), self.total, self.count, tuple(self.recent))


class Observations:
    """Every timing of one node."""

    def __init__(self) -> None:
        self.timings: dict[str, Histogram] = {name: Histogram() for name in TIMINGS}

    def observe(self, name: str, seconds: float) -> None:
        self.timings[name].observe(seconds)

    def snapshot(self) -> dict[str, HistogramView]:
        return {name: h.snapshot() for name, h in self.timings.items()}
