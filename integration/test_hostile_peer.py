"""A hostile peer floods a daemon while normal tasks run on it from another peer (hostile_flood.py).

~100,000 frames: 4 x 20,000 over one admitted Curve connection (random bytes, msgpack with bad
signatures, frames correctly signed by an untrusted key, replays of one valid frame), 10,000 each from
a plaintext client and a Curve client with an unknown key, and five 10 MB frames. The target (node1)
runs with the shipped defaults ([network] peer_rate 5000/s, peer_burst 10000, peer_queue 1000).

What must hold:
- the target stays up and answers;
- its RSS stays under RSS_BOUND (and under its unflooded RSS + RSS_GROWTH);
- every frame that reached it over the admitted connection is counted, by reason: dropped before the
  core (rate_limited, peer_queue_full), rejected by the gate (bad_magic, truncated, bad_signature,
  untrusted, replayed, ...) or skipped as a duplicate; the plaintext client's and the unknown key's
  connections are counted as refused handshakes (no frame of theirs is delivered), and the 10 MB
  frames as dropped connections (the socket cuts them: none reaches the gate);
- the normal tasks, submitted on node2 and run on node1, all succeed, with a median latency no
  worse than twice the median measured just before, without the flood.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from xchanged.localcluster import LocalCluster
from xchanged.provision import init_node

TASKS = 25
RSS_BOUND = 256 << 20          # bytes: the target's resident memory during the flood
RSS_GROWTH = 100 << 20         # ... and at most this above what it used before the flood
GATE_REASONS = ("truncated", "oversized", "bad_magic", "bad_version", "untrusted", "bad_signature", "malformed",
                "unknown_type", "invalid_body", "stale", "replayed", "rate_limited", "peer_queue_full")


def run_tasks(cluster: LocalCluster, n: int) -> list[float]:
    """Latencies (s) of `n` tasks submitted on node2 and run on node1, one after the other."""
    latencies = []
    with cluster.client(1) as client:
        for _ in range(n):
            start = time.monotonic()
            tid = client.submit(["true"], labels={"role": "target"})
            doc = client.wait(tid, timeout=60)
            assert doc["state"] == "succeeded" and doc["node"] == "node1", doc
            latencies.append(time.monotonic() - start)
    return latencies


def counted(stats: dict) -> int:
    return sum(stats["frames_dropped"].get(r, 0) for r in GATE_REASONS) + stats["duplicate_frames"]


class RssWatch:
    """The highest RSS of a process, sampled every 50 ms in a thread (joined by stop())."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


@pytest.fixture
def cluster(tmp_path):
    hostile = init_node(tmp_path / "hostile", "hostile", config_text="", force=True)
    c = LocalCluster([2, 1], base_dir=tmp_path / "cluster", labels=[{"role": "target"}, {}])
    target = c.nodes[0]
    with open(target.files.authorized_keys, "a") as f:      # the flooder holds a key node1 trusts
        f.write(hostile.public_line + "\n")
    with c:
        c.hostile = hostile
        yield c


def test_a_flood_of_bad_frames_neither_stops_the_daemon_nor_slows_other_peers_much(cluster):
    target = cluster.nodes[0]
    run_tasks(cluster, 5)                                     # warm up: direct awards, sockets open
    baseline = run_tasks(cluster, TASKS)
    rss_before = psutil.Process(target.process.pid).memory_info().rss
    with cluster.client(0) as client:
        before = client.stats()
    flooder = subprocess.Popen(
        [sys.executable, "-m", "integration.hostile_flood", "--target", f"127.0.0.1:{target.port}",
         "--target-key", target.key_b64, "--key", str(cluster.hostile.key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert flooder.stdout.readline().strip() == "ready", flooder.stderr.read()
        watch = RssWatch(target.process.pid)
        try:
            flooded = []
            while flooder.poll() is None:
                flooded += run_tasks(cluster, 1)
            rest, errors = flooder.communicate(timeout=120)
        finally:
            peak = watch.stop()
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.communicate()
    assert flooder.returncode == 0, errors
    report = json.loads(rest.strip().splitlines()[-1])
    sent = report["sent"]
    admitted = sum(sent[k] for k in ("random", "bad_sig", "untrusted", "replay"))
    assert admitted + sent["plaintext"] + sent["zap"] + sent["oversized"] >= 100_000

    with cluster.client(0) as client:                         # every delivered frame is accounted for
        cluster.wait_for(lambda: counted(client.stats()) - counted(before) >= admitted - 1, 60,
                         "the target to count every flooded frame")
        after = client.stats()
        assert client.ping()["name"] == "node1"
    drops = {r: after["frames_dropped"].get(r, 0) - before["frames_dropped"].get(r, 0) for r in GATE_REASONS}
    print(f"\n[measured] flood: {report['seconds']}s, sent {sent}; drops {drops}; duplicates "
          f"{after['duplicate_frames'] - before['duplicate_frames']}; security {after['security']}")
    assert drops["bad_magic"] + drops["truncated"] > 0 and drops["bad_signature"] > 0
    assert drops["untrusted"] > 0 and drops["replayed"] + after["duplicate_frames"] > before["duplicate_frames"]
    assert drops["oversized"] == 0                            # cut by the socket, never parsed
    sec = after["security"]
    assert sec["zap_denied"].get("unknown_key", 0) >= 1
    refused = sec["connections"].get("handshake_failed_protocol", 0) + sec["connections"].get("handshake_failed", 0)
    assert refused >= 1                                       # the plaintext client (libzmq says which, or not)
    assert sec["connections"].get("disconnected", 0) >= sent["oversized"]

    assert peak < RSS_BOUND and peak < rss_before + RSS_GROWTH, (peak >> 20, rss_before >> 20)
    base, under = statistics.median(baseline), statistics.median(flooded)
    print(f"[measured] task latency median: {base * 1000:.1f} ms unflooded, {under * 1000:.1f} ms flooded "
          f"({len(flooded)} tasks); peak RSS {peak >> 20} MiB (before {rss_before >> 20} MiB)")
    assert len(flooded) >= 3
    assert under <= 2 * base, (base, under)
