"""How long commands run here: the contractor's estimates for bids, and for when a slot frees.

Rules:
- A command's run time is a moving mean (weight 0.2 for the newest) of its attempts that exited
  here, for at most RUNTIME_HISTORY commands (the oldest command learned is dropped first).
- A bid's estimate is the submitter's, else our mean for that command, else none.
- A slot is expected to free when the first running attempt reaches its command's mean (a command
  never seen here: UNKNOWN_RUNTIME_MS); the local queue opens only within PREFETCH_HORIZON_MS of it
  (contractor.py), so a task is never parked behind hour-long ones while other nodes free up.
"""

from __future__ import annotations

from typing import Iterable

from .claims import Claim
from .messages import Cfp

UNKNOWN_RUNTIME_MS = 1000.0     # run time assumed for a command never seen here
RUNTIME_HISTORY = 256           # commands whose mean run time a contractor remembers (for bid estimates)


class RunTimes:
    def __init__(self) -> None:
        self.mean_ms: dict[str, float] = {}          # command -> mean run time (ms) seen here

    def estimate_ms(self, cfp: Cfp) -> int | None:
        """How long we expect the task to run here: the submitter's estimate, else our history."""
        if cfp.est_runtime_ms is not None:
            return cfp.est_runtime_ms
        mean = self.mean_ms.get(cfp.command)
        return None if mean is None else int(mean)

    def record(self, command: str, runtime_ms: int) -> None:
        if command not in self.mean_ms and len(self.mean_ms) >= RUNTIME_HISTORY:
            self.mean_ms.pop(next(iter(self.mean_ms)))
        old = self.mean_ms.get(command, float(runtime_ms))
        self.mean_ms[command] = 0.8 * old + 0.2 * runtime_ms

    def until_a_slot_frees(self, running: Iterable[Claim], now: float) -> int:
        """Expected ms until the first running attempt ends, from the run times seen here."""
        left = [self.mean_ms.get(c.spec.argv[0], UNKNOWN_RUNTIME_MS) - (now - c.started) * 1000
                for c in running if not c.queued and c.spec is not None]
        return int(max(0.0, min(left, default=0.0)))
