"""Membership: suspicion, refutation, death, rejoin, indirect probes and gossip dissemination.

Two drivers, both with time passed in by hand: `Membership` alone, fed real signed frames (decoded
by the codec, as the daemon does), and `SimCluster`, which runs whole Nodes on a virtual clock and
network. Timings come from GossipSettings, never from patched constants.
"""

from __future__ import annotations

import math
import random

import pytest

from xchanged.protocol import codec
from xchanged.protocol.membership import ALIVE, DEAD, SUSPECT, GossipSettings, Membership
from xchanged.protocol.messages import Load, Ping, PingReq, Pong
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

    def load(self, slots_free: int = 2) -> Load:
        return Load(name=self.name, address=self.address, slots=2, slots_free=slots_free, running=0, queued=0,
                    cpus=2, cpu_percent=5.0, mem_total=1 << 30, mem_available=1 << 29)

    def env(self, message=None, t: float = 0.0):
        return super().env(message or self.load(), t)


def table(n_peers: int, **settings):
    """A membership table of a node that has heard one load from each of `n_peers` peers."""
    trust = TrustStore({})
    me = Ident("me", trust)
    m = Membership(me.id, GossipSettings(**settings) if settings else S, random.Random(1))
    peers = [Ident(f"p{i}", trust) for i in range(n_peers)]
    for p in peers:
        m.on_load(p.env(), 0.0)
    return m, peers


# -- suspicion, death, refutation ---------------------------------------------------------------

def test_a_silent_peer_is_suspected_probed_directly_and_through_k_others_then_dead():
    m, (a, b, c, d, e) = table(5)
    m.on_load(b.env(), 1.0)
    m.on_load(c.env(), 1.0)
    m.on_load(d.env(), 1.0)
    m.on_load(e.env(), 1.0)
    assert m.check_health(S.suspect_after - 0.01) == ([], [])
    m.next_round = 100.0                                   # no gossip round due: only health deadlines
    assert m.next_deadline() == pytest.approx(S.suspect_after)

    transitions, probes = m.check_health(S.suspect_after)
    assert [(t.peer.id, t.health) for t in transitions] == [(a.id, SUSPECT)]
    direct = [(to, msg) for to, msg in probes if isinstance(msg, Ping)]
    indirect = [(to, msg) for to, msg in probes if isinstance(msg, PingReq)]
    assert direct == [((a.id, a.address), Ping(nonce=direct[0][1].nonce))]
    assert len(indirect) == S.probe_k
    assert all(msg.target == a.id and to[0] != a.id for to, msg in indirect)
    assert m.peers[a.id] not in m.healthy()                # a suspect gets no call for proposals

    # the probes are repeated while it stays suspect (one lost ping is not enough to kill it)
    assert m.next_deadline() == pytest.approx(S.suspect_after + S.interval)
    assert m.check_health(S.suspect_after + S.interval / 2)[1] == []
    again = m.check_health(S.suspect_after + S.interval)[1]
    assert {type(msg) for _, msg in again} == {Ping, PingReq}

    transitions, _ = m.check_health(S.dead_after)
    assert sorted((t.peer.id, t.health) for t in transitions) == sorted(
        [(a.id, DEAD)] + [(p.id, SUSPECT) for p in (b, c, d, e)])     # those were heard 1 s later
    assert a.id not in {p.id for p in m.live_peers()}
    transitions, probes = m.check_health(S.dead_after + 10)
    assert a.id not in {t.peer.id for t in transitions}      # dead stays dead and is not probed
    assert all(to[0] != a.id and getattr(msg, "target", "") != a.id for to, msg in probes)


def test_a_suspect_heard_from_again_is_alive_and_never_declared_dead():
    m, (a, b) = table(2)
    m.check_health(S.suspect_after)
    assert m.peers[a.id].health == SUSPECT
    is_new, transitions = m.on_load(a.env(), S.suspect_after + 0.2)     # refuted by a newer load
    assert is_new and [(t.peer.id, t.health) for t in transitions] == [(a.id, ALIVE)]
    transitions, _ = m.check_health(S.dead_after)                          # a silent 2.3 s, b 4 s
    assert {(t.peer.id, t.health) for t in transitions} == {(a.id, SUSPECT), (b.id, DEAD)}

    # any other verified frame also counts (a pong, a bid...)
    assert [t.health for t in m.on_direct(a.env(Pong(nonce=1, for_node=m.self_id)), 4.5)] == [ALIVE]
    m.check_health(4.5 + S.dead_after - 0.01)
    assert m.peers[a.id].health == SUSPECT


def test_old_or_duplicate_loads_do_not_count_and_a_stale_incarnation_cannot_refute():
    m, (a,) = table(1)
    first = a.env()
    a.restart()                                          # a came back: incarnation 2
    newer = a.env()
    assert m.on_load(newer, 1.0)[0] is True
    assert m.on_load(newer, 1.1)[0] is False             # the same signal relayed again: a duplicate
    assert m.on_load(first, 1.2)[0] is False             # older incarnation
    m.check_health(1.0 + S.suspect_after)
    assert m.peers[a.id].health == SUSPECT
    assert m.on_direct(first, 3.0) == []                 # a frame of its previous life refutes nothing
    assert m.peers[a.id].health == SUSPECT


def test_a_dead_peer_rejoins_with_a_higher_incarnation():
    m, (a,) = table(1)
    m.check_health(S.dead_after)
    assert m.peers[a.id].health == DEAD
    a.restart()
    is_new, transitions = m.on_load(a.env(), 10.0)
    assert is_new and [t.health for t in transitions] == [ALIVE]
    assert m.peers[a.id].incarnation == 2 and m.peers[a.id].load_version == (2, 1)
    assert m.peers[a.id] in m.healthy()


def test_a_dead_peer_still_gets_our_load_so_a_healed_partition_rejoins():
    m, (a, b) = table(2)
    m.on_load(b.env(), S.dead_after - 1)
    m.check_health(S.dead_after)
    assert m.peers[a.id].health == DEAD
    assert (a.id, a.address) in m.gossip_targets()       # one dead peer per round is retried


def test_seeds_get_our_load_until_a_live_peer_answers_from_that_address():
    m, (a,) = table(1)
    m.add_seed("10.0.0.9:7946", "mdns")
    m.add_seed(a.address)
    targets = m.gossip_targets()
    assert ("", "10.0.0.9:7946") in targets
    assert [t for t in targets if t[1] == a.address] == [(a.id, a.address)]


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
    assert (("", a.address)) in m.gossip_targets()                     # the new one gets our load
    a.restart()
    m.on_load(a.env(t=1.2), 1.2)                                       # its load says where it is now
    assert m.peers[a.id].address == a.address
    for round_ in range(20):                                           # from now on: never the old one
        m.on_load(a.env(t=1.5 + round_), 1.5 + round_)
        m.on_load(b.env(t=1.5 + round_), 1.5 + round_)
        targets = m.gossip_targets()
        assert old not in addresses(targets) and ("", a.address) not in targets, targets


def test_a_dead_peer_rediscovered_elsewhere_is_probed_there():
    m, (a, b) = table(2)
    m.on_load(b.env(t=S.dead_after), S.dead_after)
    m.check_health(S.dead_after)
    assert m.peers[a.id].health == DEAD
    m.add_seed("10.0.0.78:7946", "mdns", a.id, now=S.dead_after)
    assert m.peers[a.id].address == "10.0.0.78:7946"
    assert a.address not in addresses(m.gossip_targets())


def test_a_seed_of_a_node_that_advertises_another_address_stops_once_it_is_heard():
    """mDNS announces an IP; the node's signed loads give its hostname: the IP needs no load of ours
    once the node is live and heard from since."""
    m, (a,) = table(1)
    m.add_seed("10.0.0.5:7946", "mdns", a.id, now=1.0)
    assert ("", "10.0.0.5:7946") in m.gossip_targets()                 # not heard since the announcement
    m.on_load(a.env(t=1.5), 1.5)
    assert "10.0.0.5:7946" not in addresses(m.gossip_targets())
    m.check_health(10.0)                                               # dead: knock on every door again
    assert "10.0.0.5:7946" in addresses(m.gossip_targets())


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
        tables[me.id] = Membership(me.id, S, random.Random(0))
        for other in (asker, helper, target):
            if other is not me:
                tables[me.id].on_load(other.env(), 0.0)
    ma, mh, mt = tables[asker.id], tables[helper.id], tables[target.id]
    mh.on_load(target.env(), 1.0)
    ma.on_load(helper.env(), 1.0)
    _, probes = ma.check_health(S.suspect_after)
    assert ma.peers[target.id].health == SUSPECT
    req = next(msg for to, msg in probes if isinstance(msg, PingReq) and to[0] == helper.id)

    (to, ping) = mh.on_ping_req(asker.env(req))
    assert to == (target.id, target.address) and ping.reply_via == asker.id
    (to, pong) = mt.on_ping(helper.env(ping))
    assert to == (helper.id, helper.address) and pong.for_node == asker.id
    pong_env = target.env(pong)
    _, forward = mh.on_pong(pong_env, 2.0)
    assert forward == (asker.id, asker.address)
    relayed = codec.decode(pong_env.raw, trust)           # the helper forwards the target's own bytes
    transitions, forward = ma.on_pong(relayed, 2.0)
    assert forward is None and [(t.peer.id, t.health) for t in transitions] == [(target.id, ALIVE)]


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
    """a<->c is cut and c's load signals are lost everywhere: only probes through others speak for c."""
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
    assert DEAD not in seen and SUSPECT in seen           # suspected (no loads), never declared dead


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


# -- gossip dissemination: O(log N) rounds -------------------------------------------------------

def rounds_to_reach_all(n: int, seed: int) -> int:
    """Synchronous rounds until one fresh load of node 0 is held by all n nodes (relays only)."""
    trust = TrustStore({})
    idents = [Ident(f"g{i}", trust) for i in range(n)]
    tables = [Membership(i.id, S, random.Random(seed * 1000 + k)) for k, i in enumerate(idents)]
    first = [i.env() for i in idents]
    for t in tables:
        for env in first:
            t.on_load(env, 0.0)
        for p in t.peers.values():
            p.relay_left = 0                              # bootstrap done: nothing else in flight
    origin = idents[0]
    fresh = origin.env()
    version = (fresh.incarnation, fresh.seq)
    by_address = {i.address: k for k, i in enumerate(idents)}
    inbox = [(by_address[address], fresh.raw) for _, address in tables[0].gossip_targets()]
    decoded = {}                                          # one verification per distinct frame
    rounds = 0
    while True:
        rounds += 1
        now = rounds * S.interval
        for k, raw in inbox:
            env = decoded[raw] = decoded.get(raw) or codec.decode(raw, trust)
            tables[k].on_load(env, now)
        if all(t.peers[origin.id].load_version >= version for t in tables[1:]):
            return rounds
        assert rounds < 10 * math.log2(n), "the load stopped spreading"
        inbox = [(by_address[address], frame) for t in tables for targets, frames in t.relays()
                 for frame in frames for _, address in targets]


@pytest.mark.parametrize("n", [16, 64])
def test_a_load_reaches_all_n_nodes_in_log_n_rounds(n):
    worst = max(rounds_to_reach_all(n, seed) for seed in range(3))
    assert worst <= math.ceil(math.log2(n)) + 1, (n, worst)


def test_sim_steady_state_load_reaches_every_node_in_log_n_rounds():
    """Real nodes, real frames: after node 0's next load is sent, every node holds it within log2 N rounds."""
    n = 16
    c, names = sim_cluster(n)
    origin = c.node(names[0])
    seq0, start = origin.encoder.seq, c.now
    oid = origin.node.id
    assert c.run_until(lambda: all(c.node(x).node.membership.peers[oid].load_version[1] > seq0
                                   for x in names[1:]), limit=30)
    rounds = (c.now - start) / S.interval                 # includes up to one round before it is sent
    assert rounds <= math.log2(n) + 1, rounds


def test_a_relayed_load_proves_life_when_it_was_signed_not_when_it_arrived():
    m, (a,) = table(1)
    signed_at = WALL                                       # the env is signed at WALL
    m.on_load(a.env(), 10.0, wall_ms=signed_at + 700)      # delivered by a relay 0.7 s later
    assert m.peers[a.id].last_heard == pytest.approx(9.3)
    m2, (b,) = table(1)
    m2.on_load(b.env(), 10.0, wall_ms=signed_at + 60_000)  # a skewed clock: the credit is clamped
    assert m2.peers[b.id].last_heard == pytest.approx(10.0 - 2 * S.interval)
    m3, (c,) = table(1)
    m3.on_load(c.env(), 10.0, wall_ms=signed_at - 5_000)   # a signer clock ahead of ours: no credit lost
    assert m3.peers[c.id].last_heard == pytest.approx(10.0)
