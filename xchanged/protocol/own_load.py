"""Our own load signal: when we sign a fresh one, and whom it goes to (seeds included).

Rules:
- Our own load: signed when it changed materially, every `refresh_rounds` rounds, when our view
  gained members, or to refute; sent to ourselves (the driver loops it back, so we hold its signed
  bytes to piggyback) and to the view's new members (they hear of us and, the pair hash being the
  same both ways, take us into their view: views stay nearly symmetric, so every node is probed
  and gossiped to about equally) or else one member; marked news when it refutes or when what we
  are changed (address, slots, labels, resources).
- Seeds: our load goes to every seed each round until the seed's node is known alive (again, if it
  is declared dead). While we know no live peer (or are isolated: probing.py), our loads say
  `joining`, and a node that gets one directly answers with a welcome: its load and its table's, in
  one gossip batch. Seeds whose node we know (mDNS gives its key): one address per node; a
  rediscovered node's old discovered address is dropped (a configured seed stays); a suspect or dead
  node's address moves with it at once. Such a seed is left alone while its node is live and was
  heard from (a load) since the seed was announced.
- The dead peer picked for the round (membership.py) gets our load too, so a healed partition rejoins.
What these functions read and write lives on Membership (`announce`, `own_news`, `greet`, `seeds`,
`seed_owner`, `seed_peers`, ...); they take the membership they work on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .messages import LOAD_CHANGE, LOAD_HEARTBEAT, LOAD_NEWS, Load
from .peers import ALIVE, DEAD, Target

if TYPE_CHECKING:
    from .membership import Membership

GREETINGS = 1                  # new view members our load goes to in a round (the others in the next ones)


def due(m: Membership, load: Load) -> bool:
    """Called once per round with our current load: sign and send a fresh one? Yes when it
    changed materially, every `refresh_rounds` rounds, or when it is news (`announce`). Sets
    `own_news`: what the load says of itself (Load.news)."""
    if structural_change(m.own_load_signed, load):
        m.announce = True
    changed = material_change(m.own_load_signed, load)
    m.own_news = LOAD_NEWS if m.announce else LOAD_CHANGE if changed else LOAD_HEARTBEAT
    if m.announce or changed or m.greet or m.isolated \
            or m.rounds - m.own_round >= m.settings.refresh_rounds:
        m.own_load_signed, m.own_round = load, m.rounds
        return True
    return False


def targets(m: Membership, live_too: bool = True) -> list[Target]:
    """Who gets our load this round: ourselves (its bytes come back to piggyback: it rides our
    probes and gossip from then on) and a member new to our view (so it hears of
    us, and likely takes us into its own: the pair hash is the same both ways), else one random
    member (when `live_too`); every seed whose node is not known alive, the dead peer of the round."""
    found: dict[str, Target] = {}
    if live_too:
        if m.address:
            found[m.address] = (m.self_id, m.address)
        greet = [p for p in m.greet if p in m.view and m.reachable(p)][:GREETINGS]
        for peer_id in greet:
            del m.greet[peer_id]
        if not greet:
            m.greet.clear()
        for peer_id in greet or m.view.pick(1, m.reachable):
            peer = m.peers[peer_id]
            found.setdefault(peer.address, (peer.id, peer.address))
    for address in m.seeds:
        if seed_due(m, address):
            found.setdefault(address, ("", address))
    if m.dead_target is not None:
        found.setdefault(m.dead_target[1], m.dead_target)
    return list(found.values())


def refutation_targets(m: Membership) -> list[Target]:
    """A refutation is due: where our fresh `announce` load goes now (tellers, fanout members, us)."""
    tellers, m.refute_to = m.refute_to or {}, None
    m.announce = True
    found = dict(tellers)
    for address, target in ((t[1], t) for t in targets(m)):
        found.setdefault(address, target)
    return list(found.values())


def add_seed(m: Membership, address: str, source: str = "seed", node: str = "", now: float = 0.0) -> None:
    """A static or discovered address to send our load to; `node`: whose it is, when known."""
    if not address:
        return
    if node and node != m.self_id:
        for old, (owner, _) in list(m.seed_owner.items()):
            if owner == node and old != address:        # it moved: forget where it was
                del m.seed_owner[old]
                if m.seeds.get(old) == source:          # a configured seed at that address stays
                    del m.seeds[old]
        m.seed_owner[address] = (node, now)
        peer = m.peers.get(node)
        if peer is not None and peer.health != ALIVE:
            peer.address = address
    m.seeds.setdefault(address, source)


def seed_due(m: Membership, address: str) -> bool:
    """Does a seed need our load this round? Until a live peer answers from it (for a seed whose
    node is known: until that node's load came after the seed was announced), and again once
    that peer is declared dead. A peer merely forgotten (the sample moved on) needs nothing."""
    owner = m.seed_owner.get(address)
    if owner is not None:
        peer = m.peers.get(owner[0])
        if peer is None:
            return owner[0] not in m.seed_peers.values() or owner[0] in m.obituaries
        return peer.health == DEAD or peer.load is None or peer.load_received < owner[1]
    found = m.seed_peers.get(address)
    if found is None:
        found = next((p.id for p in m.peers.values() if p.address == address and p.health != DEAD), None)
        if found is None:
            return True
        m.seed_peers[address] = found
    peer = m.peers.get(found)
    return found in m.obituaries if peer is None else peer.health == DEAD or peer.address != address


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


def structural_change(old: Load | None, new: Load) -> bool:
    """What the node is changed (not how busy it is): news for every node, announced at once."""
    return old is not None and (old.name, old.address, old.slots, old.cpus, old.mem_total, old.labels,
                                len(old.gpus)) != (new.name, new.address, new.slots, new.cpus, new.mem_total,
                                                   new.labels, len(new.gpus))
