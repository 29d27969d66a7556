"""Membership: SWIM probing, suspicion and refutation, death, rejoin, indirect probes, seeds, and
gossip dissemination.

Two drivers, both with time passed in by hand: `Membership` alone, fed real signed frames (decoded
by the codec, as the daemon does), and `SimCluster`, which runs whole Nodes on a virtual clock and
network. Timings come from GossipSettings, never from patched constants.

Adapted for issue 17 (SWIM): silence alone no longer makes a peer suspect (probes do: `probe`,
`fail_probe`), a suspicion is gossiped and ends in death after a Lifeguard timeout, and only a load
of a higher life (a refutation, a restart) brings back a peer others suspect or declared dead.
"""

from __future__ import annotations

import math
import random

import pytest

from xchanged.protocol import codec
from xchanged.protocol.membership import ALIVE, DEAD, SUSPECT, GossipSettings, Membership
from xchanged.protocol.messages import Dead, Gossip, Load, Ping, PingReq, Pong, Suspect
from xchanged.protocol.signing import TrustStore
from xchanged.sim.cluster import SimCluster

from .fakes import FakePeer

S = GossipSettings()                    # the shipped defaults: 0.5 s / 1.5 s / 4 s, fanout 3, k 3
WALL = 1_790_000_000_000


class Ident(FakePeer):
    """A node identity that signs frames; `env(msg)` (its load by default) is what the codec hands the core."""

    def __init__(self, name: str, trust: TrustStore):
        super().__init__(name, trust)
        self.address = f"{name}:7946"

    def load(self, slots_free: int = 2, refutes: int = 0, **fields) -> Load:
        return Load(name=self.name, address=self.address, slots=2, slots_free=slots_free, running=0, queued=0,
                    cpus=2, cpu_percent=5.0, mem_total=1 << 30, mem_available=1 << 29, refutes=refutes, **fields)

    def env(self, message=None, t: float = 0.0):
        return super().env(message or self.load(), t)


def table(n_peers: int, **settings):
    """A membership table of a node that has heard one load from each of `n_peers` peers."""
    trust = TrustStore({})
    me = Ident("me", trust)
    m = Membership(me.id, GossipSettings(**settings) if settings else S, random.Random(1), me.address)
    peers = [Ident(f"p{i}", trust) for i in range(n_peers)]
    for p in peers:
        m.on_load(p.env(), 0.0)
    for p in peers:                                       # the news of them (new to us) is passed on
        m.broadcasts.drop(("load", p.id))
    m.deadlines.cancel(("eager",))
    m.take_sends()
    return m, peers


def sent(m: Membership, kind: type) -> list[tuple[tuple, object]]:
    return [(targets, msg) for targets, msg in m.take_sends() if isinstance(msg, kind)]


def probe(m: Membership, now: float) -> Ping:
    """Run the round due at `now`; returns the ping it sent."""
    m.next_round = now
    m.on_timer(now)
    ping = [(t, msg) for t, msg in m.sends if isinstance(msg, Ping)]
    assert len(ping) == 1, m.sends
    return ping[0][1]


def probe_target(m: Membership, peers: list[Ident], now: float) -> tuple[Ident, Ping]:
    ping = probe(m, now)
    target = next(p for p in peers if p.id == m.probe.target)
    return target, ping


def fail_probe(m: Membership, now: float) -> list:
    """Let the probe started at `now` go unanswered to its end; returns the transitions."""
    transitions, _ = m.on_timer(now + 0.4 * S.interval)
    more, _ = m.on_timer(now + S.interval)
    return transitions + more


# -- SWIM: probe, suspect, die ------------------------------------------------------------------

def test_a_silent_peer_is_probed_directly_then_through_k_others_then_suspected_then_dead():
    m, peers = table(5)
    m.on_timer(0.0)                                        # round 1 probes someone; it answers
    first = next(p for p in peers if p.id == m.probe.target)
    m.on_pong(first.env(Pong(nonce=m.probe.nonce, for_node=m.self_id)), 0.01)
    assert m.probe is None and m.health.score == 0
    m.take_sends()

    target, ping = probe_target(m, peers, S.interval)
    assert ping.reply_to == m.address and ping.nonce == m.probe.nonce
    m.take_sends()
    assert m.on_timer(S.interval + 0.4 * S.interval - 0.01) == ([], False)
    m.on_timer(S.interval + 0.4 * S.interval)              # no pong yet: ask k others
    reqs = sent(m, PingReq)
    assert len(reqs) == S.probe_k
    assert all(msg.target == target.id and msg.target_address == target.address and to[0][0] != target.id
               for to, msg in reqs)

    transitions, _ = m.on_timer(2 * S.interval)            # the probe's end: suspect it, and say so
    assert [(t.peer.id, t.health) for t in transitions] == [(target.id, SUSPECT)]
    (to, notice), = sent(m, Suspect)
    assert notice == Suspect(target.id, 1, 0) and (target.id, target.address) in to and m.self_id in dict(to)
    assert m.peers[target.id] not in m.healthy()           # a suspect gets no call for proposals
    assert m.health.score == 1                             # a probe of ours went unanswered
    m.next_round = 100.0                                   # no more rounds in this test
    m._end_probe()

    nobody_confirms = m.deadlines.get(("suspicion", target.id))
    assert nobody_confirms == pytest.approx(2 * S.interval + S.dead_after - S.interval)
    transitions, _ = m.on_timer(nobody_confirms)
    assert [(t.peer.id, t.health) for t in transitions] == [(target.id, DEAD)]
    (to, verdict), = sent(m, Dead)
    assert verdict == Dead(target.id, 1, 0) and (target.id, target.address) in to
    assert target.id not in {p.id for p in m.live_peers()} and target.id not in m.view
    for k in range(3, 30):                                 # dead: never probed again
        m.next_round = k * S.interval
        m.on_timer(k * S.interval)
        assert m.probe is None or m.probe.target != target.id
        m.probe = None


def test_independent_suspicions_shorten_the_time_to_a_verdict():
    m, peers = table(6)
    a, b, c, d = peers[:4]
    m.on_suspect(b.env(Suspect(a.id, 1, 0)), 1.0)
    assert m.peers[a.id].health == SUSPECT
    alone = m.deadlines.get(("suspicion", a.id))
    assert alone == pytest.approx(1.0 + S.dead_after - S.interval)
    m.on_suspect(c.env(Suspect(a.id, 1, 0)), 1.1)
    m.on_suspect(c.env(Suspect(a.id, 1, 0)), 1.2)          # the same suspecter again: no news
    two = m.deadlines.get(("suspicion", a.id))
    m.on_suspect(d.env(Suspect(a.id, 1, 0)), 1.3)
    assert alone > two > m.deadlines.get(("suspicion", a.id))
    m.on_suspect(peers[4].env(Suspect(a.id, 1, 0)), 1.4)
    assert m.deadlines.get(("suspicion", a.id)) == pytest.approx(1.0 + S.suspect_after - S.interval)


def test_a_suspicion_of_an_older_life_or_of_a_dead_peer_changes_nothing():
    m, (a, b) = table(2)
    a.restart()
    m.on_load(a.env(), 1.0)                                # a is in its second life
    assert m.on_suspect(b.env(Suspect(a.id, 1, 0)), 1.1) == []
    assert m.peers[a.id].health == ALIVE
    m.on_dead(b.env(Dead(a.id, 2, 0)), 1.2)
    assert m.peers[a.id].health == DEAD
    assert m.on_suspect(b.env(Suspect(a.id, 2, 0)), 1.3) == []


def test_a_suspect_heard_from_directly_is_alive_but_a_relayed_load_of_its_life_proves_nothing():
    m, (a, b) = table(2)
    m.on_suspect(b.env(Suspect(a.id, 1, 0)), 1.0)
    assert m.peers[a.id].health == SUSPECT
    is_new, transitions = m.on_load(a.env(), 1.2, relayed=True)       # newer, but maybe signed before it died
    assert is_new and transitions == [] and m.peers[a.id].health == SUSPECT
    # a frame straight from it (a pong, a bid...) clears our own suspicion
    assert [t.health for t in m.on_direct(a.env(Pong(nonce=1, for_node=m.self_id)), 1.3)] == [ALIVE]
    assert ("suspicion", a.id) not in m.deadlines
    # ... and a load of its next life (its refutation) clears a suspicion that others spread
    m.on_suspect(b.env(Suspect(a.id, 1, 0)), 1.4)
    is_new, transitions = m.on_load(a.env(a.load(refutes=1)), 1.5, relayed=True)
    assert [t.health for t in transitions] == [ALIVE] and m.peers[a.id].life == (1, 1)


def test_old_or_duplicate_loads_do_not_count_and_a_stale_incarnation_cannot_refute():
    m, (a, b) = table(2)
    first = a.env()
    a.restart()                                          # a came back: incarnation 2
    newer = a.env()
    assert m.on_load(newer, 1.0)[0] is True
    assert m.on_load(newer, 1.1)[0] is False             # the same signal relayed again: a duplicate
    assert m.on_load(first, 1.2)[0] is False             # older incarnation
    m.on_suspect(b.env(Suspect(a.id, 2, 0)), 1.5)
    assert m.peers[a.id].health == SUSPECT
    assert m.on_direct(first, 3.0) == []                 # a frame of its previous life refutes nothing
    assert m.peers[a.id].health == SUSPECT


def test_a_dead_peer_rejoins_with_a_higher_incarnation_and_stale_news_of_it_is_ignored():
    m, (a, b) = table(2)
    old_life = a.env()
    m.on_dead(b.env(Dead(a.id, 1, 0)), 2.0)
    assert m.peers[a.id].health == DEAD
    assert m.on_load(old_life, 2.5, relayed=True)[1] == []     # a relay of the dead life: still dead
    a.restart()
    is_new, transitions = m.on_load(a.env(), 10.0)
    assert is_new and [t.health for t in transitions] == [ALIVE]
    assert m.peers[a.id].incarnation == 2 and m.peers[a.id].load_version == (2, 1)
    assert m.peers[a.id] in m.healthy()


def test_a_node_told_it_is_suspected_or_dead_refutes_with_a_higher_life():
    m, (a, b) = table(2)
    m.on_suspect(a.env(Suspect(m.self_id, 1, 0)), 1.0)
    assert m.refutes == 1 and m.health.score == 1
    assert (a.id, a.address) in m.take_refutation() and m.announce    # sign a fresh load of life (., 1), now
    m.sent_own_load()
    m.on_dead(b.env(Dead(m.self_id, 1, 0)), 2.0)            # an older word than our refutation
    assert m.refutes == 1 and m.refute_to is None
    m.on_dead(b.env(Dead(m.self_id, 1, 1)), 2.5)            # ... and one of our current life
    assert m.refutes == 2 and (b.id, b.address) in m.take_refutation()


def test_a_dead_peer_still_gets_our_load_and_its_verdict_so_a_healed_partition_rejoins():
    m, (a, b) = table(2)
    m.on_dead(b.env(Dead(a.id, 1, 0)), 1.0)
    m.take_sends()
    m.on_timer(1.0)                                        # the round: one dead peer a round is told
    assert [(to, msg) for to, msg in m.take_sends() if isinstance(msg, Dead)] == [
        (((a.id, a.address),), Dead(a.id, 1, 0))]
    assert (a.id, a.address) in m.own_load_targets()


def test_news_is_gossiped_at_once_and_ahead_of_routine_loads():
    m, (a, b, c) = table(3)
    m.next_round = 100.0
    m.on_suspect(b.env(Suspect(a.id, 1, 0)), 1.0)
    assert m.deadlines.get(("eager",)) == 1.0              # at once
    m.take_sends()
    m.on_timer(1.0)
    (to, batch), = sent(m, Gossip)
    assert codec.decode(batch.frames[0], b.trust).message == Suspect(a.id, 1, 0)
    assert len(to) <= S.fanout
    m.on_dead(c.env(Dead(a.id, 1, 0)), 1.01)               # more news soon after: waits a quarter interval
    assert m.deadlines.get(("eager",)) == pytest.approx(1.0 + S.interval / 4)


# -- seeds ---------------------------------------------------------------------------------------

def test_seeds_get_our_load_until_a_live_peer_answers_from_that_address():
    m, (a,) = table(1)
    m.add_seed("10.0.0.9:7946", "mdns")
    m.add_seed(a.address)
    targets = m.own_load_targets()
    assert ("", "10.0.0.9:7946") in targets
    assert [t for t in targets if t[1] == a.address] == [(a.id, a.address)]


def test_a_joining_node_is_welcomed_with_our_table():
    m, (a, b) = table(2)
    trust = a.trust
    j = Ident("joiner", trust)
    m.on_load(j.env(j.load(joining=True)), 1.0)
    (to, welcome), = sent(m, Gossip)
    assert to == ((j.id, j.address),)
    assert {codec.decode(f, trust).sender for f in welcome.frames} >= {a.id, b.id}
    k = Ident("other", trust)
    m.on_load(k.env(), 1.0)                                 # not joining: no welcome
    m.on_load(j.env(j.load(joining=True)), 1.1, relayed=True)    # relayed: not for us to answer
    assert sent(m, Gossip) == []


def addresses(targets) -> set[str]:
    return {address for _, address in targets}


def test_a_moved_mdns_peer_is_reached_at_its_new_address_only():
    m, (a, b) = table(2)
    old = a.address
    m.add_seed(old, "mdns", a.id, now=0.0)
    # a restarts elsewhere; mDNS finds it there (its key says who it is)
    a.address = "10.0.0.77:7946"
    m.add_seed(a.address, "mdns", a.id, now=1.0)
    assert old not in m.seeds and m.seeds[a.address] == "mdns"          # the stale seed is dropped
    assert (("", a.address)) in m.own_load_targets()                     # the new one gets our load
    a.restart()
    m.on_load(a.env(t=1.2), 1.2)                                       # its load says where it is now
    assert m.peers[a.id].address == a.address
    for round_ in range(20):                                           # from now on: never the old one
        m.on_load(a.env(t=1.5 + round_), 1.5 + round_)
        m.on_load(b.env(t=1.5 + round_), 1.5 + round_)
        targets = m.own_load_targets()
        assert old not in addresses(targets) and ("", a.address) not in targets, targets


def test_a_dead_peer_rediscovered_elsewhere_is_probed_there():
    m, (a, b) = table(2)
    m.on_dead(b.env(Dead(a.id, 1, 0)), S.dead_after)
    assert m.peers[a.id].health == DEAD
    m.add_seed("10.0.0.78:7946", "mdns", a.id, now=S.dead_after)
    assert m.peers[a.id].address == "10.0.0.78:7946"
    assert a.address not in addresses(m.own_load_targets())


def test_a_seed_of_a_node_that_advertises_another_address_stops_once_it_is_heard():
    """mDNS announces an IP; the node's signed loads give its hostname: the IP needs no load of ours
    once the node is live and heard from since."""
    m, (a, b) = table(2)
    m.add_seed("10.0.0.5:7946", "mdns", a.id, now=1.0)
    assert ("", "10.0.0.5:7946") in m.own_load_targets()                 # not heard since the announcement
    m.on_load(a.env(t=1.5), 1.5)
    assert "10.0.0.5:7946" not in addresses(m.own_load_targets())
    m.on_dead(b.env(Dead(a.id, 1, 0)), 10.0)                           # dead: knock on every door again
    assert "10.0.0.5:7946" in addresses(m.own_load_targets())


def test_a_configured_seed_stays_when_its_node_is_found_elsewhere():
    m, (a,) = table(1)
    m.add_seed("10.0.0.5:7946", "seed", a.id, now=0.0)
    m.add_seed("10.0.0.6:7946", "mdns", a.id, now=1.0)
    assert set(m.seeds) == {"10.0.0.5:7946", "10.0.0.6:7946"}
    m.add_seed("10.0.0.7:7946", "mdns", a.id, now=2.0)
    assert set(m.seeds) == {"10.0.0.5:7946", "10.0.0.7:7946"}


def test_the_node_takes_the_seed_owner_from_the_discovered_key(trust):
    from xchanged.protocol.events import SeedConfigured

    from .fakes import NodeUnderTest

    n = NodeUnderTest(trust)
    p = FakePeer("p", trust)
    n.handle(SeedConfigured("10.0.0.9:7946", p.pub, source="mdns"), 0.0)
    n.handle(SeedConfigured("10.0.0.10:7946", p.pub, source="mdns"), 1.0)
    n.handle(SeedConfigured("10.0.0.11:7946"), 1.0)                    # a configured seed: no key
    assert n.node.membership.seeds == {"10.0.0.10:7946": "mdns", "10.0.0.11:7946": "seed"}
    assert n.node.membership.seed_owner == {"10.0.0.10:7946": (p.id, 1.0)}


# -- probes end to end: ping_req -> ping -> pong -> forwarded pong ------------------------------

def test_an_indirect_probe_through_a_helper_proves_the_target_alive():
    """asker cannot reach target; helper can. The pong the asker gets is signed by the target."""
    trust = TrustStore({})
    asker, helper, target = Ident("asker", trust), Ident("helper", trust), Ident("target", trust)
    tables = {}
    for me in (asker, helper, target):
        tables[me.id] = Membership(me.id, S, random.Random(0), me.address)
    ma, mh, mt = tables[asker.id], tables[helper.id], tables[target.id]
    ma.on_load(helper.env(), 0.0)                         # the asker knows the helper and the target;
    ma.on_load(target.env(), 0.0)                         # the helper and the target know nobody (partial views)
    while ma.probe is None or ma.probe.target != target.id:
        ma.probe = None
        ma.next_round = 0.0
        ma.on_timer(0.0)
    ma.take_sends()
    ma.on_timer(0.4 * S.interval)                          # the ping was lost: ask the helper
    req = next(msg for to, msg in ma.take_sends() if isinstance(msg, PingReq) and to[0][0] == helper.id)

    (to, ping) = mh.on_ping_req(asker.env(req))
    assert to == (target.id, target.address) and ping.reply_via == asker.id and ping.via_address == asker.address
    (to, pong) = mt.on_ping(helper.env(ping))
    assert to == (helper.id, helper.address) and pong.for_node == asker.id
    pong_env = target.env(pong)
    _, forward = mh.on_pong(pong_env, 0.25)
    assert forward == (asker.id, asker.address)
    relayed = codec.decode(pong_env.raw, trust)           # the helper forwards the target's own bytes
    ma.on_pong(relayed, 0.25)
    assert ma.probe is None                               # answered: the probe is over, nobody suspected
    assert ma.on_timer(S.interval)[0] == [] and ma.peers[target.id].health == ALIVE


# -- the simulator: whole nodes, signed frames, a virtual clock ---------------------------------

def sim_cluster(n: int, seed: int = 1, **gossip) -> tuple[SimCluster, list[str]]:
    c = SimCluster(seed=seed, gossip=GossipSettings(**gossip)) if gossip else SimCluster(seed=seed)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        c.add_node(name)
    assert c.run_until(lambda: all_see(c, names, names), limit=30)
    return c, names


def health(c: SimCluster, observer: str, name: str) -> str:
    peer = c.node(observer).node.membership.peers.get(c.id_of(name))
    return peer.health if peer else "unknown"


def all_see(c: SimCluster, observers, names, state: str = ALIVE) -> bool:
    return all(health(c, o, n) == state for o in observers for n in names if n != o)


def test_sim_a_crashed_node_is_dead_everywhere_within_dead_after_and_rejoins_after_restart():
    c, names = sim_cluster(6)
    victim, others = names[-1], names[:-1]
    crashed_at = c.now
    c.crash(victim)
    assert c.run_until(lambda: all(health(c, o, victim) == DEAD for o in others), limit=30)
    detected = c.now - crashed_at
    assert detected <= S.dead_after + S.interval, detected       # well inside the 5 s promised on a LAN
    assert all(health(c, o, n) == ALIVE for o in others for n in others if n != o)   # no collateral

    c.restart(victim)
    assert c.run_until(lambda: all_see(c, names, names), limit=10)
    assert all(c.node(o).node.membership.peers[c.id_of(victim)].incarnation == 2 for o in others)


def test_sim_one_bad_link_does_not_kill_a_node_indirect_probes_keep_it_alive():
    """a<->c is cut and c's load signals are lost everywhere: only probes through others speak for c.
    (Before SWIM, c was suspected for want of loads and kept alive by the probes; now loads prove
    nothing and a's probes of c go through the others: c is never even suspected.)"""
    c, names = sim_cluster(5)
    a, target = names[0], names[2]
    c.cut_link(a, target)
    target_id = c.id_of(target)
    transmit = c._transmit

    def lossy(src, address, frame):                       # drop every load that c sends
        if src == target_id and codec.decode(frame, c.trust).type == "load":
            return
        transmit(src, address, frame)
    c._transmit = lossy
    start = c.now
    seen = []
    while c.now - start < 30:
        c.run_for(S.interval)
        seen.append(health(c, a, target))
    assert DEAD not in seen and SUSPECT not in seen
    assert c.sent_by_type["ping_req"] > 0                 # a's direct pings of c are lost: helpers answered


def test_sim_without_indirect_probes_the_same_bad_link_does_kill_it():
    c, names = sim_cluster(5, probe_k=0)
    a, target = names[0], names[2]
    c.cut_link(a, target)
    target_id = c.id_of(target)
    transmit = c._transmit
    c._transmit = lambda src, address, frame: None if (
        src == target_id and codec.decode(frame, c.trust).type == "load") else transmit(src, address, frame)
    assert c.run_until(lambda: health(c, a, target) == DEAD, limit=30)


def test_sim_partitioned_nodes_are_dead_then_heal_without_restart():
    c, names = sim_cluster(5)
    majority, cut = names[:3], names[3:]
    for x in cut:
        for y in names:
            if x != y:
                c.cut_link(x, y)
    assert c.run_until(lambda: all_see(c, majority, cut, DEAD) and all_see(c, cut, majority, DEAD), limit=30)
    for x in cut:
        for y in names:
            if x != y:
                c.heal_link(x, y)
    healed_from = c.now
    assert c.run_until(lambda: all_see(c, names, names), limit=30)
    assert c.now - healed_from < 5.0


def test_sim_relayed_loads_are_the_origins_signed_bytes():
    c, names = sim_cluster(4)
    a, b = names[0], names[1]
    c.cut_link(a, b)                                      # a hears b only through relays
    c.run_for(3.0)
    peer = c.node(a).node.membership.peers[c.id_of(b)]
    assert health(c, a, b) == ALIVE
    env = codec.decode(peer.load_frame, c.trust)
    assert env.sender == c.id_of(b) and env.raw == peer.load_frame and env.message.name == b


def test_sim_two_groups_joined_by_one_seed_form_one_cluster_while_idle():
    """Two subnets, each found by mDNS (seeds both ways), joined by one configured seed (b1 -> a1).
    Idle loads are heartbeats, never relayed: a1 and b1 must pass on the newcomer each first hears
    straight from it, or a2 never hears of the b side, nor b2 of the a side."""
    from xchanged.protocol.events import SeedConfigured

    c = SimCluster(seed=5)
    group_a = [c.add_node("a1", seeds=[]), c.add_node("a2", seeds=["sim-a1:7946"])]
    group_b = [c.add_node("b1", seeds=[]), c.add_node("b2", seeds=["sim-b1:7946"])]
    c.deliver(group_a[0], SeedConfigured("sim-a2:7946"))
    c.deliver(group_b[0], SeedConfigured("sim-b2:7946"))
    names = ["a1", "a2", "b1", "b2"]
    assert c.run_until(lambda: all_see(c, names[:2], names[:2]) and all_see(c, names[2:], names[2:]), limit=5)
    c.run_for(2.0)                                        # idle: the loads are heartbeats by now
    assert health(c, "a2", "b1") == "unknown"
    c.deliver(group_b[0], SeedConfigured("sim-a1:7946"))
    joined_at = c.now
    assert c.run_until(lambda: all_see(c, names, names), limit=30)
    assert c.now - joined_at < 3 * S.interval * 2


# -- gossip dissemination: O(log N) rounds -------------------------------------------------------

def spread(n: int, news: bool, seed: int = 1) -> tuple[float, float]:
    """Seconds from node 0's next load (after a change of its resources: news, announced; or of its
    cpu: routine) leaving it until 99% and all of the other nodes received it, n real nodes."""
    from xchanged.protocol.events import Capacity, ResourcesRead

    c = SimCluster(seed=seed, fast=True)
    ids = [c.add_node(f"n{i}") for i in range(n)]
    c.run_for(8.0)
    origin = c.nodes[ids[0]]
    c.watch(ids[0], origin.encoder.seq + 1)
    cap = origin.node.contractor.capacity
    c.deliver(ids[0], ResourcesRead(Capacity(cpus=cap.cpus + (1 if news else 0), mem_total=cap.mem_total,
                                             cpu_percent=cap.cpu_percent if news else 95.0,
                                             mem_available=cap.mem_available)))
    assert c.run_until(lambda: all(x in c.reached for x in ids[1:]), limit=30), "the load stopped spreading"
    first = min(c.reached.values()) - c.latency
    times = sorted(c.reached[x] - first for x in ids[1:])
    return times[math.ceil(0.99 * len(times)) - 1], times[-1]


@pytest.mark.parametrize("n", [16, 64])
def test_news_reaches_all_n_nodes_in_log_n_hops(n):
    """An announced load (what a node is changed) is gossiped at once by every node that gets it (at
    most every interval/4): every node has it within log2 N such hops."""
    for seed in range(2):
        most, everyone = spread(n, news=True, seed=seed)
        assert everyone <= math.ceil(math.log2(n)) * S.interval / 4, (n, seed, most, everyone)


@pytest.mark.parametrize("n", [16, 64])
def test_a_routine_load_reaches_all_n_nodes_in_log_n_rounds(n):
    """A routine load goes once a round (and on probes), yet spreads in O(log N) rounds."""
    for seed in range(2):
        most, everyone = spread(n, news=False, seed=seed)
        assert everyone <= (math.ceil(math.log2(n)) + 2) * S.interval, (n, seed, most, everyone)


def test_a_relayed_load_proves_life_when_it_was_signed_not_when_it_arrived():
    m, (a,) = table(1)
    signed_at = WALL                                       # the env is signed at WALL
    m.on_load(a.env(), 10.0, wall_ms=signed_at + 700, relayed=True)     # delivered by a relay 0.7 s later
    assert m.peers[a.id].last_heard == pytest.approx(9.3)
    m2, (b,) = table(1)
    m2.on_load(b.env(), 10.0, wall_ms=signed_at + 60_000, relayed=True)  # a skewed clock: the credit is clamped
    assert m2.peers[b.id].last_heard == pytest.approx(10.0 - 2 * S.interval)
    m3, (c,) = table(1)
    m3.on_load(c.env(), 10.0, wall_ms=signed_at - 5_000, relayed=True)   # a signer clock ahead of ours: no credit lost
    assert m3.peers[c.id].last_heard == pytest.approx(10.0)
