"""What a (possibly stale) load signal is worth once the manager's own awards are accounted for."""

from __future__ import annotations

import random

from xchanged.protocol.free_slots import FreeSlotLedger
from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.sim.cluster import SimCluster

LIVE = lambda task_id, attempt: True          # noqa: E731


def test_an_award_counts_against_loads_signed_before_the_peer_took_it():
    ledger = FreeSlotLedger()
    ledger.awarded("p", "T-1", 1, None)                       # direct award, not confirmed yet
    assert ledger.free_from_load("p", 2, (1, 10), LIVE) == 1
    ledger.confirmed("p", "T-1", 1, (1, 20))                  # its accept, the peer's 20th frame
    assert ledger.free_from_load("p", 2, (1, 15), LIVE) == 1  # signed before the accept: cannot show it
    assert ledger.free_from_load("p", 1, (1, 25), LIVE) == 1  # signed after: shows it already
    ledger.confirmed("p", "T-1", 1, (1, 30))                  # a later progress does not move it
    assert ledger.free_from_load("p", 1, (1, 25), LIVE) == 1
    assert ledger.free_from_load("p", 0, (1, 15), LIVE) == 0  # never below zero


def test_an_award_on_a_bid_was_taken_when_the_bid_was_signed():
    ledger = FreeSlotLedger()
    ledger.awarded("p", "T-1", 1, (1, 5))
    assert ledger.free_from_load("p", 2, (1, 4), LIVE) == 1
    assert ledger.free_from_load("p", 1, (1, 6), LIVE) == 1
    assert ledger.free_from_load("p", 1, (2, 1), LIVE) == 1   # a new incarnation comes after everything


def test_a_result_after_the_load_gives_the_slot_back_until_a_newer_load_shows_it():
    ledger = FreeSlotLedger()
    ledger.awarded("p", "T-1", 1, None)
    ledger.confirmed("p", "T-1", 1, (1, 10))
    ledger.ended("p", "T-1", 1, (1, 20))
    assert ledger.free_from_load("p", 0, (1, 15), LIVE) == 1  # shows it busy; it ended since
    assert ledger.free_from_load("p", 2, (1, 5), LIVE) == 2   # shows neither its start nor its end
    assert ledger.free_from_load("p", 1, (1, 25), LIVE) == 1  # shows both: the entry is done
    assert not ledger.awards


def test_awards_no_longer_live_and_dead_peers_are_forgotten():
    ledger = FreeSlotLedger()
    ledger.awarded("p", "T-1", 1, None)
    assert ledger.free_from_load("p", 2, (1, 1), lambda t, a: False) == 2
    assert not ledger.awards
    ledger.awarded("q", "T-2", 1, None)
    ledger.forget("q")
    assert ledger.free_from_load("q", 2, (1, 1), LIVE) == 2
    ledger.ended("q", "T-2", 1, (1, 2))                       # a result of an award we forgot: ignored
    assert not ledger.awards


def _rejected_for_lack_of_room(seed: int) -> tuple[int, int]:
    """One manager feeding eight two-slot workers faster than they finish: every freed slot is awarded
    at once, mostly directly, while older loads of the same workers are still being gossiped."""
    sim = SimCluster(seed=seed, latency=0.01)
    sim.add_node("mgr", slots=1, labels={"role": "manager"})
    for i in range(8):
        sim.add_node(f"w{i}", slots=2, labels={"role": "worker"})
    sim.run_for(3.0)
    rng = random.Random(seed)
    tids = []
    for _ in range(150):
        tids.append(sim.submit("mgr", TaskSpec(["sleep", f"{rng.uniform(0.05, 1.0):.2f}"],
                                               requirements=Requirements(labels={"role": "worker"}))))
        sim.run_for(rng.uniform(0.0, 0.04))
    assert sim.run_until(lambda: all(sim.task("mgr", t).state == "succeeded" for t in tids), 300)
    rejected = sum(1 for t in tids for a in sim.task("mgr", t).attempts
                   if a.state == "rejected" and a.reason.startswith("no_slots"))
    return rejected, sim.node("mgr").node.manager.stats["direct_awards"]


def test_stale_gossiped_loads_no_longer_cause_no_slots_rejections():
    # Taking each new load's slots_free as it stood gave 6 to 10 `no_slots` rejections per run of this
    # (seeds 1-3; 3 to 16 in similar runs); counting our awards the load could not show yet leaves none.
    for seed in (1, 2):
        rejected, direct = _rejected_for_lack_of_room(seed)
        assert direct > 100                 # the awards without a bid to check the room did happen
        assert rejected == 0
