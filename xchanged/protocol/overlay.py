"""Which peers a node keeps an eye on, out of a cluster of any size: its view and its sample.

Rules:
- The **view** is the peers we probe (SWIM, one per round) and gossip with: at most `size` of them.
  Up to `size` peers, everyone we know is in it (a small cluster is fully connected, as before). Past
  that, it keeps the known peers with the smallest *pair hash* h(us, them) (a hash of the two ids in
  a fixed order, so h(a, b) = h(b, a)). Each node's view is then a random set of peers, the same
  for every node that has heard of the same peers, and nearly symmetric: b is in a's view about when
  a is in b's, since both compare the same number with the same threshold. So every node is in about
  `size` views, and is probed about once per round whatever the cluster's size, with no coordination
  and no node (a seed, an early joiner) probed by everyone.
- The estimated cluster size follows: with H peers heard of, the `size`-th smallest of H uniform
  hashes is about size / H.
- Probes go round-robin over a shuffled list of the view (SWIM's order: each member probed once per
  pass, in an order no one can predict); a new member is put at a random place in the current pass.
- The **sample** is the peers whose loads are freshest: at most `size`, in order of arrival of their
  newest load. It is what the manager offers work to and what a freed slot is offered to: a bounded
  set of peers with loads fresh enough to bid on, refreshed by gossip, instead of every peer.
Work per operation is O(1) or O(size), never O(cluster).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import OrderedDict
from typing import Callable, Iterator

HASH_SPACE = float(1 << 64)


MASK = (1 << 64) - 1


def pair_hash(a: str, b: str) -> int:
    """h(a, b) = h(b, a), uniform on 64 bits: SplitMix64 of the XOR of the two ids' 64-bit values (node
    ids are 16 hex digits of a SHA-256, signing.node_id); any other id is hashed first."""
    z = (_id_bits(a) ^ _id_bits(b)) + 0x9E3779B97F4A7C15 & MASK
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & MASK
    return z ^ (z >> 31)


def _id_bits(node_id: str) -> int:
    try:
        return int(node_id[1:17], 16) if len(node_id) == 17 else _hashed(node_id)
    except ValueError:
        return _hashed(node_id)


def _hashed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class View:
    def __init__(self, self_id: str, size: int, rng: random.Random):
        self.self_id = self_id
        self.size = max(1, size)
        self.rng = rng
        self.members: dict[str, int] = {}           # peer id -> pair hash
        self._by_hash: list[tuple[int, str]] = []   # max-heap (negated hashes), removed members linger
        self._order: list[str] = []
        self._pos = 0

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.members

    def __len__(self) -> int:
        return len(self.members)

    def offer(self, peer_id: str, h: int = -1) -> tuple[bool, str | None]:
        """A peer we know (again; `h`: its pair hash, if known): (is it in the view now, the member it
        pushed out or None)."""
        if peer_id in self.members or peer_id == self.self_id:
            return peer_id in self.members, None
        if h < 0:
            h = pair_hash(self.self_id, peer_id)
        if len(self.members) < self.size:
            self._add(peer_id, h)
            return True, None
        largest = self._largest_member()
        if h >= largest[0]:
            return False, None
        self.remove(largest[1])
        self._add(peer_id, h)
        return True, largest[1]

    def would_take(self, peer_id: str) -> bool:
        """Would `offer` put this (non-member) peer in the view?"""
        return len(self.members) < self.size or pair_hash(self.self_id, peer_id) < self._largest_member()[0]

    def remove(self, peer_id: str) -> None:
        self.members.pop(peer_id, None)

    def estimate(self) -> int:
        """The cluster's estimated size (us included)."""
        if len(self.members) < self.size:
            return len(self.members) + 1
        return max(len(self.members) + 1, int(self.size * HASH_SPACE / max(1, self._largest_member()[0])))

    def next_probe(self, probeable: Callable[[str], bool]) -> str | None:
        """The next member to probe, round-robin over a shuffled list (reshuffled after each pass)."""
        for _ in range(2):
            while self._pos < len(self._order):
                peer_id = self._order[self._pos]
                self._pos += 1
                if peer_id in self.members and probeable(peer_id):
                    return peer_id
            self._order = list(self.members)
            self.rng.shuffle(self._order)
            self._pos = 0
        return None

    def pick(self, k: int, eligible: Callable[[str], bool]) -> list[str]:
        """Up to k random members for which `eligible` holds."""
        if k <= 0:
            return []
        members = list(self.members)
        if len(members) <= 4 * k:
            pool = [m for m in members if eligible(m)]
            return self.rng.sample(pool, min(k, len(pool)))
        out: list[str] = []
        for m in self.rng.sample(members, min(len(members), 4 * k)):
            if eligible(m):
                out.append(m)
                if len(out) == k:
                    break
        return out

    def _add(self, peer_id: str, h: int) -> None:
        self.members[peer_id] = h
        heapq.heappush(self._by_hash, (-h, peer_id))
        if len(self._by_hash) > 2 * self.size + 16:
            self._by_hash = [(-v, m) for m, v in self.members.items()]
            heapq.heapify(self._by_hash)
        if self._pos < len(self._order):                 # a random place in the rest of this pass
            self._order.insert(self.rng.randint(self._pos, len(self._order)), peer_id)
        # (the pass is over: the next one is shuffled from all the members)
        if len(self._order) > 2 * self.size:            # removed members linger in the order: drop them
            self._order = [m for m in self._order[self._pos:] if m in self.members]
            self._pos = 0

    def _largest_member(self) -> tuple[int, str]:
        heap = self._by_hash
        while self.members.get(heap[0][1]) != -heap[0][0]:       # a member removed since: skip it
            heapq.heappop(heap)
        return -heap[0][0], heap[0][1]


class Sample:
    def __init__(self, size: int):
        self.size = max(1, size)
        self._fresh: OrderedDict[str, None] = OrderedDict()       # oldest load first
        self.roomy: dict[str, None] = {}                          # those whose newest load shows a free slot

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._fresh

    def __len__(self) -> int:
        return len(self._fresh)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fresh)

    def freshest(self) -> Iterator[str]:
        return reversed(self._fresh)

    def touch(self, peer_id: str, roomy: bool = False) -> str | None:
        """A newer load of `peer_id` came (`roomy`: it shows a free slot): it is the freshest now.
        Returns the peer pushed out, if any."""
        if roomy:
            self.roomy[peer_id] = None
        else:
            self.roomy.pop(peer_id, None)
        if peer_id in self._fresh:
            self._fresh.move_to_end(peer_id)
            return None
        self._fresh[peer_id] = None
        if len(self._fresh) > self.size:
            gone = self._fresh.popitem(last=False)[0]
            self.roomy.pop(gone, None)
            return gone
        return None

    def remove(self, peer_id: str) -> None:
        self._fresh.pop(peer_id, None)
        self.roomy.pop(peer_id, None)
