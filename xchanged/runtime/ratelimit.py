"""A log line for a problem that can repeat thousands of times a second (a full input queue under a
flood of frames): the first occurrence is logged at once, later ones are counted and summed up in at
most one line per interval, so the log stays readable and its writes cannot slow the loop down."""

from __future__ import annotations

import logging
from collections import Counter


class RateLimitedLog:
    """At most one line per `every` seconds for `message`; what happened in between is counted by kind.

    `now` is passed in (a monotonic clock), so a test moves time by hand.
    """

    def __init__(self, logger: logging.Logger, level: int, message: str, every: float):
        self.logger, self.level, self.message, self.every = logger, level, message, every
        self.pending: Counter[str] = Counter()     # occurrences not reported yet, by kind
        self.next_line = float("-inf")             # when the next line may be written

    def hit(self, kind: str, now: float) -> None:
        """One more occurrence (`kind`: what was dropped, say)."""
        self.pending[kind] += 1
        self.flush(now)

    def flush(self, now: float) -> None:
        """Write the pending count if a line is due (called on each hit and now and then by a timer)."""
        if not self.pending or now < self.next_line:
            return
        total = sum(self.pending.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.pending.most_common())
        self.logger.log(self.level, "%s; dropped %d since the last report (%s)", self.message, total, kinds)
        self.pending.clear()
        self.next_line = now + self.every
