"""The three systems bench/throughput.py compares, behind one small interface.

Each has 2 execution slots: xchanged `LocalCluster([1, 1])` (two real daemons on loopback, driven through
the Python `Client` of the first), Dask `LocalCluster(n_workers=2, threads_per_worker=1)` (worker
processes), Ray `ray.init(num_cpus=2)` (local, no dashboard). A system object is used as

    system.start_to_first()            # a cluster of its own: start, one trivial task, stop
    with system.running():             # start (and wait until connected), then the workloads:
        system.throughput(n) ... system.latency(n) ... system.sleeps(durations)

Every cluster it starts is stopped, and its temporary directory removed, in a `finally`.
xchanged runs commands (`true`, `sleep D`); Dask and Ray run Python functions that call
`subprocess.run` with the same command, except the latency and first-result task, which is a no-op
function for them (xchanged has no function tasks: there it is `true`, one process start more).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter

import psutil

MIB = 1024 * 1024
DEADLINE = 600.0            # no workload here takes minutes; a hang is an error, not a wait


def task_functions():
    """Made in a function so that cloudpickle (Dask's and Ray's) sends them by value: the workers
    need not be able to import this module."""
    def noop(_=None):
        return None

    def run_true(_=None):
        subprocess.run(["true"], check=True)

    def run_sleep(d):
        subprocess.run(["sleep", f"{d:.3f}"], check=True)

    return noop, run_true, run_sleep


def descendants() -> list[psutil.Process]:
    """This process's children, less multiprocessing's resource tracker (it lives as long as we do)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def rss_mib(pids) -> list[float]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_info().rss / MIB)
        except psutil.Error:
            pass
    return out


def process_summary(procs: list[psutil.Process]) -> dict:
    sizes = rss_mib(p.pid for p in procs)
    return {"largest_mib": max(sizes, default=0.0), "processes": len(sizes), "total_mib": sum(sizes)}


class Xchanged:
    name = "xchanged"

    def __init__(self):
        self.cluster = None
        self.client = None

    @staticmethod
    def missing() -> str | None:
        return None                    # the package under test: the bench imports it from this checkout

    @staticmethod
    def versions() -> dict:
        import xchanged
        return {"xchanged": f"{xchanged.__version__} ({os.path.dirname(os.path.realpath(xchanged.__file__))})"}

    @staticmethod
    def _check(docs: list[dict]) -> None:
        bad = [d for d in docs if d["state"] != "succeeded"]     # failed, or not done by the DEADLINE
        if bad:
            raise RuntimeError(f"{len(bad)} of {len(docs)} tasks did not succeed, e.g. {bad[0]['id']} "
                               f"{bad[0]['state']}: {bad[0].get('reason')}")

    def _wait_all(self, ids: list[str], client=None) -> list[dict]:
        client = client or self.client
        docs = client.wait_all(ids, timeout=DEADLINE)     # one request for all, as Dask's gather and ray.get
        self._check(docs)
        return docs

    def start_to_first(self) -> dict:
        from xchanged.localcluster import LocalCluster
        cluster = LocalCluster([1, 1])   # keys and config files: provisioning, not start; not timed
        try:
            t0 = time.perf_counter()
            for node in cluster.nodes:
                cluster.start_node(node)
            cluster.wait_ready(cluster.nodes[0])
            ready = time.perf_counter() - t0
            with cluster.client(0) as c:
                docs = self._wait_all([c.submit(["true"], retries=0)], c)
            return {"seconds": time.perf_counter() - t0, "first_node_answering_s": ready,
                    "ran_on": docs[0]["node"]}
        finally:
            cluster.cleanup()

    @contextlib.contextmanager
    def running(self):
        from xchanged.localcluster import LocalCluster
        self.cluster = LocalCluster([1, 1])
        try:
            self.cluster.start()          # returns once every daemon sees the other alive
            self.client = self.cluster.client(0)
            yield self
        finally:
            if self.client is not None:
                self.client.close()
            self.cluster.cleanup()
            self.cluster = self.client = None

    @property
    def pids(self) -> list[int]:
        return [n.process.pid for n in self.cluster.nodes]

    def idle(self) -> dict:
        sizes = rss_mib(self.pids)
        return {"largest_mib": max(sizes), "per_daemon_mib": sizes, "processes": len(sizes),
                "total_mib": sum(sizes)}

    def throughput(self, n: int) -> dict:
        t0 = time.perf_counter()
        ids = self.client.submit_many([["true"]] * n, retries=0)
        submitted = time.perf_counter() - t0
        docs = self._wait_all(ids)
        seconds = time.perf_counter() - t0
        return {"tasks_per_s": n / seconds, "seconds": seconds, "submit_call_s": submitted,
                "per_node": dict(Counter(d["node"] for d in docs))}

    def latency(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self._wait_all([self.client.submit(["true"], retries=0)])
            out.append(time.perf_counter() - t0)
        return out

    def sleeps(self, durs: list[float]) -> dict:
        from xchanged.client import build_spec
        t0 = time.perf_counter()
        docs = self.client.submit_specs([build_spec(["sleep", f"{d:.3f}"], retries=0) for d in durs])
        done = self._wait_all([d["id"] for d in docs])
        seconds = time.perf_counter() - t0
        return {"makespan": seconds, "by_task_times": (max(d["finished"] for d in done)
                                                       - min(d["submitted"] for d in done)) / 1000,
                "per_node": dict(Counter(d["node"] for d in done))}

    def growth(self, batches: int, size: int) -> dict:
        """The manager's RSS after a warm-up batch, then after each of `batches` batches of `size`."""
        manager = psutil.Process(self.pids[0])
        self._wait_all(self.client.submit_many([["true"]] * size, retries=0))
        baseline = manager.memory_info().rss / MIB
        points = []
        for _ in range(batches):
            self._wait_all(self.client.submit_many([["true"]] * size, retries=0))
            points.append(manager.memory_info().rss / MIB)
        return {"baseline_mib": baseline, "after_each_batch_mib": points,
                "per_1000": (points[-1] - baseline) / (batches * size) * 1000}


class Dask:
    name = "dask"

    def __init__(self):
        self.cluster = self.client = self.tmp = None

    @staticmethod
    def missing() -> str | None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            return "dask[distributed] not installed (pip install -r bench/requirements.txt): skipped"
        return None

    @staticmethod
    def versions() -> dict:
        import dask
        import distributed
        return {"dask": dask.__version__, "distributed": distributed.__version__}

    def _start(self) -> None:
        import dask
        from distributed import Client, LocalCluster
        self.tmp = tempfile.mkdtemp(prefix="xb-dask-")
        dask.config.set({"temporary-directory": self.tmp})      # else its locks go to /tmp/dask-scratch-space
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                    silence_logs=logging.ERROR, local_directory=self.tmp)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(2)
        self.noop, self.run_true, self.run_sleep = task_functions()

    def _stop(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                thing.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.cluster = self.client = self.tmp = None

    def start_to_first(self) -> dict:
        try:
            t0 = time.perf_counter()
            self._start()
            self.client.submit(self.noop, pure=False).result(timeout=DEADLINE)
            return {"seconds": time.perf_counter() - t0}
        finally:
            self._stop()

    @contextlib.contextmanager
    def running(self):
        try:
            self._start()
            yield self
        finally:
            self._stop()

    def idle(self) -> dict:
        return process_summary(descendants())

    def throughput(self, n: int) -> dict:
        t0 = time.perf_counter()
        self.client.gather(self.client.map(self.run_true, range(n), pure=False))
        seconds = time.perf_counter() - t0
        return {"tasks_per_s": n / seconds, "seconds": seconds}

    def latency(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.client.submit(self.noop, pure=False).result(timeout=DEADLINE)
            out.append(time.perf_counter() - t0)
        return out

    def sleeps(self, durs: list[float]) -> dict:
        t0 = time.perf_counter()
        self.client.gather(self.client.map(self.run_sleep, durs, pure=False))
        return {"makespan": time.perf_counter() - t0}


class Ray:
    name = "ray"

    def __init__(self):
        self.tmp = None

    @staticmethod
    def missing() -> str | None:
        try:
            import ray  # noqa: F401
        except ImportError:
            return "ray not installed (pip install -r bench/requirements.txt): skipped"
        return None

    @staticmethod
    def versions() -> dict:
        import ray
        return {"ray": ray.__version__}

    def _start(self) -> None:
        import ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.tmp = tempfile.mkdtemp(prefix="xb-ray-")          # short: Ray puts unix sockets under it
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, _temp_dir=self.tmp)
        self.noop, self.run_true, self.run_sleep = (ray.remote(f) for f in task_functions())

    def _stop(self) -> None:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def start_to_first(self) -> dict:
        import ray
        try:
            t0 = time.perf_counter()
            self._start()
            ray.get(self.noop.remote(), timeout=DEADLINE)
            return {"seconds": time.perf_counter() - t0}
        finally:
            self._stop()

    @contextlib.contextmanager
    def running(self):
        try:
            self._start()
            yield self
        finally:
            self._stop()

    def idle(self) -> dict:
        return process_summary(descendants())

    def throughput(self, n: int) -> dict:
        import ray
        t0 = time.perf_counter()
        ray.get([self.run_true.remote() for _ in range(n)], timeout=DEADLINE)
        seconds = time.perf_counter() - t0
        return {"tasks_per_s": n / seconds, "seconds": seconds}

    def latency(self, n: int) -> list[float]:
        import ray
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            ray.get(self.noop.remote(), timeout=DEADLINE)
            out.append(time.perf_counter() - t0)
        return out

    def sleeps(self, durs: list[float]) -> dict:
        import ray
        t0 = time.perf_counter()
        ray.get([self.run_sleep.remote(d) for d in durs], timeout=DEADLINE)
        return {"makespan": time.perf_counter() - t0}


SYSTEMS = {"xchanged": Xchanged, "dask": Dask, "ray": Ray}
