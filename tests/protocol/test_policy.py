"""Allocation policy (issue 4), as pure functions: scoring, tie-break, fit checks, candidate sampling,
the circuit breaker and bid-accuracy reputation. Time is a number passed in."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from xchanged.protocol import policy
from xchanged.protocol.messages import Bid, GpuInfo, Load, Requirements


def bid(slots=4, free=4, cpu=0.0, **kw) -> Bid:
    return Bid("T-1", 1, slots=slots, slots_free=free, cpu_percent=cpu, mem_available=1 << 30, **kw)


def load(slots=4, free=4, cpus=4, mem=1 << 34, labels=None, gpus=()) -> Load:
    return Load(name="n", address="n:1", slots=slots, slots_free=free, running=slots - free, queued=0, cpus=cpus,
                cpu_percent=0.0, mem_total=mem, mem_available=mem, labels=labels or {}, gpus=list(gpus))


REQ = Requirements()


# -- score ----------------------------------------------------------------------------------------


def test_weights_are_seed_003s():
    assert (policy.W_AVAILABILITY, policy.W_SUCCESS, policy.W_SPEED) == (0.5, 0.3, 0.2)
    fresh = policy.ContractorRecord()
    # idle bidder with no history (reliable until it fails), of average speed (1/(1+1)):
    # 0.5*1 + 0.3*1 + 0.2*0.5 + fairness 0.05; the manager's own bid gets local +0.05 on top
    assert policy.score(bid(), fresh, REQ, 0.0, avoid=False) == pytest.approx(0.5 + 0.3 + 0.1 + 0.05)
    assert policy.score(bid(), fresh, REQ, 0.0, avoid=False, local=True) == pytest.approx(0.97)


def test_an_untried_node_ties_a_proven_one_and_the_manager_itself_wins_the_tie():
    proven, fresh = policy.ContractorRecord(successes=50), policy.ContractorRecord()
    assert policy.score(bid(), fresh, REQ, 0.0, False) == pytest.approx(policy.score(bid(), proven, REQ, 0.0, False))
    assert policy.score(bid(), fresh, REQ, 0.0, False, local=True) > policy.score(bid(), proven, REQ, 0.0, False)
    # worth a tie only: one more free slot elsewhere (nodes of 12 slots) beats the manager's own bid
    assert policy.score(bid(slots=12, free=5), fresh, REQ, 0.0, False, local=True) < \
        policy.score(bid(slots=12, free=6), proven, REQ, 0.0, False)


def test_availability_success_and_speed_each_raise_the_score():
    r = policy.ContractorRecord()
    base = policy.score(bid(free=1, cpu=50), r, REQ, 0.0, False)
    assert policy.score(bid(free=3, cpu=50), r, REQ, 0.0, False) > base
    assert policy.score(bid(free=1, cpu=10), r, REQ, 0.0, False) > base
    flaky = policy.ContractorRecord(successes=1, failures=1)
    assert policy.score(bid(free=1, cpu=50), flaky, REQ, 0.0, False) < base
    recovered = policy.ContractorRecord(successes=10, failures=1)
    assert policy.score(bid(free=1, cpu=50), flaky, REQ, 0.0, False) < \
        policy.score(bid(free=1, cpu=50), recovered, REQ, 0.0, False) < base
    assert policy.score(bid(free=1, cpu=50, est_start_ms=2000), r, REQ, 0.0, False) < base


def test_affinity_and_fairness_adjust_and_avoid_penalises():
    req = Requirements(prefer={"zone": "a", "ssd": "1"})
    r = policy.ContractorRecord()
    assert policy.score(bid(affinity=2), r, req, 0.0, False) > policy.score(bid(affinity=1), r, req, 0.0, False)
    busy = policy.ContractorRecord(last_award=100.0)
    idle = policy.ContractorRecord(last_award=100.0 - policy.FAIRNESS_HORIZON)
    assert policy.score(bid(), idle, REQ, 100.0, False) > policy.score(bid(), busy, REQ, 100.0, False)
    assert policy.score(bid(), r, REQ, 0.0, True) == pytest.approx(policy.score(bid(), r, REQ, 0.0, False) - 0.2)


def test_rank_breaks_ties_on_node_id_deterministically():
    assert policy.rank({"b": 0.5, "a": 0.5, "c": 0.9}) == ["c", "a", "b"]
    assert policy.rank({"a": 0.5, "b": 0.5}) == policy.rank({"b": 0.5, "a": 0.5})


# -- reputation -----------------------------------------------------------------------------------


def test_a_node_that_overpromises_loses_the_speed_term():
    honest, liar = policy.ContractorRecord(), policy.ContractorRecord()
    for _ in range(10):
        honest.observe_runtime(1000, 1050)            # about right
        liar.observe_runtime(250, 1000)               # promised 4x faster than it ran
    assert honest.accuracy > 0.95
    assert liar.accuracy < 0.4
    assert policy.score(bid(), honest, REQ, 0.0, False) > policy.score(bid(), liar, REQ, 0.0, False)


def test_pessimistic_estimates_are_not_punished():
    r = policy.ContractorRecord()
    r.observe_runtime(2000, 1000)
    r.observe_runtime(0, 1000)                        # no estimate: ignored
    assert r.accuracy == 1.0 and r.estimates == 1


# -- fit ------------------------------------------------------------------------------------------


def test_unfit_reasons_name_the_missing_resource():
    assert policy.unfit_reason(load(), Requirements(labels={"cuda": "12"})) == "label cuda=12 missing"
    assert "CPUs" in policy.unfit_reason(load(slots=2, cpus=2), Requirements(cpus=8))
    assert policy.unfit_reason(load(mem=1 << 30), Requirements(mem=2 << 30)) == "not enough memory in total"
    gpu = GpuInfo(0, "A100", 40 << 30, 40 << 30, 0.0)
    assert "GPUs" in policy.unfit_reason(load(gpus=[gpu]), Requirements(gpus=2))
    assert "GPUs" in policy.unfit_reason(load(gpus=[gpu]), Requirements(gpus=1, gpu_mem=80 << 30))
    assert policy.unfit_reason(load(gpus=[gpu], labels={"cuda": "12"}),
                               Requirements(gpus=1, gpu_mem=20 << 30, labels={"cuda": "12"})) is None


# -- candidates -----------------------------------------------------------------------------------


def cands(n, slots=4):
    return [SimpleNamespace(id=f"p{i:03d}", slots=slots) for i in range(n)]


def test_sampling_is_capped_by_max_candidates_and_prefers_free_room():
    peers = cands(100)
    units = {c.id: (4 if i < 5 else 1) for i, c in enumerate(peers)}
    chosen = policy.sample_candidates(peers, units, set(), 8, random.Random(1))
    assert len(chosen) == 8 and len({c.id for c in chosen}) == 8
    emptiest = {c.id for c in peers[:5]}
    assert len(emptiest & {c.id for c in chosen}) >= 4   # half the picks go to the emptiest nodes
    assert policy.sample_candidates(peers[:3], units, set(), 8, random.Random(1)) == peers[:3]


def test_sampling_spreads_over_equals_and_avoids_failed_nodes():
    peers = cands(50)
    units = {c.id: 2 for c in peers}
    rng = random.Random(3)
    seen = set()
    for _ in range(30):
        seen |= {c.id for c in policy.sample_candidates(peers, units, set(), 4, rng)}
    assert len(seen) > 25                             # not always the same few
    avoid = {c.id for c in peers[:48]}
    assert {c.id for c in policy.sample_candidates(peers, units, avoid, 4, rng)} == {"p048", "p049"}
    assert len(policy.sample_candidates(peers[:2], units, {"p000", "p001"}, 4, rng)) == 2   # all avoided: ask anyway


# -- circuit breaker ------------------------------------------------------------------------------


def test_breaker_opens_after_repeated_failures_and_half_opens_after_cooldown():
    r = policy.ContractorRecord()
    for i in range(policy.BREAKER_FAILURES - 1):
        r.failed(float(i))
        assert r.allows_award(float(i))
    r.failed(10.0)
    assert r.breaker == policy.OPEN and not r.allows_award(10.0)
    assert not r.allows_award(10.0 + policy.BREAKER_COOLDOWN - 0.01)
    assert r.allows_award(10.0 + policy.BREAKER_COOLDOWN)          # half-open: one trial
    assert r.breaker == policy.HALF_OPEN
    r.awarded(10.0 + policy.BREAKER_COOLDOWN)
    assert not r.allows_award(10.0 + policy.BREAKER_COOLDOWN)      # only one award in flight
    r.succeeded()
    assert r.breaker == policy.CLOSED and r.allows_award(30.0)


def test_failed_trial_reopens_with_a_longer_cooldown():
    r = policy.ContractorRecord()
    for i in range(policy.BREAKER_FAILURES):
        r.failed(0.0)
    t = policy.BREAKER_COOLDOWN
    assert r.allows_award(t)
    r.awarded(t)
    r.failed(t)
    assert r.breaker == policy.OPEN
    assert not r.allows_award(t + policy.BREAKER_COOLDOWN)          # cool-down doubled
    assert r.allows_award(t + 2 * policy.BREAKER_COOLDOWN)


def test_speed_is_measured_per_command_against_the_other_peers():
    table = policy.SpeedTable()
    assert table.relative("render", "fast") == 1.0                  # nothing seen
    table.observe("render", "fast", 1000)
    assert table.relative("render", "fast") == 1.0                  # one peer: nothing to compare with
    table.observe("render", "slow", 3000)
    fast, slow = table.relative("render", "fast"), table.relative("render", "slow")
    assert fast > 1.0 > slow
    assert table.relative("other", "fast") == 1.0                   # per command
    bid = Bid("T", 1, slots=2, slots_free=1, cpu_percent=10.0, mem_available=1 << 30)
    record = policy.ContractorRecord()
    assert policy.score(bid, record, Requirements(), 0.0, False, fast) > \
        policy.score(bid, record, Requirements(), 0.0, False, slow)


def test_millisecond_jitter_is_not_speed():
    table = policy.SpeedTable()
    table.observe("true", "a", 1)
    table.observe("true", "b", 4)
    assert 0.95 < table.relative("true", "a") < 1.05


def test_speed_table_memory_is_bounded():
    table = policy.SpeedTable()
    for i in range(policy.SPEED_COMMANDS + 10):
        for p in range(policy.SPEED_PEERS + 5):
            table.observe(f"cmd{i}", f"p{p}", 100)
    assert len(table.runtimes) == policy.SPEED_COMMANDS
    assert all(len(peers) == policy.SPEED_PEERS for peers in table.runtimes.values())
