"""Slot turnover on the makespan workload (issue 13): where a slot's idle time between one task's end
and the next one's start goes.

Runs the lognormal workload of bench/throughput.py (200 `sleep` tasks, mean 20 ms, sigma 1, seed 42)
on a fresh LocalCluster([1, 1]) driven through node1's Client, then reads every attempt's manager-side
times (`awarded`, `started`, `ended`, wall ms, from `wait_all`'s documents) and, per node (1 slot
each), lines the attempts up by start. For each pair (previous attempt, next attempt on the same slot):
  gap       = next.started - prev.ended           the slot's idle time as the manager sees it
  cause     = "queued"   next was awarded before prev ended: the contractor held it (prefetch), so the
                          gap is the local turnover (reaping, result, start path, event loop)
              "award"    next was awarded only after prev ended: the slot waited for the manager's
                          award (no prefetched task); split into prev.ended -> next.awarded (the
                          manager's reaction: result in, announce/award out) and awarded -> started
  overrun   = (ended - started) - duration          per attempt: spawn + exit + result path beyond the
                                                     sleep itself (lost to every task, not only at gaps)
Also the wall makespan, the bound max(total / 2, longest) and their ratio, as throughput.py prints them.
Times are ms of the manager's wall clock (one machine: both daemons share it); the remote node's
start and end are when the manager heard of them, so both ends of its gaps carry the same transit.

Run: PYTHONPATH=$PWD python bench/turnover.py [--runs 1] [--n 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, os.environ.get("PYTHONPATH", "")] if p)

from balance import durations, lower_bound  # noqa: E402

from xchanged.client import build_spec  # noqa: E402
from xchanged.localcluster import LocalCluster  # noqa: E402

WARM_UP = 20


def q(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (f"n={len(values):3d} sum={sum(values):7.0f} mean={statistics.mean(values):5.1f} "
            f"p50={q(values, .5):5.1f} p90={q(values, .9):5.1f} max={max(values):5.0f}")


def one_run(durs: list[float]) -> dict:
    with LocalCluster([1, 1]) as cluster:
        cluster.start()
        with cluster.client(0) as c:
            c.wait_all(c.submit_many([["true"]] * WARM_UP, retries=0), timeout=60)
            t0 = time.perf_counter()
            docs = c.submit_specs([build_spec(["sleep", f"{d:.3f}"], retries=0) for d in durs])
            done = c.wait_all([d["id"] for d in docs], timeout=120)
            wall = time.perf_counter() - t0
            stats = c.stats()
    bad = [d for d in done if d["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed: {bad[0]['id']} {bad[0]['state']}")
    dur_of = {d["id"]: float(d["command"][1]) * 1000 for d in done}
    per_node: dict[str, list[dict]] = defaultdict(list)
    for d in done:
        for a in d["attempts"]:
            if a["started"] is not None and a["ended"] is not None:
                per_node[a["node"]].append({**a, "task": d["id"], "dur": dur_of[d["id"]]})
    gaps: dict[str, list[float]] = defaultdict(list)
    split: dict[str, list[float]] = defaultdict(list)
    overrun: dict[str, list[float]] = defaultdict(list)
    busy = {}
    for node, atts in per_node.items():
        atts.sort(key=lambda a: a["started"])
        busy[node] = sum(a["ended"] - a["started"] for a in atts)
        for a in atts:
            overrun[node].append(a["ended"] - a["started"] - a["dur"])
        for prev, nxt in zip(atts, atts[1:]):
            gap = nxt["started"] - prev["ended"]
            if nxt["awarded"] is not None and nxt["awarded"] <= prev["ended"]:
                gaps[f"{node} queued"].append(gap)
            else:
                gaps[f"{node} award"].append(gap)
                split[f"{node} ended->awarded"].append((nxt["awarded"] or nxt["started"]) - prev["ended"])
                split[f"{node} awarded->started"].append(nxt["started"] - (nxt["awarded"] or nxt["started"]))
    first = min(d["submitted"] for d in done)
    last = max(d["finished"] for d in done)
    heads = {node: min(a["started"] for a in atts) - first for node, atts in per_node.items()}
    tails = {node: last - max(a["ended"] for a in atts) for node, atts in per_node.items()}
    bound = lower_bound([d / 1000 for d in dur_of.values()], [1, 1])
    return {"wall_s": wall, "bound_s": bound, "ratio": wall / bound, "span_ms": last - first,
            "per_node": {n: len(a) for n, a in per_node.items()}, "busy_ms": busy, "head_ms": heads,
            "tail_ms": tails, "gaps": dict(gaps), "split": dict(split), "overrun": dict(overrun),
            "timings": stats.get("timings")}


def show(res: dict) -> None:
    print(f"makespan {res['wall_s']:.3f} s, bound {res['bound_s']:.3f} s, ratio {res['ratio']:.3f}; "
          f"first submit -> last result {res['span_ms']} ms; tasks per node {res['per_node']}")
    for node in sorted(res["busy_ms"]):
        print(f"  {node}: busy (started->ended) {res['busy_ms'][node]} ms, idle before first start "
              f"{res['head_ms'][node]} ms, after last end {res['tail_ms'][node]} ms")
    print("  idle gaps between consecutive attempts on a slot (ms), by cause:")
    for k in sorted(res["gaps"]):
        print(f"    {k:28s} {summary(res['gaps'][k])}")
    for k in sorted(res["split"]):
        print(f"    {k:28s} {summary(res['split'][k])}")
    print("  per-attempt overrun (ended - started - sleep, ms): spawn + exit + result path:")
    for k in sorted(res["overrun"]):
        print(f"    {k:28s} {summary(res['overrun'][k])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    durs = durations(args.n, 42, mean=0.02, sigma=1.0)
    print(f"{len(durs)} tasks, total {sum(durs):.2f} s, longest {max(durs):.3f} s, "
          f"bound {lower_bound(durs, [1, 1]):.3f} s")
    results = []
    for i in range(args.runs):
        res = one_run(durs)
        print(f"run {i + 1}:")
        show(res)
        results.append(res)
    if args.runs > 1:
        print("ratios: " + ", ".join(f"{r['ratio']:.3f}" for r in results)
              + f"; median {statistics.median(r['ratio'] for r in results):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
