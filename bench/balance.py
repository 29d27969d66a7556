"""Load balancing on a heterogeneous local cluster: xchanged vs random, round-robin and Dask.

Four real daemons on loopback with 1, 2, 3 and 6 slots run 300 `sleep` tasks whose durations come
from a seeded log-normal distribution (mean about 0.2 s). For each scheduler it prints

    makespan / lower bound,   lower bound = max(total work / total slots, longest task)

- xchanged:    all tasks submitted to node1 in one request; the protocol decides where they run.
- random:      each task pinned to a random node (`--label node=<name>`, which every node carries),
               through the same daemons, so only the placement differs.
- round-robin: task i pinned to node i mod 4.
- dask:        distributed.SpecCluster with one worker process per node, nthreads = its slots
               (skipped, with a message, when dask[distributed] is not installed:
               pip install -r bench/requirements.txt).

Then the submit-to-start latency (p50/p99) on an idle cluster and in the batch, and a contended
run with mixed priorities: the share of high/urgent tasks that started before every lower-priority
task that was submitted earlier and still unassigned when the high one arrived (target >= 95%).
"Started" is when the manager got the contractor's accept (sent as the process starts), so a busy
contractor answering late can make a correctly ordered award look late; the share by award time is
printed beside it. BALANCE_VERBOSE=1 lists the misses.

xchanged and Dask run `--rounds` times each (default 3) and the run with the median makespan is
compared, with every run's figure beside it: on a shared 2-core VM one run varies by several percent
(CPU steal, disk stalls), which is more than the difference being measured.

Run: python bench/balance.py [--tasks 300] [--seed 1] [--rounds 3] [--skip-dask]   (about two minutes)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xchanged.client import build_spec  # noqa: E402
from xchanged.localcluster import LocalCluster  # noqa: E402

SLOTS = [1, 2, 3, 6]
MEAN = 0.2
SIGMA = 0.5
PRIORITY_MIX = (("low", 0.45), ("normal", 0.3), ("high", 0.2), ("urgent", 0.05))


def durations(n: int, seed: int, mean: float = MEAN, sigma: float = SIGMA) -> list[float]:
    rng = random.Random(seed)
    mu = math.log(mean) - sigma * sigma / 2          # so that the distribution's mean is `mean`
    return [round(rng.lognormvariate(mu, sigma), 3) for _ in range(n)]


def lower_bound(durs: list[float], slots: list[int]) -> float:
    return max(sum(durs) / sum(slots), max(durs))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


# -- xchanged ------------------------------------------------------------------------------------


def wait_all(client, ids: list[str]) -> list[dict]:
    return [client.wait(tid, poll=30.0) for tid in ids]


def run_xchanged(cluster: LocalCluster, durs: list[float], pins: list[str] | None, estimates: bool) -> dict:
    specs = []
    for i, d in enumerate(durs):
        labels = {"node": pins[i]} if pins else None
        specs.append(build_spec(["sleep", f"{d:.3f}"], labels=labels, retries=0,
                                est_runtime=d if estimates else None))
    with cluster.client(0) as client:
        docs = client.submit_specs(specs)
        done = wait_all(client, [d["id"] for d in docs])
    bad = [d for d in done if d["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed, e.g. {bad[0]['state']}: {bad[0]['reason']}")
    start = min(d["submitted"] for d in done)
    end = max(d["finished"] for d in done)
    latency = [(d["attempts"][-1]["started"] - d["submitted"]) / 1000 for d in done]
    return {"makespan": (end - start) / 1000, "latency": latency,
            "per_node": Counter(d["node"] for d in done), "docs": done}


def idle_latency(cluster: LocalCluster, n: int = 40, gap: float = 0.1) -> list[float]:
    """Tasks submitted one at a time to an idle cluster: the protocol's own dispatch delay."""
    out = []
    with cluster.client(0) as client:
        ids = []
        for _ in range(n):
            ids.append(client.submit(["sleep", "0.02"], retries=0))
            time.sleep(gap)
        for doc in wait_all(client, ids):
            out.append((doc["attempts"][-1]["started"] - doc["submitted"]) / 1000)
    return out


def contended_priorities(cluster: LocalCluster, seed: int, n: int = 240) -> tuple[float, int, int]:
    """Mixed priorities submitted in bursts onto a saturated cluster.

    A high (or urgent) task h "wins" if it started no later than every task of lower priority
    that was submitted before h and not yet awarded when h was submitted.
    """
    rng = random.Random(seed + 1)
    durs = durations(n, seed + 2)
    names, weights = zip(*PRIORITY_MIX)
    prios = [rng.choices(names, weights)[0] for _ in range(n)]
    level = {p: i for i, p in enumerate(names)}
    ids = []
    with cluster.client(0) as client:
        backlog = 60                                      # saturate first: five tasks per slot
        ids += [d["id"] for d in client.submit_specs(
            [build_spec(["sleep", f"{d:.3f}"], priority="low", retries=0) for d in durs[:backlog]])]
        prios[:backlog] = ["low"] * backlog
        i = backlog
        while i < n:
            burst = rng.randint(1, 6)
            ids += [d["id"] for d in client.submit_specs(
                [build_spec(["sleep", f"{d:.3f}"], priority=p, retries=0)
                 for d, p in zip(durs[i:i + burst], prios[i:i + burst])])]
            i += burst
            time.sleep(rng.uniform(0.0, 0.06))
        docs = wait_all(client, ids)
    wins = total = award_wins = 0
    for h, dh in enumerate(docs):
        if level[prios[h]] < level["high"]:
            continue
        total += 1
        started_h = dh["attempts"][-1]["started"]
        awarded_h = dh["attempts"][-1]["awarded"]
        ok = True
        award_wins += all(docs[l]["attempts"][-1]["awarded"] >= awarded_h for l in range(h)
                          if level[prios[l]] < level[prios[h]] and docs[l]["submitted"] <= dh["submitted"]
                          and docs[l]["attempts"][0]["awarded"] > dh["submitted"])
        for l in range(h):
            dl = docs[l]
            if level[prios[l]] >= level[prios[h]] or dl["submitted"] > dh["submitted"]:
                continue
            first = dl["attempts"][0]
            if first.get("awarded") is not None and first["awarded"] <= dh["submitted"]:
                continue                                 # already handed to a node when h arrived
            if dl["attempts"][-1]["started"] < started_h:
                ok = False
                if os.environ.get("BALANCE_VERBOSE"):
                    print(f"  miss: {prios[h]} {dh['id']} on {dh['node']} started {started_h - dh['submitted']} ms "
                          f"after submission; {prios[l]} {dl['id']} on {dl['node']} started "
                          f"{dl['attempts'][-1]['started'] - dh['submitted']} ms after it, awarded "
                          f"{(first.get('awarded') or 0) - dh['submitted']} ms after it; attempts "
                          f"{[(a['node'], a['state'], a['reason']) for a in dh['attempts']]}")
                break
        wins += ok
    return (wins / total if total else float("nan")), wins, total, award_wins


def median_run(runs: list[dict]) -> dict:
    """The run with the median makespan (the upper median for an even count), with every makespan."""
    ordered = sorted(runs, key=lambda r: r["makespan"])
    return dict(ordered[len(ordered) // 2], all=[r["makespan"] for r in runs])


# -- dask ----------------------------------------------------------------------------------------


def _dask_sleep(d: float) -> float:
    started = time.time()
    subprocess.run(["sleep", f"{d:.3f}"], check=True)
    return started


def run_dask(durs: list[float]) -> dict | str:
    try:
        from distributed import Client, Nanny, Scheduler, SpecCluster
    except ImportError:
        return "dask[distributed] not installed (pip install -r bench/requirements.txt): skipped"
    import logging
    logging.getLogger("distributed").setLevel(logging.ERROR)
    workers = {f"w{i}": {"cls": Nanny, "options": {"nthreads": n, "silence_logs": logging.ERROR}}
               for i, n in enumerate(SLOTS)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR) as spec, Client(spec) as c:
        c.wait_for_workers(len(SLOTS))
        c.gather(c.map(_dask_sleep, [0.01] * sum(SLOTS), pure=False))     # warm the workers up
        t0 = time.time()
        futures = c.map(_dask_sleep, durs, pure=False)
        starts = c.gather(futures)
        makespan = time.time() - t0
    return {"makespan": makespan, "latency": [s - t0 for s in starts]}


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of xchanged and of Dask (the median is compared: a shared VM varies run to run)")
    ap.add_argument("--estimates", action="store_true",
                    help="submit each task with its duration as est_runtime (off: the scheduler is blind)")
    ap.add_argument("--only", choices=["xchanged", "random", "round-robin", "dask", "priorities", "latency"],
                    action="append")
    args = ap.parse_args()
    only = set(args.only or ["xchanged", "random", "round-robin", "dask", "priorities", "latency"])
    durs = durations(args.tasks, args.seed)
    lb = lower_bound(durs, SLOTS)
    print(f"workload: {len(durs)} sleep tasks, log-normal mean {statistics.mean(durs):.3f}s "
          f"(max {max(durs):.3f}s, total {sum(durs):.1f}s); slots {SLOTS}; lower bound {lb:.3f}s")
    rows = []
    names = [f"node{i + 1}" for i in range(len(SLOTS))]
    labels = [{"node": n} for n in names]
    # The four "hosts" share this machine's CPUs, so each would read the same system-wide CPU use
    # (including the benchmark's own processes) and refuse as overloaded together; CPU admission is
    # covered by the unit tests, here it is turned off.
    node = {"prefetch": int(os.environ["BALANCE_PREFETCH"])} if "BALANCE_PREFETCH" in os.environ else {}
    cluster = LocalCluster(SLOTS, labels=labels, settings={"bidding": {"overload_cpu_percent": 100}, "node": node})
    try:
        cluster.start()
        if "latency" in only:
            idle = idle_latency(cluster)
            print(f"idle cluster, submit-to-start: p50 {pct(idle, 0.5) * 1000:.1f} ms, "
                  f"p99 {pct(idle, 0.99) * 1000:.1f} ms ({len(idle)} tasks, one at a time)")
        if "xchanged" in only:
            runs = [run_xchanged(cluster, durs, None, args.estimates) for _ in range(max(1, args.rounds))]
            res = median_run(runs)
            rows.append(("xchanged", res))
            print(f"  xchanged tasks per node (median run): {dict(sorted(res['per_node'].items()))}")
        rng = random.Random(args.seed + 100)
        if "random" in only:
            rows.append(("random", run_xchanged(cluster, durs, [rng.choice(names) for _ in durs], False)))
        if "round-robin" in only:
            rows.append(("round-robin", run_xchanged(cluster, durs, [names[i % len(names)]
                                                                     for i in range(len(durs))], False)))
        if "priorities" in only:
            share, wins, total, award_wins = contended_priorities(cluster, args.seed)
            prio_line = (f"contended mixed priorities: {wins}/{total} high/urgent tasks started before every "
                         f"earlier-queued lower-priority task = {share:.1%} (target >= 95%); "
                         f"awarded before them: {award_wins}/{total} = {award_wins / max(1, total):.1%}")
        else:
            prio_line = ""
        with cluster.client(0) as c:
            stats = c.stats()
    finally:
        cluster.cleanup()
    if "dask" in only and not args.skip_dask:
        runs = [run_dask(durs) for _ in range(max(1, args.rounds))]
        if isinstance(runs[0], str):
            print(f"dask: {runs[0]}")
        else:
            rows.append(("dask", median_run(runs)))
    print()
    print(f"{'scheduler':<12} {'makespan s':>10} {'/ lower bound':>14} {'start p50 s':>12} {'start p99 s':>12}"
          f"   {'all runs / lower bound'}")
    for name, res in rows:
        every = " ".join(f"{m / lb:.3f}" for m in res.get("all", [res["makespan"]]))
        print(f"{name:<12} {res['makespan']:>10.3f} {res['makespan'] / lb:>14.3f} "
              f"{pct(res['latency'], 0.5):>12.3f} {pct(res['latency'], 0.99):>12.3f}   {every}")
    if prio_line:
        print(prio_line)
    print(f"node1 stats (all runs): announcements {stats['announcements']}, awards {stats['awards']}, "
          f"late bids {stats['late_bids']}, outranked rounds {stats.get('outranked_rounds')}, "
          f"retries {stats['retries']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
