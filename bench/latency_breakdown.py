"""Where one submit -> result round trip goes, from the task's own timestamps (issue 13).

A 2-node LocalCluster (1 slot each, as bench/throughput.py's latency workload), N sequential `true`
tasks submitted to node1 through the Python Client; prints the medians of: the submit call (its reply
waits for the fsync), submitted -> awarded, awarded -> started, started -> ended, and the whole round
trip as the client saw it, plus where the tasks ran (the manager runs a task itself when it is the
best bidder: docs/performance.md).

Run: python bench/latency_breakdown.py [--tasks 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (sys.path[0], os.environ.get("PYTHONPATH")) if p)

from xchanged.localcluster import LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    calls, trips, docs = [], [], []
    with LocalCluster(slots=[1, 1]) as cluster:
        cluster.wait_connected()
        client = cluster.client(0)
        for _ in range(20):                                   # warm-up, as the throughput bench does
            client.wait(client.submit(["true"], retries=0))
        for _ in range(args.tasks):
            t0 = time.perf_counter()
            task_id = client.submit(["true"], retries=0)
            t1 = time.perf_counter()
            docs.append(client.wait(task_id))
            trips.append((time.perf_counter() - t0) * 1000)
            calls.append((t1 - t0) * 1000)

    def median(values) -> str:
        return f"{statistics.median(values):6.2f} ms"
    last = [d["attempts"][-1] for d in docs]
    print(f"{args.tasks} sequential `true` round trips, 2 nodes x 1 slot, medians:")
    print(f"  submit call (reply after the fsync)  {median(calls)}")
    print(f"  submitted -> awarded                 {median(a['awarded'] - d['submitted'] for a, d in zip(last, docs))}")
    print(f"  awarded -> started                   {median(a['started'] - a['awarded'] for a in last)}")
    print(f"  started -> ended                     {median(a['ended'] - a['started'] for a in last)}")
    print(f"  whole round trip (client)            {median(trips)}")
    print(f"  ran on: {dict(Counter(a['node'] for a in last))} (node1 is the manager)")


if __name__ == "__main__":
    main()
