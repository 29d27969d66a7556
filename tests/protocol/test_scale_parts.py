"""The bounded building blocks of membership at scale: the deadline heap, the broadcast queue, the
view and sample, and Lifeguard's suspicion timeouts and local health."""

from __future__ import annotations

import math
import random

import pytest

from xchanged.protocol.broadcasts import Broadcasts
from xchanged.protocol.deadlines import Deadlines
from xchanged.protocol.overlay import Sample, View, pair_hash
from xchanged.protocol.signing import generate_key, node_id, public_bytes
from xchanged.protocol.suspicion import MAX_HEALTH, LocalHealth, Suspicion, suspicion_timeout


def ids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [node_id(rng.randbytes(32)) for _ in range(n)]


# -- deadlines -----------------------------------------------------------------------------------

def test_deadlines_give_the_earliest_live_one_and_forget_replaced_or_cancelled_ones():
    d: Deadlines[str] = Deadlines()
    assert d.next() == math.inf and d.due(10.0) == []
    d.set("a", 5.0)
    d.set("b", 3.0)
    d.set("c", 4.0)
    d.set("b", 6.0)                   # replaced: its 3.0 is stale
    d.cancel("c")
    assert d.next() == 5.0 and len(d) == 2 and "c" not in d
    assert d.due(5.5) == ["a"] and d.due(5.5) == []
    assert d.get("b") == 6.0 and d.due(100) == ["b"] and d.next() == math.inf


def test_deadlines_stay_compact_however_often_keys_are_moved():
    d: Deadlines[int] = Deadlines()
    for i in range(10_000):
        d.set(i % 10, float(i))
    assert len(d) == 10 and len(d._heap) <= 2 * 10 + 16
    assert d.next() == 9990.0


# -- broadcasts ----------------------------------------------------------------------------------

def test_urgent_news_rides_before_routine_loads_and_the_least_ridden_first():
    b = Broadcasts(capacity=16)
    b.put(("load", "a"), b"la", False, 2, "a")
    b.put(("load", "b"), b"lb", False, 2, "b")
    b.put(("suspect", "c", "x"), b"sc", True, 3, "c")
    assert b.pending_urgent()
    assert b.take(2) == [b"sc", b"lb"]                 # urgent first, then the newest routine one
    assert not b.pending_urgent() and b.has_urgent()
    assert b.take(2) == [b"sc", b"la"]                 # urgent first again; then la (ridden 0 times, lb once)
    assert b.take(1, urgent_only=True) == [b"sc"]      # its third ride: done
    assert not b.has_urgent() and ("suspect", "c", "x") not in b


def test_an_item_rides_at_most_its_limit_and_a_newer_frame_replaces_the_older():
    b = Broadcasts()
    b.put(("load", "a"), b"old", False, 2, "a")
    b.take(5)
    b.put(("load", "a"), b"new", False, 2, "a")        # a newer load of a: starts again
    assert b.take(5) == [b"new"] and b.take(5) == [b"new"] and b.take(5) == [] and len(b) == 0


def test_a_full_queue_drops_the_most_ridden_routine_items_never_urgent_ones_while_routine_ones_remain():
    b = Broadcasts(capacity=4)
    b.put(("dead", "x"), b"dx", True, 5, "x")
    for i in range(3):
        b.put(("load", str(i)), f"l{i}".encode(), False, 3, str(i))
    b.take(4)                                          # everything has ridden once
    b.put(("load", "9"), b"l9", False, 3, "9")        # over capacity: one routine item goes
    assert len(b) == 4 and b.dropped == 1 and ("dead", "x") in b and ("load", "9") in b
    assert b.about("x") == [("dead", "x")]
    b.drop(("dead", "x"))
    assert b.about("x") == []


def test_take_puts_the_requested_keys_first():
    b = Broadcasts()
    b.put(("load", "a"), b"la", False, 2, "a")
    b.put(("suspect", "t", "me"), b"st", True, 3, "t")
    assert b.take(1, first=[("load", "a")]) == [b"la"]


# -- view and sample -----------------------------------------------------------------------------

def test_the_pair_hash_is_symmetric_and_spreads_over_64_bits():
    a, b, c = ids(3)
    assert pair_hash(a, b) == pair_hash(b, a) != pair_hash(a, c)
    values = [pair_hash(a, x) for x in ids(2000, 1)]
    assert 0.45 < sum(v < 1 << 63 for v in values) / len(values) < 0.55
    assert pair_hash("not-a-node-id", a) == pair_hash(a, "not-a-node-id")


def test_a_small_cluster_is_fully_in_the_view_and_a_big_one_keeps_the_smallest_pair_hashes():
    me, *others = ids(201)
    v = View(me, 16, random.Random(0))
    for peer in others[:10]:
        assert v.offer(peer) == (True, None)
    assert len(v) == 10
    for peer in others[10:]:
        v.offer(peer)
    assert len(v) == 16
    best = sorted(others, key=lambda p: pair_hash(me, p))[:16]
    assert set(v.members) == set(best)
    assert 100 <= v.estimate() <= 400                  # 200 peers, estimated from 16 hashes


def test_every_node_is_in_about_view_size_views():
    """The property that keeps probing per node flat: no node is in everyone's view (seeds, early
    joiners), none in nobody's."""
    everyone = ids(600, 2)
    size = 24
    views = {}
    for me in everyone:
        v = View(me, size, random.Random(0))
        for other in everyone:
            if other != me:
                v.offer(other)
        views[me] = v
    indegree = {p: 0 for p in everyone}
    for v in views.values():
        for m in v.members:
            indegree[m] += 1
    assert min(indegree.values()) >= size / 3 and max(indegree.values()) <= 3 * size
    symmetric = sum(1 for a, v in views.items() for b in v.members if a in views[b].members)
    assert symmetric / (size * len(everyone)) > 0.6


def test_probes_go_round_robin_each_member_once_per_pass_new_ones_included():
    me, *others = ids(9)
    v = View(me, 16, random.Random(3))
    for peer in others[:5]:
        v.offer(peer)
    first_pass = [v.next_probe(lambda p: True) for _ in range(5)]
    assert sorted(first_pass) == sorted(others[:5])
    v.offer(others[5])                                 # joins during the next pass
    second_pass = [v.next_probe(lambda p: True) for _ in range(6)]
    assert sorted(second_pass) == sorted(others[:6])
    v.remove(others[0])
    assert others[0] not in [v.next_probe(lambda p: True) for _ in range(10)]
    assert v.next_probe(lambda p: False) is None


def test_the_sample_keeps_the_freshest_and_says_whom_it_pushed_out():
    s = Sample(3)
    assert [s.touch(p) for p in "abc"] == [None, None, None]
    assert s.touch("a") is None                        # a is the freshest now
    assert s.touch("d") == "b" and list(s) == ["c", "a", "d"]
    s.remove("c")
    assert list(s) == ["a", "d"] and "c" not in s


# -- Lifeguard -----------------------------------------------------------------------------------

def test_a_suspicion_shortens_with_independent_confirmations_down_to_the_shortest():
    assert suspicion_timeout(0, 3, 1.0, 3.5) == 3.5
    assert 1.0 < suspicion_timeout(1, 3, 1.0, 3.5) < suspicion_timeout(0, 3, 1.0, 3.5)
    assert suspicion_timeout(3, 3, 1.0, 3.5) == 1.0 == suspicion_timeout(9, 3, 1.0, 3.5)
    assert suspicion_timeout(0, 0, 1.0, 3.5) == 1.0    # nobody could confirm it: no reason to wait
    s = Suspicion((1, 0), started=10.0, first="a", expected=2, shortest=1.0, longest=3.5)
    assert s.deadline == 13.5
    assert not s.confirm("a") and s.confirm("b") and not s.confirm("b")
    assert s.confirm("c") and s.deadline == 11.0 and not s.confirm("d")    # enough: no more kept


def test_local_health_scales_timeouts_and_recovers():
    h = LocalHealth()
    assert h.scale(0.5) == 0.5
    for _ in range(20):
        h.worse()
    assert h.score == MAX_HEALTH and h.scale(0.5) == 0.5 * (1 + MAX_HEALTH)
    h.better()
    assert h.score == MAX_HEALTH - 1


@pytest.mark.parametrize("n", [1, 2])
def test_node_ids_are_what_the_pair_hash_expects(n):
    key = generate_key()
    assert len(node_id(public_bytes(key))) == 17
