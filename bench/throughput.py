"""Throughput, latency and footprint: xchanged vs Dask vs Ray on the same machine, in one run (issue 13).

Every system gets 2 execution slots: xchanged `LocalCluster([1, 1])` (2 real daemons on loopback x 1
slot, driven through the Python `Client` of node1, the manager), Dask `LocalCluster(n_workers=2,
threads_per_worker=1)`, Ray `ray.init(num_cpus=2)` (local, no dashboard). xchanged runs commands;
Dask and Ray run a Python function that calls `subprocess.run` with the same command (see _systems.py).
Each round starts every system afresh, rounds outermost so that a noisy minute hits all systems alike;
the table shows the median over rounds, then every round's figure.

Figures (for each system unless marked):
  throughput      1,000 tasks running `true` submitted at once (xchanged: one `submit_many` call), until
                  the last result is back: tasks / wall seconds. Target: >= Ray's.
  p50, p99        500 sequential round trips, submit -> result (xchanged `submit` + `wait` of `true`,
                  Dask/Ray a no-op function): percentiles of the wall time, ms. Targets: p50 <= Ray's,
                  p99 <= 2 x Ray's.
  makespan/bound  200 `sleep` tasks with log-normal durations (mean 20 ms, sigma 1, seed 42; as
                  bench/balance.py makes them), submitted at once: wall time to the last result divided by
                  max(total / 2, longest), the best 2 slots could do. Target: <= 1.10.
  start           from no cluster process to the result of one trivial task: s. xchanged: both daemons
                  launched, `true` submitted to node1 as soon as it answers (keys and config files are
                  written before the clock starts); Dask: LocalCluster + Client + one no-op; Ray: ray.init +
                  one no-op. The library is already imported in the driver. Target: <= 1 s.
  idle RSS        xchanged: the larger of the 2 daemons' RSS once they see each other, before any task.
                  Target: <= 40 MiB. Dask/Ray (in brackets, no target): the largest process the
                  cluster started (the JSON has the count and the total).
  growth          xchanged only: the manager's RSS after a warm-up batch of 1,000 `true` tasks, then after
                  each of 10 more batches: (last - baseline) per 1,000 tasks, MiB. Target: <= 1.
  x/dask, x/ray   xchanged's median divided by the other system's.
Before its throughput, latency and makespan runs each system runs 20 warm-up tasks.

--profile: after the rounds, a fresh xchanged cluster runs the throughput workload once more with py-spy
attached to both daemons, and the bench prints where each daemon's busy time went, per task, in groups
(signing/verify, msgpack/codec, sqlite/store, audit, zmq/asyncio, spawn/executor, protocol core, other)
and the top functions; see _pyspy.py for the rules. This run is not in the table.

Run: python bench/throughput.py [--rounds 3] [--only xchanged,dask,ray] [--workloads throughput,latency,
     lognormal,start,rss,growth] [--quick] [--json PATH] [--profile]     (about 6 minutes with 3 rounds)
Exit status: 0 if every selected workload ran (met targets or not), 1 if any errored (printed as it
happened and again at the end), 130 on Ctrl-C. Every cluster is stopped and its temp dir removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
# The daemons are `python -m xchanged` subprocesses: make them import this checkout, as the client does.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, os.environ.get("PYTHONPATH", "")] if p)
# _pyspy, _systems and balance (which imports xchanged) are imported in main(): Dask's worker processes
# re-import this module as __mp_main__, and importing them there would slow Dask's start.

WORKLOADS = ["throughput", "latency", "lognormal", "start", "rss", "growth"]
FULL = {"throughput": 1000, "latency": 500, "lognormal": 200, "growth": (10, 1000)}
QUICK = {"throughput": 200, "latency": 100, "lognormal": 50, "growth": (3, 200)}
WARM_UP = 20


def comma_list(values: list[str] | None, allowed: list[str]) -> list[str]:
    chosen = [v.strip() for item in values or [] for v in item.split(",") if v.strip()] or list(allowed)
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return [a for a in allowed if a in chosen]


def machine() -> dict:
    import psutil
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    versions = {}
    for dist in ("dask", "distributed", "ray", "pyzmq", "msgpack", "cryptography", "psutil", "py-spy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "os": platform.platform(), "xchanged": _systems.Xchanged.versions()["xchanged"] + f" commit {commit}",
            "versions": versions}


def measure(system, what: str, sizes: dict, durs: list[float]) -> list[tuple[str, float, object]]:
    """One workload on a running system: [(metric, value, raw detail)]."""
    if what == "rss":
        res = system.idle()
        return [("idle_rss", res["largest_mib"], res)]
    if what == "warm-up":
        system.throughput(WARM_UP)
        return []
    if what == "throughput":
        res = system.throughput(sizes["throughput"])
        return [("throughput", res["tasks_per_s"], res)]
    if what == "latency":
        lat = system.latency(sizes["latency"])
        return [("p50", pct(lat, 0.5) * 1000, None), ("p99", pct(lat, 0.99) * 1000, [round(x * 1000, 3) for x in lat])]
    if what == "lognormal":
        res = system.sleeps(durs)
        return [("makespan", res["makespan"] / lower_bound(durs, [1, 1]), res)]
    if what == "growth":
        res = system.growth(*sizes["growth"])
        return [("growth", res["per_1000"], res)]
    raise ValueError(what)


def run_round(system, work: list[str], sizes: dict, durs: list[float], record, fail) -> None:
    """One round of the selected workloads on one system: the start on a cluster of its own, the rest on
    one cluster, in this order. An error in a workload is recorded and the next one still runs."""
    def attempt(what, fn):
        try:
            for metric, value, detail in fn():
                record(metric, value, detail)
        except Exception as exc:      # recorded, printed, and turned into a non-zero exit at the end
            fail(system.name, what, exc)

    if "start" in work:
        attempt("start", lambda: [("start", (res := system.start_to_first())["seconds"], res)])
    steps = [w for w in ("rss", "throughput", "latency", "lognormal", "growth")
             if w in work and (w != "growth" or system.name == "xchanged")]
    if {"throughput", "latency", "lognormal"} & set(steps):
        steps.insert(steps.index("rss") + 1 if "rss" in steps else 0, "warm-up")
    if not steps:
        return
    try:
        with system.running():
            for what in steps:
                attempt(what, lambda: measure(system, what, sizes, durs))
    except Exception as exc:
        fail(system.name, "cluster", exc)


def profile(sizes: dict, fail) -> dict | None:
    """One throughput run on a fresh xchanged cluster with py-spy on both daemons; prints the breakdown."""
    system = _systems.Xchanged()
    n = sizes["throughput"]
    try:
        with tempfile.TemporaryDirectory(prefix="xb-pyspy-") as tmp, system.running():
            system.throughput(WARM_UP)
            recorders = []
            try:
                for pid in system.pids:
                    recorders.append(_pyspy.Recorder(pid, tmp))
                res = system.throughput(n)
            finally:
                seconds = [r.stop() for r in recorders]
            out = {}
            for i, (rec, secs) in enumerate(zip(recorders, seconds)):
                role = "manager (node1, where tasks are submitted)" if i == 0 else f"node{i + 1}"
                out[f"node{i + 1}"] = b = _pyspy.breakdown(rec, secs, n)
                print("\n" + _pyspy.report(f"py-spy, {role}", b))
            print(f"(profiled run: {res['tasks_per_s']:.0f} tasks/s under the profiler; tasks per node "
                  f"{res['per_node']})")
            return out
    except Exception as exc:
        fail("xchanged", "profile", exc)
        if "could not attach" in str(exc) or "not found" in str(exc):
            print("  no fallback: xchanged has no hook to run its daemon under cProfile (it would need e.g. an "
                  "XCHANGED_PROFILE=path variable read by `xchanged run` that wraps the daemon in cProfile and "
                  "dumps stats on exit); no breakdown this run", file=sys.stderr)
        return None


def fmt(v, metric: str) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if metric == "throughput" else f"{v:.3f}" if metric == "makespan" else f"{v:.2f}"


def verdict(metric: str, med: dict) -> tuple[str, str]:
    x, ray = med.get("xchanged"), med.get("ray")
    fixed = {"makespan": 1.10, "start": 1.0, "idle_rss": 40.0, "growth": 1.0}
    if metric in fixed:
        return f"<= {fixed[metric]:g}", "-" if x is None else ("yes" if x <= fixed[metric] else "NO")
    factor = {"throughput": 1.0, "p50": 1.0, "p99": 2.0}[metric]
    text = {"throughput": ">= Ray", "p50": "<= Ray", "p99": "<= 2x Ray"}[metric]
    if x is None or ray is None:
        return text, "-"
    ok = x >= ray if metric == "throughput" else x <= factor * ray
    return f"{text} ({fmt(ray * factor, metric)})", "yes" if ok else "NO"


def ratio(med: dict, other: str, metric: str) -> str:
    if metric == "idle_rss" or "xchanged" not in med or not med.get(other):    # RSS: not the same kind of process
        return "-"
    return f"{med['xchanged'] / med[other]:.2f}"


def table(results: dict, sizes: dict, names: list[str]) -> tuple[str, dict]:
    batches, size = sizes["growth"]
    labels = {
        "throughput": f"{sizes['throughput']:,} `true` at once: tasks/s",
        "p50": f"{sizes['latency']} round trips: p50 ms",
        "p99": f"{sizes['latency']} round trips: p99 ms",
        "makespan": f"{sizes['lognormal']} lognormal sleeps: makespan/bound",
        "start": "start to first result: s",
        "idle_rss": "idle RSS of one daemon: MiB",
        "growth": f"manager RSS growth: MiB/1,000 tasks ({batches}x{size})",
    }
    medians = {m: {s: statistics.median(results[s][m]) for s in names if results[s].get(m)} for m in labels}
    head = f"{'workload':<42}" + "".join(f"{s:>10}" for s in names) + f"{'x/dask':>8}{'x/ray':>8}  {'target':<18}met?"
    lines = [head, "-" * len(head)]
    every = []
    for m, label in labels.items():
        med = medians[m]
        if not med:
            continue
        cells = ""
        for s in names:
            v = fmt(med.get(s), m)
            cells += f"{('(' + v + ')') if m == 'idle_rss' and s != 'xchanged' and s in med else v:>10}"
        ratios = "".join(f"{ratio(med, other, m):>8}" for other in ("dask", "ray"))
        target, met = verdict(m, med)
        lines.append(f"{label:<42}{cells}{ratios}  {target:<18}{met}")
        every.append(f"  {m:<10} " + "; ".join(f"{s} " + " ".join(fmt(v, m) for v in results[s][m])
                                             for s in names if results[s].get(m)))
    return "\n".join(lines + ["every round:"] + every), medians


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="rounds per system (default 3; 1 with --quick)")
    ap.add_argument("--only", action="append", metavar="SYSTEM",
                    help="xchanged, dask, ray (repeatable or a comma list)")
    ap.add_argument("--workloads", action="append", metavar="W",
                    help=", ".join(WORKLOADS) + " (repeatable or a comma list)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--json", metavar="PATH", help="write every raw figure here")
    ap.add_argument("--profile", action="store_true", help="also profile xchanged's daemons with py-spy (throughput)")
    args = ap.parse_args()
    global _pyspy, _systems, durations, lower_bound, pct
    import _pyspy
    import _systems
    from balance import durations, lower_bound, pct
    names = comma_list(args.only, list(_systems.SYSTEMS))
    work = comma_list(args.workloads, WORKLOADS)
    sizes = QUICK if args.quick else FULL
    rounds = max(1, args.rounds or (1 if args.quick else 3))
    for sig in (signal.SIGINT, signal.SIGTERM):     # a kill runs the same cleanup as Ctrl-C (also when started
        signal.signal(sig, signal.default_int_handler)   # in the background, where SIGINT comes ignored)
    info = machine()
    durs = durations(sizes["lognormal"], 42, mean=0.02, sigma=1.0)
    errors: list[dict] = []
    results = {s: {} for s in names}
    raw = {s: [] for s in names}

    def fail(system: str, what: str, exc: BaseException) -> None:
        errors.append({"system": system, "workload": what, "error": f"{type(exc).__name__}: {exc}"})
        print(f"ERROR {system} {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr, limit=-3)

    systems = []
    for s in names:
        why = _systems.SYSTEMS[s].missing()
        if why:
            print(f"{s}: {why}")
            continue
        info["versions"].update(_systems.SYSTEMS[s].versions())
        systems.append(_systems.SYSTEMS[s]())
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['memory_gib']} GiB; "
          f"Python {info['python']}; {info['os']}\nxchanged {info['xchanged']}; "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if k != "xchanged"))
    print(f"lognormal workload: {len(durs)} tasks, total {sum(durs):.2f} s, longest {max(durs):.3f} s, "
          f"bound for 2 slots {lower_bound(durs, [1, 1]):.3f} s")
    load0, cpu0, t0 = os.getloadavg(), _cpu_times(), time.monotonic()
    profile_out = None
    try:
        for r in range(rounds):
            for system in systems:
                print(f"round {r + 1}/{rounds}: {system.name} ...", flush=True)
                row = {}

                def record(metric, value, detail, row=row, name=system.name):
                    results[name].setdefault(metric, []).append(value)
                    row[metric] = {"value": value, "detail": detail}
                run_round(system, work, sizes, durs, record, fail)
                raw[system.name].append(row)
        if args.profile:
            if any(s.name == "xchanged" for s in systems):
                profile_out = profile(sizes, fail)
            else:
                print("--profile: xchanged not selected, nothing profiled")
    except KeyboardInterrupt:
        print("\ninterrupted: clusters stopped", file=sys.stderr)
        return 130
    finally:
        _reap(errors)
    load1, cpu1 = os.getloadavg(), _cpu_times()
    steal = getattr(cpu1, "steal", 0.0) - getattr(cpu0, "steal", 0.0)
    info["load_average"], info["cpu_steal_s"] = [load0[0], load1[0]], steal
    print(f"\n{rounds} round(s), {time.monotonic() - t0:.0f} s; load average {load0[0]:.2f} at start, {load1[0]:.2f} "
          f"at end; CPU steal during the run {steal:.1f} s (a shared machine: expect run-to-run noise)")
    text, medians = table(results, sizes, [s.name for s in systems])
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "sizes": sizes, "rounds": raw, "medians": medians,
                       "profile": profile_out, "errors": errors}, f, indent=1, default=str)
        print(f"raw figures: {args.json}")
    for e in errors:
        print(f"ERROR {e['system']} {e['workload']}: {e['error']}")
    return 1 if errors else 0


def _cpu_times():
    import psutil
    return psutil.cpu_times()


def _reap(errors: list) -> None:
    """Every process the bench started should be gone; any left is killed by pid and reported."""
    import psutil
    left = _systems.descendants()
    gone, alive = psutil.wait_procs(left, timeout=5)
    for p in alive:
        try:
            name = " ".join(p.cmdline())[:80]
            p.kill()
        except psutil.Error:
            continue
        errors.append({"system": "-", "workload": "cleanup", "error": f"process {p.pid} left running: {name}"})


if __name__ == "__main__":
    sys.exit(main())
