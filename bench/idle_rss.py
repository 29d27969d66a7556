"""Idle memory of one daemon (issue 13: at most 40 MiB) and where it goes, measured in one run.

1. idle RSS: a 2-node LocalCluster as bench/throughput.py's `rss` workload runs it (mDNS, /metrics and
   the HTTP API off): the larger daemon's RSS once both see each other, before any task; also its USS
   (the pages no other process shares) and threads. Then a cluster with every optional server on
   (`[network] mdns`, `[metrics] listen`, `[http] listen`): the ratio is what turning them on costs.
2. imports: fresh interpreters import the daemon's dependencies one group more each time, in the order
   the daemon does (cumulative RSS), so the idle figure reads as interpreter + libraries + xchanged's own
   code + what the running daemon holds (sockets, store, threads): the last row is the idle RSS minus
   the imports.
3. optional libraries: what each adds when its feature is on, imported in a fresh interpreter on top of
   everything the daemon imports anyway (the daemon loads none of them while the feature is off:
   tests/runtime/test_idle_imports.py checks a real daemon).

Run: python bench/idle_rss.py [--rounds 3] [--json PATH]     (about a minute)
Every figure is the median over rounds (each round a fresh cluster / fresh interpreters).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, os.environ.get("PYTHONPATH", "")] if p)

import psutil  # noqa: E402

from xchanged.localcluster import LocalCluster  # noqa: E402

MIB = 2 ** 20
TARGET_MIB = 40.0
ALL_ON = {"network": {"mdns": True}, "metrics": {"listen": "127.0.0.1:0"}, "http": {"listen": "127.0.0.1:0"}}

#: (label, modules) in the daemon's import order; each row imports its modules on top of the rows above.
GROUPS = [
    ("python (this interpreter, site hooks)", []),
    ("stdlib: asyncio, sqlite3, json, subprocess, logging, tomllib", ["asyncio", "sqlite3", "json", "subprocess",
                                                                      "logging", "tomllib"]),
    ("pyzmq", ["zmq", "zmq.asyncio"]),
    ("psutil, msgpack", ["psutil", "msgpack"]),
    ("cryptography (Ed25519, X25519)", ["cryptography.hazmat.primitives.asymmetric.ed25519",
                                        "cryptography.hazmat.primitives.asymmetric.x25519",
                                        "cryptography.hazmat.backends.openssl.backend"]),
    ("click", ["click"]),
    ("xchanged core: protocol, config, client", ["xchanged.protocol.node", "xchanged.config", "xchanged.client"]),
    ("xchanged runtime + CLI (`xchanged run`)", ["xchanged.runtime.daemon", "xchanged.cli"]),
]
#: optional features: (what turns it on, modules it loads)
OPTIONAL = [
    ("mDNS ([network] mdns = true): zeroconf", ["zeroconf", "zeroconf.asyncio"]),
    ("/metrics ([metrics] listen): prometheus_client", ["xchanged.runtime.metrics"]),
    ("HTTP API + dashboard ([http] listen): aiohttp", ["xchanged.runtime.http_api"]),
    ("GPUs (an NVML library present): pynvml", ["pynvml"]),
    ("CLI tables (any other command): rich", ["rich.console", "rich.table", "rich.progress"]),
]
PROBE = """
import importlib, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20
out = []
for group in json.loads(sys.argv[1]):
    for m in group:
        importlib.import_module(m)
    out.append(rss())
print(json.dumps(out))
"""


def probe(groups: list[list[str]]) -> list[float]:
    """Cumulative RSS (MiB) of a fresh interpreter after each group of imports."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(groups)], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def idle_cluster(settings: dict | None) -> dict:
    cluster = LocalCluster([1, 1], settings=settings)
    try:
        cluster.start()
        procs = [psutil.Process(n.process.pid) for n in cluster.nodes]
        sizes = [(p.memory_full_info(), p.num_threads()) for p in procs]
        big, threads = max(sizes, key=lambda s: s[0].rss)
        return {"rss": big.rss / MIB, "uss": big.uss / MIB, "threads": threads}
    finally:
        cluster.cleanup()


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    off, on, cumulative, optional = [], [], [], []
    base = [m for _, mods in GROUPS for m in mods]
    for _ in range(args.rounds):
        off.append(idle_cluster(None))
        on.append(idle_cluster(ALL_ON))
        cumulative.append(probe([mods for _, mods in GROUPS]))
        optional.append([(lambda r: r[1] - r[0])(probe([base, mods])) for _, mods in OPTIONAL])

    idle = {k: median([r[k] for r in off]) for k in ("rss", "uss", "threads")}
    all_on = {k: median([r[k] for r in on]) for k in ("rss", "uss", "threads")}
    rows = [median([c[i] for c in cumulative]) for i in range(len(GROUPS))]
    extra = [median([o[i] for o in optional]) for i in range(len(OPTIONAL))]

    print(f"idle daemon (2-node LocalCluster, optional servers off), median of {args.rounds}:")
    print(f"  RSS {idle['rss']:.1f} MiB (target {TARGET_MIB:.0f}: {'met' if idle['rss'] <= TARGET_MIB else 'NOT met'}),"
          f" USS {idle['uss']:.1f} MiB, {idle['threads']:.0f} threads")
    print(f"  with mDNS, /metrics and the HTTP API on: RSS {all_on['rss']:.1f} MiB "
          f"({all_on['rss'] / idle['rss']:.2f}x), {all_on['threads']:.0f} threads")
    print("\nwhere the idle RSS goes (fresh interpreters, cumulative imports in the daemon's order):")
    previous = 0.0
    for (label, _), value in zip(GROUPS, rows):
        print(f"  {value - previous:+6.1f}  {value:6.1f} MiB  {label}")
        previous = value
    print(f"  {idle['rss'] - previous:+6.1f}  {idle['rss']:6.1f} MiB  "
          "the running daemon: sockets, store, threads, state")
    print("\noptional libraries, each imported on top of the daemon's own set (loaded only when on):")
    for (label, _), value in zip(OPTIONAL, extra):
        print(f"  {value:+6.1f} MiB  {label}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"idle": idle, "all_on": all_on, "rounds": args.rounds,
                       "imports": dict(zip([g for g, _ in GROUPS], rows)),
                       "optional": dict(zip([o for o, _ in OPTIONAL], extra)),
                       "raw": {"off": off, "on": on, "cumulative": cumulative, "optional": optional},
                       "when": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
