"""Resource-aware bidding and load balancing (issue 4) on the simulator's virtual clock.

Real protocol Nodes exchange signed frames over the fake network; a task `["sleep", S]` runs S
virtual seconds. The node called "mgr" carries the label role=manager and tasks ask for
role=worker, so where an attempt runs is always a worker.
"""

from __future__ import annotations

import dataclasses

from xchanged.protocol import policy
from xchanged.protocol.events import Capacity, ResourcesRead
from xchanged.protocol.membership import GossipSettings
from xchanged.protocol.messages import GpuInfo, Requirements, TaskSpec
from xchanged.protocol.tasks import AGING_STEP
from xchanged.sim.cluster import WALL_EPOCH_MS, SimCluster

TERMINAL = ("succeeded", "failed", "cancelled")
WORKER = {"role": "worker"}


def cluster(workers: dict[str, int], seed: int = 1, worker_labels: dict[str, dict] | None = None,
            **kw) -> SimCluster:
    sim = SimCluster(seed=seed, **kw)
    sim.add_node("mgr", slots=2, labels={"role": "manager"})
    for name, slots in workers.items():
        extra = (worker_labels or {}).get(name, {})
        gpus = extra.pop("_gpus", ())
        sim.add_node(name, slots=slots, labels={**WORKER, **extra}, gpus=gpus)
    sim.run_for(3.0)
    return sim


def spec(*argv, labels=None, **kw) -> TaskSpec:
    req = kw.pop("requirements", None) or Requirements(labels={**WORKER, **(labels or {})})
    return TaskSpec(argv=[str(a) for a in argv], requirements=req, **kw)


def node_of(sim: SimCluster, doc: dict) -> str:
    return doc["attempts"][-1]["node"]


def done(sim: SimCluster, tid: str, manager: str = "mgr", limit: float = 300) -> dict:
    assert sim.run_until(lambda: sim.task(manager, tid).state in TERMINAL, limit), sim.task(manager, tid).to_doc()
    return sim.task(manager, tid).to_doc()


def start_order(sim: SimCluster, tids: list[str], manager: str = "mgr") -> list[str]:
    docs = {t: sim.task(manager, t).to_doc() for t in tids}
    return sorted(tids, key=lambda t: (docs[t]["attempts"][-1]["started"], docs[t]["order"]))


# -- hard constraints, refusals and "why pending" -------------------------------------------------


def test_labels_and_gpus_are_hard_constraints():
    gpu = GpuInfo(0, "A100", 40 << 30, 40 << 30, 0.0)
    sim = cluster({"plain": 4, "gpu": 1}, worker_labels={"gpu": {"cuda": "12", "_gpus": (gpu,)}})
    tids = [sim.submit("mgr", spec("sleep", 1, labels={"cuda": "12"})) for _ in range(3)]
    tids += [sim.submit("mgr", spec("sleep", 1, requirements=Requirements(gpus=1, gpu_mem=20 << 30,
                                                                         labels=WORKER)))]
    for tid in tids:
        assert node_of(sim, done(sim, tid)) == "gpu"


def test_a_task_no_peer_can_run_says_why_in_status():
    sim = cluster({"a": 2, "b": 2})
    tid = sim.submit("mgr", spec("sleep", 1, requirements=Requirements(gpus=2, labels=WORKER)))
    sim.run_for(5.0)
    doc = sim.task("mgr", tid).to_doc()
    assert doc["state"] == "queued"
    assert doc["reason_code"] == "no_peer_fits" and "label role=worker" in doc["reason"]


def test_contractor_refusals_reach_status_with_their_reasons():
    sim = cluster({"a": 2, "b": 2})
    # 8 GiB free on each worker: a task that needs 16 GiB fits their totals but not what is free now
    for name in ("a", "b"):
        sim.deliver(sim.id_of(name), ResourcesRead(Capacity(cpus=2, cpu_percent=10.0, mem_total=64 << 30,
                                                            mem_available=8 << 30)))
    tid = sim.submit("mgr", spec("sleep", 1, requirements=Requirements(mem=16 << 30, labels=WORKER)))
    sim.run_for(2.0)
    doc = sim.task("mgr", tid).to_doc()
    assert doc["state"] == "queued"
    assert doc["reason_code"] == "no_bids" and "2 refused: not enough memory free" in doc["reason"]


def test_overloaded_node_takes_no_work_and_status_says_so():
    sim = cluster({"a": 2})
    sim.deliver(sim.id_of("a"), ResourcesRead(Capacity(cpus=2, cpu_percent=97.0, mem_total=64 << 30,
                                                       mem_available=60 << 30)))
    sim.run_for(2.0)                                  # its next load signal offers no slots
    tid = sim.submit("mgr", spec("sleep", 1))
    sim.run_for(2.0)
    doc = sim.task("mgr", tid).to_doc()
    assert doc["state"] == "queued"
    assert doc["reason_code"] == "busy" and "1 not taking work" in doc["reason"]
    contractor = sim.node("a").node.contractor
    assert contractor.refusal(Requirements(), "sleep", sim.now)[0] == "overloaded"
    sim.deliver(sim.id_of("a"), ResourcesRead(Capacity(cpus=2, cpu_percent=20.0, mem_total=64 << 30,
                                                       mem_available=60 << 30)))
    assert done(sim, tid)["state"] == "succeeded"


def test_reservations_count_so_a_node_never_runs_more_than_its_slots():
    sim = cluster({"a": 1, "b": 2, "c": 3})
    sim.add_node("mgr2", slots=1, labels={"role": "manager"})
    sim.run_for(2.0)
    tids = [(m, sim.submit(m, spec("sleep", 0.1 + (i % 7) / 10))) for i in range(30) for m in ("mgr", "mgr2")]
    peak = {n: 0 for n in ("a", "b", "c")}

    def finished() -> bool:
        for n in peak:
            peak[n] = max(peak[n], len(sim.node(n).started))
        return all(sim.task(m, t).state in TERMINAL for m, t in tids)

    assert sim.run_until(finished, 120)
    assert peak == {"a": 1, "b": 2, "c": 3}           # every slot used, none exceeded
    assert all(sim.task(m, t).state == "succeeded" for m, t in tids)


# -- priorities, aging, EDF -----------------------------------------------------------------------


def test_higher_priority_runs_first():
    sim = cluster({"a": 1})
    first = sim.submit("mgr", spec("sleep", 5))
    sim.run_until(lambda: sim.task("mgr", first).state == "running", 5)
    low = [sim.submit("mgr", spec("sleep", 1, priority="low")) for _ in range(3)]
    normal = sim.submit("mgr", spec("sleep", 1))
    high = sim.submit("mgr", spec("sleep", 1, priority="high"))
    urgent = sim.submit("mgr", spec("sleep", 1, priority="urgent"))
    for t in low:
        done(sim, t)
    assert start_order(sim, [first, *low, normal, high, urgent]) == [first, urgent, high, normal, *low]


def test_waiting_raises_priority_by_aging():
    sim = cluster({"a": 1})
    blocker = sim.submit("mgr", spec("sleep", 3 * AGING_STEP))
    sim.run_until(lambda: sim.task("mgr", blocker).state == "running", 5)
    old_low = sim.submit("mgr", spec("sleep", 1, priority="low"))
    sim.run_for(2 * AGING_STEP + 1)
    new_high = sim.submit("mgr", spec("sleep", 1, priority="high"))
    new_normal = sim.submit("mgr", spec("sleep", 1))
    # at the slot's release the low task has aged two levels past a normal one and ties the high one
    done(sim, new_normal)
    assert start_order(sim, [old_low, new_high, new_normal]) == [old_low, new_high, new_normal]


def test_earliest_deadline_first_among_equal_priorities():
    sim = cluster({"a": 1})
    blocker = sim.submit("mgr", spec("sleep", 5))
    sim.run_until(lambda: sim.task("mgr", blocker).state == "running", 5)
    base = WALL_EPOCH_MS + 3_600_000
    late = sim.submit("mgr", spec("sleep", 1, deadline_ms=base + 60_000))
    none = sim.submit("mgr", spec("sleep", 1))
    soon = sim.submit("mgr", spec("sleep", 1, deadline_ms=base))
    done(sim, none)
    assert start_order(sim, [late, none, soon]) == [soon, late, none]


def test_a_more_urgent_task_takes_the_room_of_an_open_round():
    sim = cluster({"a": 1}, latency=0.01, direct_award=False)   # every award after a bid round
    blocker = sim.submit("mgr", spec("sleep", 1))
    lows = [sim.submit("mgr", spec("sleep", 1, priority="low")) for _ in range(3)]
    mgr = sim.node("mgr").node.manager
    assert sim.run_until(lambda: mgr.tasks[lows[0]].round is not None, 10)   # the slot freed; round open
    urgent = sim.submit("mgr", spec("sleep", 1, priority="urgent"))
    for t in lows:
        assert done(sim, t)["state"] == "succeeded"
    assert start_order(sim, [blocker, urgent, *lows]) == [blocker, urgent, *lows]
    assert mgr.stats["outranked"] == 1


# -- award choice, circuit breaker, reputation ----------------------------------------------------


def test_awards_go_to_the_best_bid_and_spread_over_free_room():
    sim = cluster({"small": 1, "big": 6})
    tids = [sim.submit("mgr", spec("sleep", 2)) for _ in range(7)]
    docs = [done(sim, t) for t in tids]
    nodes = [node_of(sim, d) for d in docs]
    assert nodes.count("big") == 6 and nodes.count("small") == 1
    assert all(d["attempts"][-1]["started"] - d["submitted"] < 100 for d in docs)   # no one waited


def test_circuit_breaker_stops_awards_then_lets_one_trial_through():
    sim = cluster({"a": 2})
    a = sim.id_of("a")
    for _ in range(policy.BREAKER_FAILURES):
        done(sim, sim.submit("mgr", spec("exit", 1, retries=0)))
    record = sim.node("mgr").node.manager.records[a]
    assert record.breaker == policy.OPEN
    tid = sim.submit("mgr", spec("sleep", 1))
    sim.run_for(1.0)
    doc = sim.task("mgr", tid).to_doc()
    assert doc["state"] == "queued" and doc["reason_code"] == "no_peer_fits" and "circuit breaker" in doc["reason"]
    assert done(sim, tid, limit=policy.BREAKER_COOLDOWN + 5)["state"] == "succeeded"   # the half-open trial
    assert record.breaker == policy.CLOSED


def test_bid_estimates_are_checked_against_measured_run_times():
    sim = cluster({"a": 2}, direct_award=False)
    record_of = lambda: sim.node("mgr").node.manager.records[sim.id_of("a")]   # noqa: E731
    for _ in range(3):                                  # the submitter (and so the bid) says 1 s; it runs 4 s
        doc = done(sim, sim.submit("mgr", spec("sleep", 4, est_runtime=1.0)))
        assert doc["attempts"][-1]["estimate_ms"] == 1000
    assert record_of().estimates == 3 and record_of().accuracy < 0.7
    # without a submitter's estimate the contractor bids its own mean run time for the command
    doc = done(sim, sim.submit("mgr", spec("sleep", 4)))
    assert 3000 <= doc["attempts"][-1]["estimate_ms"] <= 4100


# -- pull-based work stealing and bounded fan-out -------------------------------------------------


def test_a_freed_slot_is_offered_at_once_to_managers_with_queued_work():
    slow = GossipSettings(interval=5.0, suspect_after=15.0, dead_after=30.0)
    sim = cluster({"w": 1}, gossip=slow)
    sim.add_node("mgr2", slots=1, labels={"role": "manager"})
    sim.run_for(12.0)
    first = sim.submit("mgr", spec("sleep", 8))
    sim.run_until(lambda: sim.task("mgr", first).state == "running", 5)
    waiting = sim.submit("mgr2", spec("sleep", 1))
    sim.run_for(6.0)                                    # mgr2's load (queued=1) has reached w
    assert sim.task("mgr2", waiting).state == "queued"
    end = done(sim, first)["finished"]
    started = done(sim, waiting, "mgr2")["attempts"][-1]["started"]
    assert started - end < 50                           # milliseconds, not a gossip interval (5 s)


def test_announcements_are_capped_by_max_candidates():
    sim = SimCluster(seed=2, max_candidates=3)
    sim.add_node("mgr", slots=1, labels={"role": "manager"})
    for i in range(20):
        sim.add_node(f"w{i}", slots=2, labels=WORKER)
    sim.run_for(8.0)
    mgr = sim.node("mgr").node.manager
    tids = [sim.submit("mgr", spec("sleep", 1)) for _ in range(10)]
    sizes = [len(mgr.tasks[t].round.candidates) for t in tids if mgr.tasks[t].round is not None]
    assert sizes and max(sizes) <= 3
    for t in tids:
        assert done(sim, t)["state"] == "succeeded"


def test_a_lone_known_candidate_gets_a_direct_award_without_a_bid_round():
    sim = cluster({"a": 1})
    mgr = sim.node("mgr").node.manager
    first = done(sim, sim.submit("mgr", spec("sleep", 1)))
    assert mgr.stats["direct_awards"] == 0 and mgr.stats["announcements"] == 1   # a stranger: cfp and bid
    second = done(sim, sim.submit("mgr", spec("sleep", 1)))
    assert mgr.stats["direct_awards"] == 1 and mgr.stats["announcements"] == 1
    assert node_of(sim, first) == node_of(sim, second) == "a"
    audit = [e for e in sim.node("mgr").audit if e["event"] == "award"]
    assert "message" in audit[0] and audit[1]["direct"] is True


def test_a_rejected_direct_award_backs_off_when_the_node_cannot_run_it():
    sim = cluster({"a": 1})
    done(sim, sim.submit("mgr", spec("sleep", 1)))
    contractor = sim.node("a").node.contractor
    contractor.settings = dataclasses.replace(contractor.settings, allow=("true",))
    tid = sim.submit("mgr", spec("sleep", 1))
    sim.run_for(1.0)
    doc = sim.task("mgr", tid).to_doc()
    assert doc["state"] == "queued" and doc["reason_code"] in ("all_rejected", "policy")
    assert doc["attempts"][0]["state"] == "rejected" and doc["attempts"][0]["reason_code"] == "policy"
    sim.run_for(10.0)
    doc = sim.task("mgr", tid).to_doc()
    assert len(doc["attempts"]) == 1 and doc["reason_code"] == "policy"   # then cfp rounds: policy refusals


def test_queued_task_without_a_free_slot_is_announced_when_one_frees():
    sim = cluster({"a": 1})
    busy = sim.submit("mgr", spec("sleep", 10))
    sim.run_until(lambda: sim.task("mgr", busy).state == "running", 5)
    tid = sim.submit("mgr", spec("sleep", 1))
    sim.run_for(3.0)
    doc = sim.task("mgr", tid).to_doc()
    assert doc["state"] == "queued" and doc["reason_code"] == "busy"
    assert done(sim, tid)["attempts"][-1]["started"] - done(sim, busy)["finished"] < 50
