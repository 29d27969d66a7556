"""Lifeguard's two guards against false deaths: suspicions that shorten as they are confirmed, and a
node's awareness of its own health.

Rules:
- A suspicion lasts `longest` when nobody else confirms it, and shrinks towards `shortest` as
  independent suspicions of the same life arrive (each from a different node whose own probes
  failed), reaching it at `expected` confirmations:
      timeout = max(shortest, longest - (longest - shortest) * log(1 + confirmed) / log(1 + expected)).
  A node that is really gone is soon suspected by several probers, so it is declared dead quickly; a
  lone suspicion, which is the likelier to be wrong (one bad link, one slow prober), waits the longest
  and gives the suspect the most time to refute it.
- Local health (Lifeguard's awareness, 0..MAX_HEALTH): a probe of ours that got no answer, or a
  suspicion of ourselves we had to refute, makes it worse by one; a probe that was answered makes it
  better by one. Our probe timeouts are multiplied by (1 + score): a node too slow to hear answers in
  time (overloaded, paused) waits longer before it suspects anyone, instead of accusing healthy peers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_HEALTH = 8


def suspicion_timeout(confirmed: int, expected: int, shortest: float, longest: float) -> float:
    if expected < 1 or longest <= shortest:
        return shortest
    fraction = math.log(1 + min(confirmed, expected)) / math.log(1 + expected)
    return max(shortest, longest - (longest - shortest) * fraction)


@dataclass(slots=True)
class Suspicion:
    """One peer's suspected life: when it started, who suspects it, when it ends in death."""

    life: tuple[int, int]
    started: float
    first: str                                   # the node whose suspicion started ours
    expected: int
    shortest: float
    longest: float
    others: set[str] = field(default_factory=set)   # later, independent suspecters (confirmations)

    def confirm(self, suspecter: str) -> bool:
        """An independent suspicion from `suspecter`; True if it was news (the deadline moved)."""
        if suspecter == self.first or suspecter in self.others or len(self.others) >= self.expected:
            return False
        self.others.add(suspecter)
        return True

    @property
    def deadline(self) -> float:
        return self.started + suspicion_timeout(len(self.others), self.expected, self.shortest, self.longest)


@dataclass(slots=True)
class LocalHealth:
    score: int = 0

    def worse(self) -> None:
        self.score = min(MAX_HEALTH, self.score + 1)

    def better(self) -> None:
        self.score = max(0, self.score - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (1 + self.score)
