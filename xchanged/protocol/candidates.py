"""Whom our manager may ask for a slot: ourselves and a bounded set of peers of the sample.

Rules:
- Ourselves first, then peers of the sample (membership.py): a bounded set with fresh loads,
  whatever the cluster's size; the work is bounded likewise. While the sample has at most
  `max_candidates` peers, all of them (a small cluster: everyone).
- Past that: about two believed free per waiting task, at random among those whose newest load shows
  a free slot (the power of two choices, as Sparrow samples: a manager asking every free-looking peer
  of a large sample would reserve slots all over the cluster for one task and be refused by most, and
  managers that heard the same load would all rush to it), and the OTHER_CANDIDATES freshest believed
  busy (their queues, room to coordinate a composite, and why a task waits).
- A draining peer is offered with no free slot: never asked, still counted.
- A peer handed to the manager is kept in the table until `keep_until` (it may bid, be awarded or be
  told its bid lost), however the sample turns over (`handed_lately`, the node's `keep`).
"""

from __future__ import annotations

from collections import OrderedDict

from .free_slots import PeerBeliefs
from .membership import ALIVE, Membership, Peer
from .scheduling import Candidate

OTHER_CANDIDATES = 8            # in a large sample: the freshest peers offered besides the ones believed free


class Candidates:
    def __init__(self) -> None:
        self.handed: OrderedDict[str, float] = OrderedDict()   # peers handed to the manager -> until when kept

    def handed_lately(self, peer_id: str, now: float) -> bool:
        return self.handed.get(peer_id, -1.0) >= now

    def pick(self, own: Candidate, m: Membership, beliefs: PeerBeliefs, queued: int, most: int,
             keep_until: float, now: float) -> list[Candidate]:
        """`own` and the peers offered to the manager now (`queued`: its tasks waiting)."""
        out = [own]
        if len(m.sample) <= most:
            peers = m.healthy()
        else:
            peers = self._sampled(m, beliefs, min(2 * max(1, queued), m.sample.size))
        handed = self.handed
        while handed and next(iter(handed.values())) < now:
            handed.popitem(last=False)
        for peer in peers:
            load = peer.load
            if load is None:
                continue
            handed[peer.id] = keep_until
            handed.move_to_end(peer.id)
            if load.draining:                                   # finishing its work: never asked
                out.append(Candidate(peer.id, load.name, peer.address, load.slots, 0, load.labels, load))
                continue
            free = beliefs.free(peer.id, load.slots_free)
            out.append(Candidate(peer.id, load.name, peer.address, load.slots, free, load.labels, load,
                                 queue=load.queue_free, coord=load.coord_free))
        return out

    @staticmethod
    def _sampled(m: Membership, beliefs: PeerBeliefs, want: int) -> list[Peer]:
        """A large sample: `want` at random among those believed free, and the freshest few busy."""
        roomy = list(m.sample.roomy)
        peers = []
        for peer_id in m.rng.sample(roomy, min(len(roomy), 2 * want)):
            peer = m.peers[peer_id]
            if peer.health == ALIVE and peer.load is not None and beliefs.free(peer_id, peer.load.slots_free) > 0:
                peers.append(peer)
                if len(peers) == want:
                    break
        chosen = {p.id for p in peers}
        others = 0
        for peer_id in m.sample.freshest():
            peer = m.peers[peer_id]
            if peer_id not in chosen and peer.health == ALIVE and peer.load is not None \
                    and beliefs.free(peer_id, peer.load.slots_free) <= 0:
                peers.append(peer)
                others += 1
                if others == OTHER_CANDIDATES:
                    break
        return peers
