"""Composite tasks against plain tasks, in one run (issue 12): a 2,000-part array of `true` on 4 daemons
against the same number of plain `true` tasks submitted with `submit_many`, on the same cluster.

Prints, as medians over --rounds: parts/s of the composite (submit to its result, reduce-free) and
tasks/s of the plain batch (submit to the last result), their ratio (target: the composite within 20%
of the plain batch, i.e. a ratio of at least 0.8), and the submitting daemon's RSS before and after
the composites (the composite's progress must be compact there: no full task document per part).

    python bench/composite.py                  # 2,000 parts, 3 rounds of each
    python bench/composite.py --parts 10000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xchanged.localcluster import LocalCluster  # noqa: E402


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def plain(client, n: int) -> float:
    start = time.monotonic()
    ids = client.submit_many([["true"]] * n, retries=0)
    for tid in ids:
        client.wait(tid, timeout=600)
    return n / (time.monotonic() - start)


def composite(client, n: int) -> float:
    start = time.monotonic()
    tid = client.submit_array(["true"], range(n), retries=0)
    doc = client.wait(tid, timeout=600)
    if doc["state"] != "succeeded":
        raise RuntimeError(f"the composite {doc['state']}: {doc['reason']}")
    return n / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rates: dict[str, list[float]] = {"plain": [], "composite": []}
    with LocalCluster([args.slots] * args.nodes) as cluster:
        pid = cluster.nodes[0].process.pid
        with cluster.client(0) as client:
            plain(client, 200)                              # warm-up: both code paths, caches, page cache
            composite(client, 200)
            before = rss_mib(pid)
            for _ in range(args.rounds):                    # interleaved, so drift hits both alike
                rates["plain"].append(plain(client, args.parts))
                rates["composite"].append(composite(client, args.parts))
            after = rss_mib(pid)
    p, c = statistics.median(rates["plain"]), statistics.median(rates["composite"])
    print(f"{args.parts} `true` on {args.nodes} daemons x {args.slots} slots, median of {args.rounds}:")
    print(f"  plain tasks (submit_many)   {p:8.1f} tasks/s   rounds {' '.join(f'{r:.0f}' for r in rates['plain'])}")
    print(f"  one composite array         {c:8.1f} parts/s   rounds {' '.join(f'{r:.0f}' for r in rates['composite'])}")
    verdict = "met" if c / p >= 0.8 else "NOT met"
    print(f"  composite / plain           {c / p:8.2f}           target >= 0.80: {verdict}")
    print(f"  submitting daemon RSS       {before:.1f} MiB before, {after:.1f} MiB after {args.rounds} rounds "
          f"of each ({after - before:+.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
