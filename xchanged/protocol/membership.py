"""The peer table: who is there, how loaded, and whether they are alive.

Rules:
- A peer enters the table with its first verified load signal (which carries its address).
- Any verified frame from a peer, or a newer load relayed by others, counts as hearing from it.
- Load signals are ordered by (incarnation, seq); an older or equal one is a duplicate, dropped.
- Not heard for `suspect_after`: SUSPECT. We probe it directly (`ping`) and through `probe_k` other
  peers (`ping_req`), so one lossy link alone cannot get a healthy node declared dead; the probes are
  repeated every `interval` while it stays suspect, so one lost probe does not either.
- Not heard for `dead_after`: DEAD. A dead peer that is heard from again (a newer load, a higher
  incarnation after a restart, a healed partition) is ALIVE again.
- Gossip: every `interval` we forward the new loads we received to `fanout` random peers, all in one
  `gossip` batch (original signed bytes, at most `max_batch`, fewest-forwarded first); each new load
  is forwarded in `relay_rounds` rounds. We sign a fresh load of our own only when it changed
  materially or every `refresh_rounds()` rounds (a heartbeat), and send it to `fanout` peers. Seeds
  not yet known as live peers and one dead peer get our load every round, so partitions heal and
  seeds join us.
- Seeds whose node we know (mDNS gives its key): one address per node. Rediscovered at a new address,
  the node's old discovered address is dropped (a configured seed stays), so a node that moved is not
  sent load at its old address forever; a suspect or dead node's address moves with it at once (a
  live one keeps the address its signed loads give). Such a seed is left alone while its node is
  live and was heard from (a load) since the seed was announced: it is reachable where it says.
- Scaling: the refresh period grows with N so that the loads due for forwarding fit one batch
  (N * relay_rounds / refresh <= max_batch), so a node sends O(fanout) frames per round whatever N;
  suspect_after and dead_after grow by the extra heartbeat period and the extra dissemination
  rounds beyond log2(16), so they stay sound when we hear of a peer only every few rounds. Up to
  16 nodes nothing changes: a fresh load every round, the configured timeouts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .codec import Envelope
from .messages import Load, Ping, PingReq, Pong

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"


@dataclass(frozen=True, slots=True)
class GossipSettings:
    interval: float = 0.5
    fanout: int = 3
    suspect_after: float = 1.5
    dead_after: float = 4.0
    probe_k: int = 3
    max_batch: int = 128          # relayed frames per gossip message (messages.MAX_GOSSIP_FRAMES at most)


@dataclass(slots=True)
class Peer:
    id: str
    key: bytes
    address: str = ""
    health: str = ALIVE
    last_heard: float = 0.0
    load: Load | None = None
    load_version: tuple[int, int] = (-1, -1)   # (incarnation, seq) of `load`
    load_frame: bytes = b""
    load_received: float = 0.0
    relay_left: int = 0
    incarnation: int = -1
    probe_nonce: int | None = None
    probe_sent: float = 0.0

    @property
    def name(self) -> str:
        return self.load.name if self.load else ""


@dataclass(slots=True)
class Transition:
    peer: Peer
    health: str


@dataclass(slots=True)
class Membership:
    self_id: str
    settings: GossipSettings
    rng: random.Random
    peers: dict[str, Peer] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)        # address -> source
    seed_owner: dict[str, tuple[str, float]] = field(default_factory=dict)  # address -> (node id, announced at)
    next_round: float = 0.0
    _nonce: int = 0
    _round: int = 0
    _own_round: int = -(1 << 30)                               # round our last load was signed
    _own_load: Load | None = None

    # -- input ----------------------------------------------------------------------------------

    def on_load(self, env: Envelope, now: float, wall_ms: int | None = None) -> tuple[bool, list[Transition]]:
        """A load signal, direct or relayed. Returns (is_new, transitions).

        It proves its node alive when the node signed it, not when a relay delivered it: a load that
        spent a round or two being relayed must not postpone the death of a node killed meanwhile. The
        age comes from the signer's timestamp, so it is clamped to `2 * interval` (clock skew between
        hosts can then cost a little freshness, never a false death)."""
        load: Load = env.message
        if env.sender == self.self_id:
            return False, []
        peer = self.peers.get(env.sender)
        version = (env.incarnation, env.seq)
        if peer is None:
            peer = self.peers[env.sender] = Peer(env.sender, env.sender_key)
        elif version <= peer.load_version:
            return False, []
        peer.load, peer.load_version, peer.load_frame = load, version, env.raw
        peer.load_received = now
        peer.address = load.address
        peer.relay_left = self._relay_rounds()
        age = 0.0 if wall_ms is None else min(max(0.0, (wall_ms - env.ts_ms) / 1000), 2 * self.settings.interval)
        return True, self._heard(peer, env.incarnation, now - age)

    def on_direct(self, env: Envelope, now: float) -> list[Transition]:
        """Any other verified frame from a known peer proves it alive."""
        peer = self.peers.get(env.sender)
        if peer is None:
            return []
        return self._heard(peer, env.incarnation, now)

    def _heard(self, peer: Peer, incarnation: int, now: float) -> list[Transition]:
        if incarnation < peer.incarnation:
            return []                                  # a stale frame of a previous life
        peer.incarnation = incarnation
        peer.last_heard = max(peer.last_heard, now)
        peer.probe_nonce = None
        if peer.health != ALIVE:
            peer.health = ALIVE
            return [Transition(peer, ALIVE)]
        return []

    def add_seed(self, address: str, source: str = "seed", node: str = "", now: float = 0.0) -> None:
        """A static or discovered address to send our load to; `node`: whose it is, when known."""
        if not address:
            return
        if node and node != self.self_id:
            for old, (owner, _) in list(self.seed_owner.items()):
                if owner == node and old != address:        # it moved: forget where it was
                    del self.seed_owner[old]
                    if self.seeds.get(old) == source:       # a configured seed at that address stays
                        del self.seeds[old]
            self.seed_owner[address] = (node, now)
            peer = self.peers.get(node)
            if peer is not None and peer.health != ALIVE:
                peer.address = address
        self.seeds.setdefault(address, source)

    # -- probes ---------------------------------------------------------------------------------

    def on_ping(self, env: Envelope) -> tuple[tuple[str, str], Pong] | None:
        """Answer a ping: to the asker, or back through the node that probes on its behalf."""
        peer = self.peers.get(env.sender)
        if peer is None or not peer.address:
            return None
        ping: Ping = env.message
        return (peer.id, peer.address), Pong(nonce=ping.nonce, for_node=ping.reply_via or env.sender)

    def on_ping_req(self, env: Envelope) -> tuple[tuple[str, str], Ping] | None:
        req: PingReq = env.message
        target = self.peers.get(req.target)
        if target is None or not target.address:
            return None
        return (target.id, target.address), Ping(nonce=req.nonce, reply_via=env.sender)

    def on_pong(self, env: Envelope, now: float) -> tuple[list[Transition], tuple[str, str] | None]:
        """A pong for us proves its sender alive; a pong for someone else is forwarded to them."""
        pong: Pong = env.message
        transitions = self.on_direct(env, now)
        if pong.for_node == self.self_id:
            return transitions, None
        asker = self.peers.get(pong.for_node)
        if asker is None or not asker.address:
            return transitions, None
        return transitions, (asker.id, asker.address)

    # -- time -----------------------------------------------------------------------------------

    def check_health(self, now: float) -> tuple[list[Transition], list[tuple[tuple[str, str], Ping | PingReq]]]:
        """Suspect and kill silent peers. Returns transitions and probe messages to send."""
        s = self.settings
        suspect_after, dead_after = self.suspect_after, self.dead_after
        transitions: list[Transition] = []
        probes: list[tuple[tuple[str, str], Ping | PingReq]] = []
        for peer in self.peers.values():
            if peer.health == DEAD:
                continue
            # compare as next_deadline() computes (last_heard + x), or float rounding can leave a
            # deadline that has passed but changes nothing: a busy loop
            if now >= peer.last_heard + dead_after:
                peer.health = DEAD
                transitions.append(Transition(peer, DEAD))
            elif now >= peer.last_heard + suspect_after and peer.health == ALIVE:
                peer.health = SUSPECT
                transitions.append(Transition(peer, SUSPECT))
            if peer.health == SUSPECT and peer.address and (
                    peer.probe_nonce is None or now >= peer.probe_sent + s.interval):
                self._nonce += 1
                peer.probe_nonce, peer.probe_sent = self._nonce, now
                probes.append(((peer.id, peer.address), Ping(nonce=self._nonce)))
                helpers = [p for p in self.live_peers() if p.id != peer.id]
                for helper in self.rng.sample(helpers, min(s.probe_k, len(helpers))):
                    probes.append(((helper.id, helper.address), PingReq(target=peer.id, nonce=self._nonce)))
        return transitions, probes

    def next_deadline(self) -> float:
        deadline = self.next_round
        suspect_after, dead_after = self.suspect_after, self.dead_after
        for peer in self.peers.values():
            if peer.health == ALIVE:
                deadline = min(deadline, peer.last_heard + suspect_after)
            elif peer.health == SUSPECT:
                deadline = min(deadline, peer.last_heard + dead_after)
                if peer.probe_nonce is not None:
                    deadline = min(deadline, peer.probe_sent + self.settings.interval)
        return deadline

    def own_load_due(self, load: Load) -> bool:
        """Called once per gossip round with our current load: should live peers get a fresh one?
        Yes when it changed materially since the last one we sent, or every `refresh_rounds()`."""
        self._round += 1
        if material_change(self._own_load, load) or self._round - self._own_round >= self.refresh_rounds():
            self._own_load, self._own_round = load, self._round
            return True
        return False

    def gossip_targets(self, live_too: bool = True) -> list[tuple[str, str]]:
        """Who gets our own load this round: `fanout` random live peers (when `live_too`), every seed
        not known as a live peer, one dead peer."""
        targets = {}
        if live_too:
            live = [p for p in self.live_peers() if p.address]
            chosen = self.rng.sample(live, min(self.settings.fanout, len(live)))
            targets = {p.address: (p.id, p.address) for p in chosen}
        known = {p.address for p in self.peers.values() if p.health != DEAD}
        for address in self.seeds:
            if address not in known and not self._seed_reached(address):
                targets.setdefault(address, ("", address))
        dead = [p for p in self.peers.values() if p.health == DEAD and p.address]
        if dead:
            p = self.rng.choice(dead)
            targets.setdefault(p.address, (p.id, p.address))
        return list(targets.values())

    def relays(self) -> list[tuple[list[tuple[str, str]], list[bytes]]]:
        """Loads to forward this round: one batch of at most `max_batch` frames (those forwarded the
        fewest times first; the rest wait, or are superseded by a newer load of their origin) for
        `fanout` random live peers. Returns [(targets, frames)], empty when nothing is due."""
        due = [p for p in self.peers.values() if p.relay_left > 0 and p.load_frame]
        if not due:
            return []
        if len(due) > self.settings.max_batch:
            due.sort(key=lambda p: (-p.relay_left, -p.load_received))
            due = due[:self.settings.max_batch]
        live = [p for p in self.live_peers() if p.address]
        chosen = self.rng.sample(live, min(self.settings.fanout, len(live)))
        if not chosen:
            return []
        for peer in due:
            peer.relay_left -= 1
        return [([(p.id, p.address) for p in chosen], [p.load_frame for p in due])]

    def _seed_reached(self, address: str) -> bool:
        """The seed's node (if known) is live and its load came after the seed was announced."""
        owner = self.seed_owner.get(address)
        if owner is None:
            return False
        peer = self.peers.get(owner[0])
        return peer is not None and peer.health != DEAD and peer.load is not None and peer.load_received >= owner[1]

    # -- queries --------------------------------------------------------------------------------

    def live_peers(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.health != DEAD]

    def healthy(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.health == ALIVE and p.load is not None]

    def _relay_rounds(self) -> int:
        return max(1, math.ceil(math.log2(len(self.peers) + 2)) // 2 + 1)

    def refresh_rounds(self) -> int:
        """Rounds between our unchanged loads: every node's load is forwarded by every node in
        `relay_rounds` rounds, so N * relay_rounds / refresh loads are due per round; keep that
        within one batch."""
        return max(1, math.ceil((len(self.peers) + 1) * self._relay_rounds() / max(1, self.settings.max_batch)))

    def slack(self) -> float:
        """What suspect_after and dead_after grow by: the heartbeat period beyond one round, and the
        dissemination rounds beyond log2(16) = 4."""
        extra_hops = max(0, math.ceil(math.log2(len(self.peers) + 1)) - 4)
        return (self.refresh_rounds() - 1 + extra_hops) * self.settings.interval

    @property
    def suspect_after(self) -> float:
        return self.settings.suspect_after + self.slack()

    @property
    def dead_after(self) -> float:
        return self.settings.dead_after + self.slack()


def material_change(old: Load | None, new: Load) -> bool:
    """Worth a fresh signed load before the next heartbeat: slots, queue, labels, address, audit
    head, GPUs or draining changed, cpu moved 10 points, available memory 10% of the total."""
    if old is None:
        return True
    if (old.slots, old.slots_free, old.running, old.queued, old.name, old.address, old.labels, old.audit_head,
            len(old.gpus), old.draining) != (new.slots, new.slots_free, new.running, new.queued, new.name,
                                             new.address, new.labels, new.audit_head, len(new.gpus), new.draining):
        return True
    if abs(new.cpu_percent - old.cpu_percent) >= 10 or abs(new.mem_available - old.mem_available) > new.mem_total / 10:
        return True
    return any(abs(a.mem_free - b.mem_free) > b.mem_total / 10 or abs(a.util_percent - b.util_percent) >= 10
               for a, b in zip(old.gpus, new.gpus))
