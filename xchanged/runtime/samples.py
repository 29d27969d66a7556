"""A short history of the cluster's load, for the dashboard's chart (control op `history`).

Every SAMPLE_INTERVAL seconds the daemon takes one sample on its own loop from what it already
knows (its peers' last load signals and its own counters; no I/O), and keeps the last
SAMPLES of them in a ring buffer: ten minutes at 2 s, a few tens of kilobytes, nothing on disk
(the history starts again with the daemon).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import views

if TYPE_CHECKING:
    from .daemon import Daemon

SAMPLE_INTERVAL = 2.0     # seconds between two samples
SAMPLES = 300             # samples kept (SAMPLES * SAMPLE_INTERVAL seconds of history)


@dataclass(frozen=True, slots=True)
class Sample:
    t: int                        # wall clock, ms
    utilization_percent: float    # running / slots over the live nodes (as `stats`)
    running: int                  # attempts running on the live nodes
    slots: int                    # slots of the live nodes
    queued: int                   # tasks queued at every live manager (their load signals)
    queued_here: int              # tasks queued at this node (this manager)
    alive: int                    # nodes alive (ourselves included)
    nodes: int                    # nodes known


def take(daemon: Daemon, now: float, wall_ms: int) -> Sample:
    """One sample of what the daemon's node knows at `now` (call it on the event loop)."""
    peers = views.peers(daemon.node, now)
    live = [p for p in peers if p["health"] != "dead"]
    slots = sum(p["slots"] for p in live)
    running = sum(min(p["slots"], p["running"]) for p in live)
    queued_here = views.counters(daemon.node).tasks_by_state.get("queued", 0)
    return Sample(wall_ms, round(100 * running / slots, 1) if slots else 0.0, running, slots,
                  sum(p["queued"] for p in live), queued_here,
                  sum(1 for p in peers if p["health"] == "alive"), len(peers))


class History:
    """The ring buffer of samples and the loop that fills it."""

    def __init__(self, capacity: int = SAMPLES, interval: float = SAMPLE_INTERVAL):
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=capacity)

    def doc(self) -> dict[str, Any]:
        """The control op `history`'s document: oldest sample first."""
        return {"interval_s": self.interval, "capacity": self.samples.maxlen,
                "samples": [asdict(s) for s in self.samples]}

    async def run(self, daemon: Daemon) -> None:
        """Sample until cancelled (one of the daemon's tasks)."""
        while True:
            if daemon.node is not None:
                self.samples.append(take(daemon, time.monotonic(), time.time_ns() // 1_000_000))
            await asyncio.sleep(self.interval)
