"""`xchanged demo`: a local cluster of real daemons doing real work, then a report of who did what."""

from __future__ import annotations

import random
import signal
import sys
import time
from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .localcluster import LocalCluster

# Each task counts the primes below a bound: real CPU work whose length varies with the bound.
PRIMES = ("import sys\nn=int(sys.argv[1])\nsieve=bytearray([1])*n\nsieve[:2]=b'\\0\\0'\n"
          "for i in range(2,int(n**0.5)+1):\n    if sieve[i]: sieve[i*i::i]=bytearray(len(range(i*i,n,i)))\n"
          "print(f'{sum(sieve)} primes < {n}')")


def _interrupt(signum, frame):
    raise KeyboardInterrupt       # unwinds the `with LocalCluster`, which stops the daemons


def run_demo(nodes: int, n_tasks: int, console: Console) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    rng = random.Random(7)
    slots = [2 + (i % 3) for i in range(nodes)]
    console.print(f"starting {nodes} daemons on loopback (slots {slots}) ...")
    with LocalCluster(slots) as cluster:
        console.print(f"cluster up in {cluster.base}; every node sees the others. submitting {n_tasks} tasks to node1")
        bounds = [rng.choice([200_000, 500_000, 1_000_000, 2_000_000, 3_000_000]) for _ in range(n_tasks)]
        started = time.monotonic()
        with cluster.client(0) as client:
            ids = client.submit_many([[sys.executable, "-c", PRIMES, str(b)] for b in bounds], retries=2)
            docs = [client.wait(tid) for tid in ids]
            elapsed = time.monotonic() - started
            table = Table("task", "node", "state", "tries", "runtime", "output")
            for doc in docs:
                last = doc["attempts"][-1] if doc["attempts"] else None
                ran = last and last["started"] and last["ended"]
                runtime = f"{(last['ended'] - last['started']) / 1000:.2f}s" if ran else "-"
                out = client.logs(doc["id"])["stdout"].strip() if doc["state"] == "succeeded" else doc["reason"]
                table.add_row(Text(doc["id"], no_wrap=True), doc.get("node") or "-", doc["state"],
                              str(len(doc["attempts"])), runtime, out)
            console.print(table)
            per_node = Counter(doc.get("node") for doc in docs if doc["state"] == "succeeded")
            summary = Table("node", "slots", "tasks run", "share of tasks", "share of slots")
            total_slots = sum(slots)
            for node in cluster.nodes:
                n = per_node.get(node.name, 0)
                summary.add_row(node.name, str(node.slots), str(n), f"{n / max(1, len(docs)):.0%}",
                                f"{node.slots / total_slots:.0%}")
            console.print(summary)
            ok = sum(1 for d in docs if d["state"] == "succeeded")
            console.print(f"{ok}/{len(docs)} tasks succeeded in {elapsed:.1f}s on {len(per_node)} nodes")
            composite_ok = _composite(client, console)
        console.print("stopping the daemons and removing the cluster directory")
    return 0 if ok == len(docs) and composite_ok else 1


def _composite(client, console: Console) -> bool:
    """One composite: an array of 12 parts (primes below 100k, 200k, ...), decomposed and subcontracted by
    the node that wins it, then a reduce that adds up what the parts printed."""
    console.print("submitting a composite: 12 parts, then a reduce over their results")
    reduce = [sys.executable, "-c",
              "import json,os\nparts=[json.loads(l) for l in open(os.environ['XCHANGED_PARTS'])]\n"
              "print(f\"{len(parts)} parts on {len({p['node'] for p in parts})} nodes found \""
              "f\"{sum(int(p['stdout_tail'].split()[0]) for p in parts)} primes in all\")"]
    started = time.monotonic()
    program = PRIMES.replace("{", "{{").replace("}", "}}")          # braces are literal in templates when doubled
    tid = client.submit_array([sys.executable, "-c", program, "{item}"], [str(100_000 * (i + 1)) for i in range(12)],
                              reduce=reduce, name="primes", retries=2)
    doc = client.wait(tid)
    parts = client.status(tid)["parts"]
    table = Table("part", "node", "state", "output")
    for p in parts:
        table.add_row(p["key"], p["node"] or "-", p["state"], p["stdout_tail"].strip())
    console.print(table)
    console.print(f"composite {tid} {doc['state']} in {time.monotonic() - started:.1f}s, coordinated by "
                  f"{doc.get('node')}: {doc['progress']['done']}/{doc['progress']['total']} parts")
    return doc["state"] == "succeeded"
