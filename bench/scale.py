"""How xchanged scales, measured on the real protocol core: `xchanged sim` at N = 100, 1,000, 10,000.

Each size runs in its own process (`python -m xchanged sim --json`, so memory is measured per size):
N nodes of drawn sizes (1 to 8 slots) form a cluster (seeded with three earlier nodes each), gossip
for a while, then run a Poisson workload at 80% utilisation (2 tasks per node, short and long ones)
with node crashes (about CRASHES of them, each node back after 5 s). Printed per size:

- messages per task: the negotiation's frames (cfp, bid, award, accept, progress, result, ack...)
- gossip KiB per node per second: membership's frames (loads, gossip, probes, verdicts)
- spread: a node's announced load change until 99% of the nodes have it
- detection: a crash until every node that held the crashed node sees it dead (worst, and mean)
- false positives: live nodes declared dead (suspicions of live nodes in brackets)
- response vs omniscient: mean response time over an omniscient central scheduler's on the same
  workload (the baseline, measured in the same run)
- lost: tasks that did not succeed
- CPU per event: host CPU per driver batch of the workload phase, and its ratio to the smallest size's
  (flat, or growing like log N, is the target); the host seconds of the whole run.

Run: python bench/scale.py [--sizes 100,1000,10000] [--seed 1] [--tasks-per-node 2]
The targets (issue 17): messages per task flat in N; detection within 5 s at every size; spread to
99% within 2.5 s at 1,000 nodes; response within 1.2 of the omniscient scheduler; 0 lost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from xchanged.sim.workload import make  # noqa: E402

CRASHES = 5


def crash_rate(nodes: int, tasks: int, seed: int) -> float:
    """About CRASHES crashes while the tasks arrive, whatever the size."""
    span = make(nodes, tasks, 0.8, seed).span
    return round(CRASHES / max(span, 1.0), 4)


def run(nodes: int, tasks: int, seed: int, warmup: float) -> dict:
    args = [sys.executable, "-m", "xchanged", "sim", "--nodes", str(nodes), "--tasks", str(tasks), "--load", "0.8",
            "--seed", str(seed), "--crash-rate", str(crash_rate(nodes, tasks, seed)), "--warmup", str(warmup), "--json"]
    began = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    doc = json.loads(out.stdout)
    doc["wall_s"] = round(time.monotonic() - began, 1)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tasks-per-node", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=6.0, help="seconds of gossip before anything is measured")
    args = ap.parse_args()
    print(f"{'N':>6} {'msgs/task':>9} {'gossip KiB/node/s':>17} {'spread 99%':>10} {'detect max/mean':>15} "
          f"{'false pos':>9} {'resp/omni':>9} {'lost':>4} {'CPU us/event':>12} {'vs smallest':>11} {'host s':>7} "
          f"{'RSS MiB':>7}", flush=True)
    base = None
    for n in (int(x) for x in args.sizes.split(",")):
        r = run(n, max(1, int(n * args.tasks_per_node)), args.seed, args.warmup)
        base = base or r["cpu_us_per_event"]
        spread = "-" if r["spread_99_s"] is None else f"{r['spread_99_s']:.2f} s"
        detect = "-" if r["detection_s"] is None else f"{r['detection_s']:.2f}/{r['detection_mean_s']:.2f} s"
        false = f"{r['false_positives']} ({r['false_suspicions']})"
        print(f"{n:>6} {r['messages_per_task']:>9.1f} {r['gossip_bytes_per_node_s'] / 1024:>17.1f} {spread:>10} "
              f"{detect:>15} {false:>9} {r['response_vs_omniscient']:>9.3f} {r['tasks_lost']:>4} "
              f"{r['cpu_us_per_event']:>12.1f} {r['cpu_us_per_event'] / base:>11.2f} {r['host_s']:>7.0f} "
              f"{r['max_rss_mib']:>7}", flush=True)
        print("       " + json.dumps({k: r[k] for k in ("tasks", "crashes", "undetected", "routine_spread_99_s",
                                                       "routine_reach", "mean_response_s", "omniscient_response_s",
                                                       "frames_per_node_s", "events", "virtual_s", "wall_s")}),
              flush=True)


if __name__ == "__main__":
    main()
