"""SWIM probes: each round we ask one member of our view whether it is alive, and we answer others' asks.

Rules:
- Every `interval` we ping the next member of the view, round-robin over a shuffled list. No pong
  within 0.4 interval: we ask `probe_k` other members to ping it for us (`ping_req`), so one bad link
  cannot get a healthy node suspected. No pong, direct or through a helper, by the end of the
  interval: the probe failed, and membership.py suspects that life of it. Both timeouts grow with our
  local health score (Lifeguard, suspicion.py): a node too slow to hear answers suspects no one for it.
- A ping is answered with a pong to the asker, or back through the node that probes on its behalf;
  a pong for another node is forwarded to it. Every ping and pong carries the sender's own latest
  load and queued gossip (dissemination.py).
- Isolation: a node with a view of some size that is pinged fewer than half as many times as
  ISOLATION_ROUNDS rounds is in few views (it knows too few peers to have found those whose views it
  belongs in): its loads then ask for a welcome (`Membership.joining`), as a newcomer's do.
The probe's state lives on Membership (`probe`, `probe_nonce`, `pinged`, `isolated`), beside the
table it reads; these functions take the membership they work on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .codec import Envelope
from .dissemination import piggyback
from .messages import Ping, PingReq, Pong
from .peers import DEAD, Peer, Target, Transition

if TYPE_CHECKING:
    from .membership import Membership

ISOLATION_ROUNDS = 8           # pinged fewer than half as many times in as many rounds: ask for welcomes


@dataclass(slots=True)
class Probe:
    target: str
    nonce: int
    started: float


def start(m: Membership, now: float) -> None:
    """Ping the next member of the view that is not dead and has an address."""
    target = m.view.next_probe(lambda peer_id: m.peers[peer_id].health != DEAD
                               and bool(m.peers[peer_id].address))
    if target is None:
        return
    peer, s = m.peers[target], m.settings
    m.probe_nonce += 1
    m.probe = Probe(target, m.probe_nonce, now)
    m.stats["probes"] += 1
    m.sends.append((((target, peer.address),),
                    Ping(nonce=m.probe_nonce, reply_to=m.address, gossip=piggyback(m, target))))
    m.deadlines.set(("probe-indirect", m.probe_nonce), now + m.health.scale(0.4 * s.interval))
    m.deadlines.set(("probe-end", m.probe_nonce), now + m.health.scale(s.interval))


def end(m: Membership) -> None:
    if m.probe is not None:
        m.deadlines.cancel(("probe-indirect", m.probe.nonce))
        m.deadlines.cancel(("probe-end", m.probe.nonce))
        m.probe = None


def ask_helpers(m: Membership, nonce: int) -> None:
    """No pong yet: ask `probe_k` other members to ping the target for us."""
    probe = m.probe
    peer = m.peers.get(probe.target) if probe is not None else None
    if probe is None or peer is None or probe.nonce != nonce:
        return
    for helper in m.view.pick(m.settings.probe_k, lambda h: h != probe.target and m.reachable(h)):
        m.sends.append((((helper, m.peers[helper].address),),
                        PingReq(target=probe.target, nonce=probe.nonce, target_address=peer.address,
                                reply_to=m.address)))


def failed(m: Membership, nonce: int) -> Peer | None:
    """The probe's time is up with no pong: it ends, our health gets worse, and the silent peer (if it
    is still in the table and not dead) is returned, for membership to suspect."""
    probe = m.probe
    if probe is None or probe.nonce != nonce:
        return None
    end(m)
    m.health.worse()
    m.stats["probes_failed"] += 1
    peer = m.peers.get(probe.target)
    if peer is None or peer.health == DEAD:
        return None
    return peer


def judge_isolation(m: Membership) -> None:
    """Once every ISOLATION_ROUNDS rounds: were we pinged too rarely to be in our share of views?"""
    if m.rounds % ISOLATION_ROUNDS == 0:
        m.isolated = m.rounds > ISOLATION_ROUNDS and len(m.view) >= 2 * ISOLATION_ROUNDS \
            and m.pinged < ISOLATION_ROUNDS / 2
        m.pinged = 0


def answer_ping(m: Membership, env: Envelope) -> tuple[Target, Pong] | None:
    """Answer a ping: to the asker, or back through the node that probes on its behalf."""
    ping: Ping = env.message
    if ping.reply_via is None:
        m.pinged += 1
    peer = m.peers.get(env.sender)
    address = ping.reply_to or (peer.address if peer is not None else "")
    if not address:
        return None
    return (env.sender, address), Pong(nonce=ping.nonce, for_node=ping.reply_via or env.sender,
                                       for_address=ping.via_address, gossip=piggyback(m, env.sender))


def ping_for(m: Membership, env: Envelope) -> tuple[Target, Ping] | None:
    """A `ping_req`: ping its target on the asker's behalf (the pong comes back through us)."""
    req: PingReq = env.message
    target = m.peers.get(req.target)
    address = req.target_address or (target.address if target is not None else "")
    if not address:
        return None
    asker = m.peers.get(env.sender)
    via = req.reply_to or (asker.address if asker is not None else "")
    return (req.target, address), Ping(nonce=req.nonce, reply_via=env.sender, reply_to=m.address,
                                       via_address=via)


def on_pong(m: Membership, env: Envelope, now: float) -> tuple[list[Transition], Target | None]:
    """A pong for us proves its sender alive (and ends our probe of it); a pong for someone else
    is forwarded to them."""
    pong: Pong = env.message
    transitions = m.on_direct(env, now)
    if pong.for_node == m.self_id:
        probe = m.probe
        if probe is not None and probe.nonce == pong.nonce and probe.target == env.sender:
            end(m)
            m.health.better()
            m.stats["probes_answered"] += 1
        return transitions, None
    asker = m.peers.get(pong.for_node)
    address = pong.for_address or (asker.address if asker is not None else "")
    return transitions, ((pong.for_node, address) if address else None)
