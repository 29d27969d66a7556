"""Chaos soak (issue 5): real daemons on loopback, tasks submitted to every node (each is a manager of
its own tasks), while nodes, managers included, are killed with SIGKILL and restarted at random.

Prints tasks submitted, succeeded, failed, lost and duplicate completions; exits 1 unless lost and
duplicates are both 0.

    python bench/chaos.py                       # 1,000 tasks of 0.05-0.5 s on 4 nodes (a few minutes)
    python bench/chaos.py --tasks 5000 --nodes 6 --slots 3 --seed 7 --max-down 2
    python bench/chaos.py --phases short         # only the short-task, prefetch-heavy phase

Two phases, each on a fresh cluster: `long` (the tasks above) and `short` (issue 10: `--short-tasks`
near-instant commands on 1-slot nodes with prefetch on and the default `overload_cpu_percent` of 90,
so that on one shared host contractors refuse, reject and queue often while nodes are killed).

- lost: a submitted task that is not terminal (succeeded/failed/cancelled) in its manager's store once
  every node is back up and the cluster has drained (or was not there at all).
- duplicate completions: a task with more than one succeeded attempt recorded by its manager.
- repeated side effects (reported, not a failure): tasks whose command finished more than once, from
  the line each run appends to a shared file. That happens only when a node is killed in the instant
  between a command's end and its result being durable: at-least-once execution, exactly-once record.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xchanged.localcluster import LocalCluster  # noqa: E402

os.environ.setdefault("XCHANGED_VALIDATE", "1")    # daemons check the core's invariants after every batch

TERMINAL = ("succeeded", "failed", "cancelled")
FAST = {
    "gossip": {"interval": "200ms", "suspect_after": "1s", "dead_after": "2500ms"},
    "executor": {"heartbeat": "500ms", "kill_grace": "500ms"},
    "bidding": {"overload_cpu_percent": 100},     # a busy shared test box must not stall bidding
    "node": {"prefetch": int(os.environ.get("CHAOS_PREFETCH", "1"))},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="long,short", help="comma list of phases to run: long, short")
    ap.add_argument("--short-tasks", type=int, default=2000, help="tasks of the short phase")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--min-s", type=float, default=0.05, help="shortest task run time")
    ap.add_argument("--max-s", type=float, default=0.5, help="longest task run time")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--kill-every", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                    help="seconds between chaos events")
    ap.add_argument("--max-down", type=int, default=1, help="nodes down at the same time, at most")
    ap.add_argument("--drain", type=float, default=300.0, help="seconds allowed for the run to finish")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory (logs, stores)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    ok = True
    for phase in args.phases.split(","):
        if phase == "long":
            ok &= soak(args, random.Random(seed), phase, args.slots, FAST, args.tasks, (args.min_s, args.max_s))
        elif phase == "short":
            settings = {**FAST, "bidding": {"overload_cpu_percent": 90}, "node": {"prefetch": 1}}
            ok &= soak(args, random.Random(seed + 1), phase, 1, settings, args.short_tasks, (0.0, 0.0))
        else:
            ap.error(f"unknown phase {phase!r}")
    return 0 if ok else 1


def soak(args, rng: random.Random, phase: str, slots: int, settings: dict, n_tasks: int,
         seconds: tuple[float, float]) -> bool:
    """One soak on a fresh cluster; True when no task was lost and none completed twice."""
    base = Path(tempfile.mkdtemp(prefix=f"xchanged-chaos-{phase}-"))
    done = base / "done.log"
    done.touch()
    print(f"chaos [{phase}]: {n_tasks} tasks of {seconds[0]}-{seconds[1]}s on {args.nodes} nodes x {slots} slots, "
          f"seed {args.seed}, dir {base}", flush=True)

    cluster = LocalCluster([slots] * args.nodes, base_dir=base / "cluster", settings=settings)
    owner: dict[str, int] = {}
    docs: dict[str, dict] = {}
    events: list[str] = []
    start = time.monotonic()
    try:
        cluster.start()
        per_node = [[] for _ in range(args.nodes)]
        for _ in range(n_tasks):
            secs = rng.uniform(*seconds)
            sleep = f"sleep {secs:.3f}; " if secs > 0 else ""
            per_node[rng.randrange(args.nodes)].append(
                ["sh", "-c", f'{sleep}echo "$XCHANGED_TASK_ID $XCHANGED_ATTEMPT" >> {done}'])
        for i, argvs in enumerate(per_node):
            if argvs:
                with cluster.client(i) as c:
                    for tid in c.submit_many(argvs, retries=args.retries):
                        owner[tid] = i
        print(f"submitted {len(owner)} tasks in {time.monotonic() - start:.1f}s", flush=True)

        down: dict[int, float] = {}                # node index -> when it went down
        next_event = time.monotonic() + rng.uniform(*args.kill_every)
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:
            _poll(cluster, owner, docs, down)
            finished = sum(1 for d in docs.values() if d["state"] in TERMINAL)
            if finished == len(owner) and not down:
                break
            now = time.monotonic()
            if finished == len(owner) or now >= next_event:
                next_event = now + rng.uniform(*args.kill_every)
                up = [i for i in range(args.nodes) if i not in down]
                if down and (len(down) >= args.max_down or finished == len(owner) or rng.random() < 0.5):
                    i = rng.choice(sorted(down))
                    cluster.start_node(cluster.nodes[i])
                    cluster.wait_ready(cluster.nodes[i])
                    events.append(f"{now - start:6.1f}s restart {cluster.nodes[i].name} "
                                  f"(down {now - down.pop(i):.1f}s)")
                elif up and len(down) < args.max_down:
                    i = rng.choice(up)
                    cluster.kill9(cluster.nodes[i])
                    down[i] = now
                    events.append(f"{now - start:6.1f}s kill -9 {cluster.nodes[i].name} ({finished} tasks done)")
                print(events[-1], flush=True)
            time.sleep(0.25)
        for i in sorted(down):
            cluster.start_node(cluster.nodes[i])
            cluster.wait_ready(cluster.nodes[i])
        _poll(cluster, owner, docs, {})
    finally:
        elapsed = time.monotonic() - start
        cluster.stop()

    states = Counter(docs[t]["state"] if t in docs else "missing" for t in owner)
    lost = sum(1 for t in owner if t not in docs or docs[t]["state"] not in TERMINAL)
    duplicates = sum(1 for d in docs.values() if sum(a["state"] == "succeeded" for a in d["attempts"]) > 1)
    runs = Counter(line.split()[0] for line in done.read_text().splitlines() if line.strip())
    repeated = sum(1 for n in runs.values() if n > 1)
    attempts = Counter(a["state"] for d in docs.values() for a in d["attempts"])
    print()
    print(f"phase                {phase}")
    print(f"elapsed              {elapsed:.1f}s, {len([e for e in events if 'kill' in e])} kills")
    print(f"submitted            {len(owner)}")
    print(f"succeeded            {states['succeeded']}")
    print(f"failed               {states['failed']}")
    print(f"lost                 {lost}")
    print(f"duplicate completions {duplicates}")
    print(f"repeated side effects {repeated}   (commands that ran to their end more than once)")
    print(f"attempts             {dict(attempts)}")
    if states["failed"]:
        for t, d in list(docs.items()):
            if d["state"] == "failed":
                print(f"  failed {t}: {d['reason']}")
                break
    if not args.keep:
        import shutil
        shutil.rmtree(base, ignore_errors=True)
    return lost == 0 and duplicates == 0


def _poll(cluster: LocalCluster, owner: dict[str, int], docs: dict[str, dict], down) -> None:
    """Refresh the documents of every task from the managers that are up."""
    for i, node in enumerate(cluster.nodes):
        if i in down:
            continue
        try:
            with node.client(timeout=30.0) as c:
                for doc in c.tasks(limit=10_000):       # every task it manages (the default: newest 100)
                    if owner.get(doc["id"]) == i:
                        docs[doc["id"]] = doc
        except Exception as exc:          # a node just restarted may not answer yet: next round
            print(f"  (poll of {node.name} failed: {exc})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
