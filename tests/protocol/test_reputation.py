"""Reputation across a restart (protocol/reputation.py): a manager's records of its contractors and
its speed table are persisted (LAZY, only what changed), and a restarted manager scores as before."""

from __future__ import annotations

from xchanged.protocol import policy, readout
from xchanged.protocol.effects import LAZY, PersistReputation
from xchanged.protocol.messages import Requirements, TaskSpec
from xchanged.protocol.reputation import CONTRACTOR, MAX_RECORDS, SPEED, Keeper
from xchanged.sim.cluster import SimCluster

WALL = 1_790_000_000_000


def record(successes=3, failures=1, **kw) -> policy.ContractorRecord:
    r = policy.ContractorRecord()
    for _ in range(successes):
        r.succeeded()
    for _ in range(failures):
        r.failed(0.0)
    for key, value in kw.items():
        setattr(r, key, value)
    return r


def test_only_changed_records_and_commands_are_handed_out():
    keeper, speeds = Keeper(), policy.SpeedTable()
    records = {"a": record(), "b": policy.ContractorRecord()}         # b: scored a bid, never ran
    speeds.observe("make", "a", 1200)
    changes = keeper.changes(records, speeds, 10.0, WALL)
    assert [(k, key) for k, key, _ in changes] == [(CONTRACTOR, "a"), (SPEED, "make")]
    assert keeper.changes(records, speeds, 11.0, WALL + 1000) == []    # nothing new
    records["a"].succeeded()
    records["b"].failed(11.0)
    assert [key for _, key, _ in keeper.changes(records, speeds, 12.0, WALL, peer="a")] == ["a"]
    assert [key for _, key, _ in keeper.changes(records, speeds, 12.0, WALL)] == ["b"]


def test_a_forgotten_command_is_deleted():
    keeper, speeds = Keeper(), policy.SpeedTable()
    for i in range(policy.SPEED_COMMANDS + 1):
        speeds.observe(f"cmd{i}", "a", 100)
    changes = {key: doc for kind, key, doc in keeper.changes({}, speeds, 0.0, WALL) if kind == SPEED}
    assert changes["cmd0"] is None and changes["cmd1"]["runtimes"] == {"a": 100.0}
    assert len([d for d in changes.values() if d is not None]) == policy.SPEED_COMMANDS


def test_records_come_back_the_same_with_times_moved_to_the_new_clock():
    keeper, speeds = Keeper(), policy.SpeedTable()
    r = record(successes=5, failures=0)
    r.observe_runtime(800, 1000)
    for _ in range(3):
        r.failed(100.0)                         # three in a row: open for BREAKER_COOLDOWN from t=100
    r.last_award = 95.0
    assert r.breaker == policy.OPEN and r.open_until == 100.0 + policy.BREAKER_COOLDOWN
    speeds.observe("make", "a", 1000)
    speeds.observe("make", "b", 3000)
    docs = [doc for _, _, doc in keeper.changes({"a": r}, speeds, 102.0, WALL)]
    # restart: the monotonic clock starts over at 7.0, the wall clock went on 5 s
    records2, speeds2 = {}, policy.SpeedTable()
    assert Keeper().restore(docs, records2, speeds2, 7.0, WALL + 5000) == 0
    back = records2["a"]
    assert (back.successes, back.failures, back.consecutive_failures, back.breaker, back.estimates) == \
        (5, 3, 3, policy.OPEN, 1)
    assert back.success_rate == r.success_rate and abs(back.accuracy - r.accuracy) < 1e-12
    assert abs(back.open_until - (7.0 - 5.0 + (r.open_until - 102.0))) < 1e-3        # still 3 s to go
    assert abs(back.last_award - (7.0 - 5.0 - 7.0)) < 1e-3
    assert not back.allows_award(7.0) and back.allows_award(back.open_until)        # half-open then
    assert speeds2.relative("make", "a") == speeds.relative("make", "a") > 1.0


def test_recovery_is_bounded_and_skips_nonsense():
    good = [{"kind": CONTRACTOR, "peer": f"p{i}", "successes": 1, "failures": 0, "consecutive_failures": 0,
             "breaker": "closed", "open_until_ms": None, "cooldown": policy.BREAKER_COOLDOWN, "accuracy": 1.0,
             "estimates": 0, "last_award_ms": None, "version": 1, "changed_ms": i} for i in range(MAX_RECORDS + 5)]
    bad = [{"kind": CONTRACTOR, "peer": "x", "breaker": "melted"}, {"kind": "nonsense"}, "not a dict",
           dict(good[0], peer="y", accuracy=7.0), dict(good[0], peer="z", successes=-1),
           {"kind": SPEED, "command": "c", "runtimes": {"a": "fast"}}]
    records, speeds = {}, policy.SpeedTable()
    assert Keeper().restore(good + bad, records, speeds, 0.0, WALL) == len(bad) + 5
    assert len(records) == MAX_RECORDS and "p0" not in records and f"p{MAX_RECORDS + 4}" in records


def cluster(seed=3) -> SimCluster:
    sim = SimCluster(seed=seed)
    for name in ("mgr", "a", "b"):
        sim.add_node(name, slots=2, labels={"role": "manager" if name == "mgr" else "worker"})
    sim.run_for(3.0)
    return sim


def spec(*argv, **kw) -> TaskSpec:
    return TaskSpec(argv=[str(a) for a in argv], requirements=Requirements(labels={"role": "worker"}), **kw)


def reputations(sim: SimCluster) -> dict[str, tuple]:
    node = sim.node("mgr").node
    return {view.name: (view.reputation.success_rate, view.reputation.successes, view.reputation.failures,
                        view.reputation.breaker, view.reputation.bid_accuracy)
            for view in readout.peers(node, sim.now) if view.reputation is not None}


def test_a_restarted_manager_keeps_its_contractors_records_and_speeds():
    """Through the driver loop and the simulated disk: what a crash keeps is what a restart scores with."""
    sim = cluster()
    tids = [sim.submit("mgr", spec("exit", 1, retries=0)) for _ in range(3)]
    tids += [sim.submit("mgr", spec("sleep", 0.5 + i / 10, est_runtime=0.4)) for i in range(8)]
    assert sim.run_until(lambda: all(sim.task("mgr", t).state in ("succeeded", "failed") for t in tids), 120)
    sim.run_for(2.0)                            # a gossip round and a LAZY commit
    before = reputations(sim)
    assert set(before) == {"a", "b"} and sum(r[2] for r in before.values()) == 3
    assert any(r[4] is not None and r[4] < 1.0 for r in before.values())       # bid accuracy was measured
    speeds = dict(sim.node("mgr").node.manager.speeds.runtimes)
    stored = sim.node("mgr").disk.table("reputation")
    assert set(stored) == {(CONTRACTOR, sim.id_of(name)) for name in before} | {(SPEED, "sleep")}
    sim.crash("mgr")
    sim.run_for(1.0)
    sim.restart("mgr")
    sim.run_for(3.0)
    assert reputations(sim) == before
    assert dict(sim.node("mgr").node.manager.speeds.runtimes) == speeds


def test_reputation_writes_are_lazy_and_follow_results():
    sim = cluster()
    effects = []
    mgr = sim.node("mgr")
    handler = mgr.driver.handlers[PersistReputation]
    mgr.driver.handlers[PersistReputation] = lambda e: (effects.append(e), handler(e))
    tid = sim.submit("mgr", spec("sleep", 1))
    assert sim.run_until(lambda: sim.task("mgr", tid).state == "succeeded", 30)
    kinds = sorted((e.kind, e.key) for e in effects)
    node = sim.task("mgr", tid).attempts[-1].node
    assert kinds == [(CONTRACTOR, node), (SPEED, "sleep")] and all(e.when == LAZY for e in effects)
