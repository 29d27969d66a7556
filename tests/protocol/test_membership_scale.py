"""Membership at scale, in miniature: partial views (view and sample far smaller than the cluster),
bounded tables and per-event work, failure detection and false positives under loss.

The full-size figures come from `bench/scale.py`; these tests pin the properties with small views so
they run in seconds."""

from __future__ import annotations

import random

from xchanged.protocol import codec
from xchanged.protocol.events import TaskSubmitted
from xchanged.protocol.membership import ALIVE, DEAD, GossipSettings, Membership
from xchanged.protocol.messages import Dead, Load, Pong, Suspect, TaskSpec
from xchanged.protocol.signing import TrustStore
from xchanged.sim.cluster import SimCluster

from .fakes import FakePeer, NodeUnderTest

SMALL = GossipSettings(view_size=12, sample_size=12)


class NoWalk(dict):
    """A peer table that fails the test if anything walks it."""

    def __iter__(self):
        raise AssertionError("walked the whole peer table")

    def values(self):
        raise AssertionError("walked the whole peer table")

    def items(self):
        raise AssertionError("walked the whole peer table")

    def keys(self):
        raise AssertionError("walked the whole peer table")


def relayed(peer: FakePeer, message, t: float = 0.0):
    return codec.decode(peer.encoder.encode(message, 1_790_000_000_000 + int(t * 1000)), peer.trust)


def test_the_table_stays_bounded_and_no_input_or_timer_walks_it():
    trust = TrustStore({})
    me = FakePeer("me", trust)
    m = Membership(me.id, SMALL, random.Random(2), me.address)
    peers = [FakePeer(f"p{i}", trust) for i in range(400)]
    for k, p in enumerate(peers):
        m.on_load(relayed(p, p.load(news=1)), k * 0.01, relayed=True)
    assert len(m.view) == 12 and len(m.sample) == 12
    assert len(m.peers) <= 12 + 12                       # nothing else kept: no dead yet, no tasks of ours
    assert len(m.broadcasts) <= m.broadcasts.capacity

    table = NoWalk(m.peers)
    m.peers = table
    now = 5.0
    for k in range(40):                                  # rounds: probes, gossip, own load targets
        now += SMALL.interval
        m.on_timer(now)
        m.own_load_targets()
        if m.probe is not None and k % 3:
            target = next(p for p in peers if p.id == m.probe.target)
            m.on_pong(relayed(target, Pong(nonce=m.probe.nonce, for_node=m.self_id), now), now)
        m.take_sends()
        m.next_deadline()
    a, b = (next(p for p in peers if p.id == pid) for pid in list(m.view.members)[:2])
    m.on_suspect(relayed(b, Suspect(a.id, 1, 0)), now)
    m.on_dead(relayed(b, Dead(a.id, 1, 0)), now)
    m.on_load(relayed(peers[-1], peers[-1].load(news=1)), now, relayed=True)
    m.on_timer(now + 10)
    assert m.peers[a.id].health == DEAD and len(m.peers) <= 12 + 12 + 1


def test_a_node_hands_its_manager_a_bounded_set_of_candidates(trust):
    n = NodeUnderTest(trust, slots=1, gossip=SMALL, max_candidates=4)
    peers = [FakePeer(f"p{i}", trust) for i in range(40)]
    for p in peers:
        n.hear(p, p.load(free=2 if int(p.name[1:]) % 2 else 0), t=0.0)
    n.handle(TaskSubmitted(1, "T1", TaskSpec(["true"])), t=0.1)
    got = n.node.candidates(0.1)
    assert got[0].id == n.id
    free = [c for c in got[1:] if c.free > 0]
    assert len(free) == 2                                 # two believed free for the one waiting task
    assert len(got) <= 1 + 2 + 8


def sim(n: int, seed: int = 3, **kw) -> tuple[SimCluster, list[str]]:
    c = SimCluster(seed=seed, fast=True, gossip=SMALL, **kw)
    ids = []
    for i in range(n):
        earlier = random.Random(seed * 100 + i).sample(ids, min(3, len(ids)))
        ids.append(c.add_node(f"n{i}", seeds=[c.nodes[x].address for x in earlier]))
    c.run_for(12.0)
    return c, ids


def test_sim_partial_views_probe_everyone_and_detect_a_crash_everywhere_within_5s():
    c, ids = sim(120)
    indegree = {x: 0 for x in ids}
    for s in c.nodes.values():
        assert len(s.node.membership.peers) <= 12 + 12 + 12       # view, sample, a few dead or kept
        for member in s.node.membership.view.members:
            indegree[member] += 1
    assert min(indegree.values()) >= 1                           # nobody unprobed
    for victim in sorted(ids, key=indegree.get)[:3]:              # the least probed: the hardest to detect
        holders = [x for x in ids if x != victim and c.nodes[x].up
                   and victim in c.nodes[x].node.membership.peers]
        crashed = c.now
        c.crash(c.nodes[victim].node.settings.name)
        assert c.run_until(lambda: all(
            (p := c.nodes[h].node.membership.peers.get(victim)) is None or p.health == DEAD for h in holders),
            limit=10)
        assert c.now - crashed <= 5.0, c.now - crashed


def test_sim_no_live_node_is_declared_dead_under_two_percent_frame_loss():
    dead_lines = []
    c, ids = sim(60, seed=4, loss=0.02, on_log=lambda node, line: dead_lines.append(line)
                 if line.endswith(" is dead") else None)
    c.run_for(30.0)
    assert dead_lines == []
    assert all(p.health == ALIVE for s in c.nodes.values() for p in s.node.membership.peers.values())


def test_loads_are_heartbeats_changes_or_news_and_only_changes_and_news_are_passed_on():
    trust = TrustStore({})
    me, a, b = FakePeer("me", trust), FakePeer("a", trust), FakePeer("b", trust)
    m = Membership(me.id, GossipSettings(), random.Random(1), me.address)
    m.on_load(relayed(a, a.load()), 0.0, relayed=True)
    assert ("load", a.id) not in m.broadcasts                   # a heartbeat: kept, not passed on
    m.on_load(relayed(a, a.load(free=1, news=1)), 0.5, relayed=True)
    assert ("load", a.id) in m.broadcasts and not m.broadcasts.has_urgent()
    m.on_load(relayed(a, Load(name="a", address=a.address, slots=4, slots_free=1, running=0, queued=0, cpus=4,
                              cpu_percent=1.0, mem_total=1, mem_available=1, news=2)), 1.0, relayed=True)
    assert m.broadcasts.has_urgent()
    m.on_load(relayed(b, b.load()), 1.0)                        # a heartbeat straight from a peer new to us:
    assert ("load", b.id) in m.broadcasts                       # news (the others may not know of it)
    m.on_load(relayed(b, b.load()), 2.0)
    m.broadcasts.drop(("load", b.id))
    m.on_load(relayed(b, b.load()), 3.0)                        # its next heartbeats are not
    assert ("load", b.id) not in m.broadcasts
