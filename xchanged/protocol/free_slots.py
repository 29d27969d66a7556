"""What a peer's load signal says about its free slots once our own awards are taken into account.

A load says how many slots its node offered when the node signed it. Loads are gossiped and relayed,
so one often arrives after awards of ours that its node had not received yet when it signed it;
taking its `slots_free` as it stands over-estimates the room, and the next (direct) award to that
peer comes back rejected with `no_slots`.

Rules:
- A node numbers every frame it signs with one counter (`Envelope.incarnation`, `Envelope.seq`), and
  relays forward the signed bytes, so the order in which a peer signed two frames is known exactly,
  whatever the path or delay, without comparing anyone's clock.
- For each of our awards to a peer the ledger keeps the position at which the peer took the slot: the
  bid the award was made on (the bid reserved the slot), else the first accept, progress or result
  of the attempt; an award not yet confirmed has no position yet. It also keeps the position of the
  attempt's result, when one comes.
- A load signed at position P is worth `slots_free`, minus one for each of our awards still live on
  that peer that the load cannot show (not confirmed yet, or taken after P), plus one for each
  attempt that it showed busy (taken before P) whose result was signed after P.
- An entry is dropped when a load signed after its result arrives (the load shows all of it), when
  its attempt stops being live without a result (rejected, timed out, lost, cancelled: whether that
  peer has freed the slot yet is unknown, so the next load decides, as before), or when the peer dies.
Unconfirmed awards make the estimate err low, never high, and only until the accept arrives (at
most the award timeout). The manager's direct answers (a bid's `slots_free`, refusals, rejects,
results) still update its belief at once; this only decides what a newly received load is worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Position = tuple[int, int]              # (incarnation, seq) of a frame the peer signed


@dataclass(slots=True)
class _Award:
    taken: Position | None = None       # where the peer took the slot, once we know
    ended: Position | None = None       # where it signed the attempt's result


class FreeSlotLedger:
    """Our awards per peer, placed in the order of that peer's signed frames."""

    def __init__(self) -> None:
        self.awards: dict[str, dict[tuple[str, int], _Award]] = {}

    def awarded(self, peer: str, task_id: str, attempt: int, taken: Position | None) -> None:
        self.awards.setdefault(peer, {})[(task_id, attempt)] = _Award(taken)

    def confirmed(self, peer: str, task_id: str, attempt: int, at: Position) -> None:
        """An accept or progress of the attempt, signed at `at`: the slot was taken by then."""
        entry = self.awards.get(peer, {}).get((task_id, attempt))
        if entry is not None and entry.taken is None:
            entry.taken = at

    def ended(self, peer: str, task_id: str, attempt: int, at: Position) -> None:
        """A result of the attempt, signed at `at`: the slot was free again by then."""
        entry = self.awards.get(peer, {}).get((task_id, attempt))
        if entry is not None and entry.ended is None:
            entry.ended = at
            if entry.taken is None:         # a result without an accept: it ran, we know no more
                entry.taken = at

    def forget(self, peer: str) -> None:
        self.awards.pop(peer, None)

    def free_from_load(self, peer: str, slots_free: int, at: Position,
                       is_live: Callable[[str, int], bool]) -> int:
        """The free slots a load signed at `at` leaves for us; prunes entries it makes useless."""
        entries = self.awards.get(peer)
        if not entries:
            return slots_free
        free = slots_free
        for key, entry in list(entries.items()):
            if entry.ended is not None:
                if entry.ended < at:                    # the load shows both the start and the end
                    del entries[key]
                elif entry.taken is not None and entry.taken < at:
                    free += 1                           # it shows the slot busy; it has been freed since
            elif not is_live(*key):
                del entries[key]
            elif entry.taken is None or entry.taken > at:
                free -= 1                               # taken after the load was signed
        if not entries:
            del self.awards[peer]
        return max(0, free)


class PeerBeliefs:
    """What a manager believes of each peer's free slots right now. A new load is worth what the
    ledger above says; a peer's direct word (a bid, a refusal or reject for want of room, a result)
    corrects the belief at once."""

    def __init__(self) -> None:
        self.ledger = FreeSlotLedger()                 # our awards, to judge how stale a load is
        self._free: dict[str, int] = {}
        self.turned_away: set[str] = set()             # peers that turned us away since their last load:
                                                       # their queue room went to other managers

    def free(self, peer: str, default: int) -> int:
        return self._free.get(peer, default)

    def on_load(self, peer: str, slots_free: int, at: Position, is_live: Callable[[str, int], bool]) -> None:
        self._free[peer] = self.ledger.free_from_load(peer, slots_free, at, is_live)
        self.turned_away.discard(peer)

    def on_bid(self, peer: str, slots_free: int, queued: bool) -> None:
        """A bid says the free slots left after reserving ours; a queued bid reserved no slot."""
        self._free[peer] = slots_free + (0 if queued else 1)

    def busy(self, peer: str) -> None:
        """A refusal or reject for want of room: none free, nor in its queue, until its next load."""
        self._free[peer] = 0
        self.turned_away.add(peer)

    def awarded(self, peer: str, task_id: str, attempt: int, taken: Position | None) -> None:
        self._free[peer] = max(0, self._free.get(peer, 1) - 1)
        self.ledger.awarded(peer, task_id, attempt, taken)

    def result(self, peer: str, task_id: str, attempt: int, at: Position, refilled: bool,
               at_most: int | None) -> None:
        """A result frees its slot, unless the contractor gave it at once to a queued attempt; never
        believe more than `at_most` (its slots less our other attempts holding one there)."""
        self.ledger.ended(peer, task_id, attempt, at)
        if not refilled:
            believed = self._free.get(peer, 0) + 1
            self._free[peer] = max(0, believed if at_most is None else min(believed, at_most))

    def died(self, peer: str) -> None:
        self._free[peer] = 0
        self.ledger.forget(peer)
