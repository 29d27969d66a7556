"""Composite tasks on the simulator: a coordinator won by bidding runs the parts across the cluster,
in dependency order, reports them, runs the reduce; a coordinator that dies costs no finished part."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from xchanged.protocol.specs import CompositeSpec, Step, TaskSpec
from xchanged.sim.cluster import SimCluster

TERMINAL = ("succeeded", "failed", "cancelled")


def cluster(n=4, slots=2, seed=3, owner_coordinates=True, **kw) -> SimCluster:
    """n nodes; n0 submits. With owner_coordinates=False, n0 coordinates nothing itself."""
    sim = SimCluster(seed=seed, latency=0.002, validate=True, **kw)
    for i in range(n):
        coordinations = {} if i or owner_coordinates else {"max_coordinations": 0}
        sim.add_node(f"n{i}", slots=slots, **coordinations)
    sim.run_for(2.0)
    return sim


def composite(*steps: Step, **kw) -> TaskSpec:
    return TaskSpec(argv=[], composite=CompositeSpec(list(steps), **kw), name="tree")


def sleeps(seconds: list[float], name: str = "", **kw) -> Step:
    return Step(name, TaskSpec(["sleep", "{item}"]), items=[str(s) for s in seconds], **kw)


def done(sim: SimCluster, tid: str, owner: str = "n0", limit: float = 300) -> dict:
    assert sim.run_until(lambda: sim.task(owner, tid).state in TERMINAL, limit), sim.task(owner, tid).to_doc()
    return sim.task(owner, tid).to_doc()


def part_runs(sim: SimCluster, parent: str) -> list[tuple[str, float, str]]:
    """(node, start time, part key) of every process started for a part of `parent`."""
    return [(node, t, e.spec.name) for node, t, e in sim.runs if e.spec.parent == parent]


def test_an_array_with_a_reduce_runs_across_the_cluster_and_the_reduce_sees_every_result_in_order():
    sim = cluster()
    tid = sim.submit("n0", composite(sleeps([0.2] * 20), reduce=TaskSpec(["sleep", "0.1"])))
    doc = done(sim, tid)
    assert doc["state"] == "succeeded" and doc["progress"] == {"done": 21, "total": 21, "failed": 0}
    runs = part_runs(sim, tid)
    assert len({node for node, _, _ in runs}) > 1, "every part ran on one node"
    reduce = next(e for _, _, e in sim.runs if e.spec.name == "reduce")
    lines = [json.loads(line) for line in reduce.spec.parts_input.splitlines()]
    assert [line["index"] for line in lines] == list(range(20)) and {line["state"] for line in lines} == {"succeeded"}
    coordinator = sim.task("n0", tid).attempts[-1].node
    audit = [e for s in sim.nodes.values() for e in s.audit if e.get("parent") == tid and e["event"] == "award"]
    assert {e["manager"] for e in audit} == {coordinator} and len(audit) >= 21   # every part's award, with its parent


def test_a_diamond_runs_in_dependency_order():
    sim = cluster()
    a, b, c, d = (Step(n, TaskSpec(["sleep", "0.3"]), depends_on=deps)
                  for n, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
    tid = sim.submit("n0", composite(d, c, b, a))
    assert done(sim, tid)["state"] == "succeeded"
    start = {key: t for _, t, key in part_runs(sim, tid)}
    assert start["a"] + 0.3 <= start["b"] and start["a"] + 0.3 <= start["c"]
    assert max(start["b"], start["c"]) + 0.3 <= start["d"]


def test_without_fail_fast_the_other_parts_finish_the_reduce_runs_and_the_composite_fails():
    sim = cluster()
    step = Step("", TaskSpec(["exit", "{item}"], retries=0), items=["0", "0", "7", "0"])
    tid = sim.submit("n0", composite(step, reduce=TaskSpec(["sleep", "0"])))
    doc = done(sim, tid)
    assert doc["state"] == "failed" and doc["exit_code"] == 7 and doc["reason_code"] == "parts_failed"
    assert doc["progress"] == {"done": 5, "total": 5, "failed": 1}
    reduce = next(e for _, _, e in sim.runs if e.spec.name == "reduce")
    states = [json.loads(line)["state"] for line in reduce.spec.parts_input.splitlines()]
    assert states == ["succeeded", "succeeded", "failed", "succeeded"]


def test_fail_fast_cancels_the_other_parts_and_skips_the_reduce():
    sim = cluster()
    hangs = Step("slow", TaskSpec(["hang"], retries=0))
    failing = Step("bad", TaskSpec(["exit", "3"], retries=0))
    tid = sim.submit("n0", composite(hangs, failing, reduce=TaskSpec(["sleep", "0"]), fail_fast=True))
    doc = done(sim, tid)
    assert doc["state"] == "failed" and doc["exit_code"] == 3
    assert not any(e.spec.name == "reduce" for _, _, e in sim.runs)
    assert sim.run_until(lambda: all(not s.started for s in sim.nodes.values()), 10), "a part still runs"


def test_max_parallel_bounds_the_parts_in_flight():
    sim = cluster()
    tid = sim.submit("n0", composite(sleeps([0.5] * 12), max_parallel=2))
    peak = 0

    def check() -> bool:
        nonlocal peak
        peak = max(peak, sum(1 for s in sim.nodes.values() for key in s.started if key[0].startswith(tid)))
        return sim.task("n0", tid).state in TERMINAL
    assert sim.run_until(check, 120)
    assert sim.task("n0", tid).state == "succeeded" and peak == 2


def test_a_nested_composite_gets_a_coordinator_of_its_own_and_one_slot_nodes_do_not_deadlock():
    sim = cluster(n=3, slots=1)
    inner = CompositeSpec([sleeps([0.2] * 4)])
    tid = sim.submit("n0", composite(Step("inner", composite=inner), Step("after", TaskSpec(["sleep", "0.1"]),
                                                                          depends_on=["inner"])))
    doc = done(sim, tid, limit=120)
    assert doc["state"] == "succeeded" and doc["progress"]["done"] == 2
    inner_runs = [e for _, _, e in sim.runs if "/inner" in e.spec.parent]
    assert len(inner_runs) == 4


@pytest.mark.parametrize("crash_after", [1.0, 2.5, 4.0])
def test_a_dead_coordinator_costs_no_part_it_reported(crash_after):
    sim = cluster(n=4, slots=2, owner_coordinates=False)
    tid = sim.submit("n0", composite(sleeps([0.5] * 60), reduce=TaskSpec(["sleep", "0"])))   # ~5 s on 6 slots
    assert sim.run_until(lambda: sim.task("n0", tid).state == "running", 10)
    sim.run_for(crash_after)
    coordinator = sim.nodes[sim.task("n0", tid).attempts[-1].node].node.settings.name
    reported = {key for key, r in sim.task("n0", tid).parts.items() if r.state == "succeeded"}
    sim.crash(coordinator)
    doc = done(sim, tid, limit=300)
    assert doc["state"] == "succeeded" and doc["progress"]["done"] == 61
    ran = Counter(e.spec.name for _, _, e in sim.runs if e.spec.parent == tid)
    assert reported and all(ran[key] == 1 for key in reported), {k: ran[k] for k in reported if ran[k] != 1}
    assert len(doc["attempts"]) >= 2 and doc["attempts"][0]["state"] == "lost"


def test_the_submitting_node_keeps_reported_parts_across_its_own_restart():
    sim = cluster()
    tid = sim.submit("n0", composite(sleeps([0.3] * 20)))
    assert sim.run_until(lambda: len(sim.task("n0", tid).parts) >= 5, 30)
    kept = set(sim.task("n0", tid).parts)
    sim.crash("n0")
    sim.run_for(1.0)
    sim.restart("n0")
    assert kept <= set(sim.task("n0", tid).parts)
    assert done(sim, tid)["state"] == "succeeded"


def test_cancel_stops_the_whole_tree():
    sim = cluster()
    inner = CompositeSpec([Step("", TaskSpec(["hang"]), items=["a", "b"])])
    tid = sim.submit("n0", composite(Step("top", TaskSpec(["hang"])), Step("inner", composite=inner)))
    assert sim.run_until(lambda: sum(len(s.started) for s in sim.nodes.values()) == 3, 30)
    sim.cancel("n0", tid)
    assert sim.task("n0", tid).state == "cancelled"
    assert sim.run_until(lambda: all(not s.started for s in sim.nodes.values()), 30), \
        [(s.node.settings.name, list(s.started)) for s in sim.nodes.values() if s.started]
