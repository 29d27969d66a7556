"""`xchanged sim`: a whole cluster on one process, driven through the real protocol core.

Every node is the daemon's own `Node`, driven by the daemon's own loop (driver.py) through
`SimCluster`, with a virtual clock and network (latency, jitter, loss, partitions) and the cheap
stand-in for signatures (`SimCluster(fast=True)`, sim/fastsig.py). Same seed, same result.

A run:
1. forms the cluster: N nodes of drawn sizes start at once, each seeded with three earlier ones,
   and gossip for `warmup` seconds;
2. measures spread in the quiet cluster: one node's resources change (news, `announce`) and the
   time until 99% of the nodes have received its new load; likewise a routine change (cpu);
3. runs the workload (workload.py): Poisson arrivals at the target utilisation submitted to random
   nodes, crashes (each node back after `downtime`) and joins, until every task has finished or
   `drain` seconds after the last arrival;
4. reports: messages per task (the negotiation's frames: cfp, bid, award, ... per task), gossip bytes
   per node per second (membership's frames), spread, failure detection (from a crash until every
   node that held the crashed node sees it dead), false positives (live nodes declared dead; and
   suspected), mean response time against the omniscient scheduler on the same workload, tasks
   lost, and the host CPU per event.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocol.events import Capacity, ResourcesRead
from ..protocol.membership import DEAD, GossipSettings
from ..protocol.messages import TaskSpec
from .cluster import WALL_EPOCH_MS, SimCluster
from .workload import Workload, make, omniscient

NEGOTIATION = ("cfp", "bid", "refuse", "reject_bid", "award", "accept", "reject", "progress", "result", "ack",
               "cancel", "parts_ack")
MEMBERSHIP = ("load", "gossip", "ping", "ping_req", "pong", "suspect", "dead", "relay")
SEEDS = 3
SPREAD_LIMIT = 4.0             # seconds a spread is followed: not reaching 99% by then is reported as such


@dataclass
class SimOptions:
    nodes: int
    tasks: int
    load: float = 0.8
    seed: int = 1
    crash_rate: float = 0.0             # crashes a second, cluster-wide (each node back after `downtime`)
    downtime: float = 5.0
    join_rate: float = 0.0              # fresh nodes a second
    latency: float = 0.001
    jitter: float = 0.0005
    loss: float = 0.0
    partition: tuple[float, float, float] | None = None    # (at, seconds, fraction of nodes cut off)
    warmup: float = 8.0
    drain: float = 120.0
    gossip: GossipSettings = field(default_factory=GossipSettings)


@dataclass
class _Crash:
    victim: str
    incarnation: int            # the life that crashed
    at: float
    holders: list[str]          # nodes that held it alive when it crashed
    done: float | None = None   # when the last of them saw it dead (or forgot it)


class Run:
    def __init__(self, opts: SimOptions, progress: Callable[[str], None] | None = None):
        self.o = opts
        self.say = progress or (lambda text: None)
        self.c = SimCluster(seed=opts.seed, latency=opts.latency, jitter=opts.jitter, fast=True, keep_logs=False,
                            on_log=self._log, gossip=opts.gossip)
        self.names: list[str] = []
        self.ids: list[str] = []
        self.crashed_at: dict[str, float] = {}
        self.false_dead = 0
        self.false_suspect = 0
        self.crashes: list[_Crash] = []
        self.tasks: list[tuple[str, str, float]] = []       # (task id, manager id, arrival)
        self.partitioned: tuple[float, float] | None = None

    # -- phases ---------------------------------------------------------------------------------

    def form(self, slots: list[int]) -> None:
        c, rng = self.c, self.c.rng
        for i, n in enumerate(slots):
            earlier = rng.sample(range(i), min(SEEDS, i))
            name = f"n{i}"
            self.ids.append(c.add_node(name, slots=n, seeds=[c.nodes[self.ids[j]].address for j in earlier]))
            self.names.append(name)
        self.say(f"formed {len(slots)} nodes; warming up {self.o.warmup:g} s")
        c.run_for(self.o.warmup)

    def spread(self, news: bool) -> tuple[float | None, float]:
        """One node's load changes (news: its cpus; routine: its cpu load): (seconds from its first
        transmission until 99% of the other nodes received it, or None; the fraction reached within
        SPREAD_LIMIT)."""
        c = self.c
        ids = [nid for nid, s in c.nodes.items() if s.up]
        origin = ids[c.rng.randrange(len(ids))]
        sim = c.nodes[origin]
        cap = sim.node.contractor.capacity
        c.watch(origin, sim.encoder.seq + 1)
        changed = Capacity(cpus=cap.cpus + 1 if news else cap.cpus, cpu_percent=95.0 if not news else cap.cpu_percent,
                           mem_total=cap.mem_total, mem_available=cap.mem_available, gpus=cap.gpus)
        c.deliver(origin, ResourcesRead(changed))
        others = len(ids) - 1
        c.run_until(lambda: len(c.reached) - (origin in c.reached) >= 0.99 * others, limit=SPREAD_LIMIT)
        times = sorted(t for nid, t in c.reached.items() if nid != origin)
        first = c.reached.get(origin, times[0] if times else c.now) - c.latency
        spread = times[int(0.99 * others) - 1] - first if len(times) >= 0.99 * others and times else None
        c.watch(None)
        c.deliver(origin, ResourcesRead(cap))
        return spread, len(times) / max(1, others)

    def workload(self, wl: Workload) -> None:
        c, o = self.c, self.o
        for a in wl.arrivals:
            c.at(a.at, lambda a=a: self._arrive(a.node, a.duration, a.at))
        for crash in wl.crashes:
            c.at(crash.at, lambda crash=crash: self._crash(crash.node, crash.downtime))
        for k, (at, slots) in enumerate(wl.joins):
            c.at(at, lambda k=k, slots=slots: self._join(k, slots))
        if o.partition is not None:
            at, seconds, fraction = o.partition
            c.at(c.now + at, lambda: self._partition(seconds, fraction))
        end = wl.span + o.drain
        pending = list(range(len(wl.arrivals)))
        while c.now < end:
            c.run_for(1.0)
            pending = [i for i in pending if i >= len(self.tasks) or not self._finished(i)]
            if c.now >= wl.span and not pending:
                break
            if int(c.now) % 10 == 0:
                self.say(f"t={c.now:.0f}s: {len(self.tasks)} submitted, {len(pending)} unfinished")

    # -- workload events ------------------------------------------------------------------------

    def _arrive(self, index: int, duration: float, at: float) -> None:
        c = self.c
        for k in range(len(self.names)):                        # the node, or the next one up (a client retries)
            name = self.names[(index + k) % len(self.names)]
            sim = c.node(name)
            if sim.up:
                task_id = c.submit(name, TaskSpec(["sleep", f"{duration:g}"], retries=10))
                self.tasks.append((task_id, sim.node.id, at))
                return

    def _crash(self, index: int, downtime: float) -> None:
        c = self.c
        name = self.names[index]
        sim = c.node(name)
        if not sim.up:
            return
        victim = sim.node.id
        holders = [nid for nid, s in c.nodes.items() if s.up and nid != victim
                   and (p := s.node.membership.peers.get(victim)) is not None and p.health != DEAD]
        c.crash(name)
        self.crashed_at[victim] = c.now
        record = _Crash(victim, sim.encoder.incarnation, c.now, holders)
        self.crashes.append(record)
        self._check_detection(record)
        c.at(c.now + downtime, lambda: c.restart(name))

    def _check_detection(self, record: _Crash) -> None:
        c = self.c
        record.holders = [h for h in record.holders if c.nodes[h].up and self._holds_alive(h, record)]
        if not record.holders:
            record.done = c.now
        elif c.now - record.at < 60:
            c.at(c.now + 0.05, lambda: self._check_detection(record))

    def _holds_alive(self, observer: str, record: _Crash) -> bool:
        peer = self.c.nodes[observer].node.membership.peers.get(record.victim)
        return peer is not None and peer.health != DEAD and peer.incarnation <= record.incarnation

    def _join(self, k: int, slots: int) -> None:
        c = self.c
        up = [s.address for s in c.nodes.values() if s.up]
        name = f"j{k}"
        c.add_node(name, slots=slots, seeds=c.rng.sample(up, min(SEEDS, len(up))))
        self.names.append(name)

    def _partition(self, seconds: float, fraction: float) -> None:
        c = self.c
        cut = self.names[: max(1, int(len(self.names) * fraction))]
        c.partition(cut)
        self.partitioned = (c.now, c.now + seconds)
        c.at(c.now + seconds, c.heal)

    def _finished(self, i: int) -> bool:
        task_id, manager, _ = self.tasks[i]
        doc = self.c.nodes[manager].disk.get("tasks", task_id)
        return doc is not None and doc["state"] in ("succeeded", "failed", "cancelled")

    def _log(self, observer: str, line: str) -> None:
        if not line.startswith("peer ") or not (line.endswith(" is dead") or line.endswith(" is suspect")):
            return
        victim = line[line.rfind("(") + 1:line.rfind(")")]
        sim = self.c.nodes.get(victim)
        if sim is None or not sim.up or self.c.now - self.crashed_at.get(victim, -1e9) < 30:
            return                                              # a verdict on a crashed life, however late
        if self.partitioned is not None and self.partitioned[0] <= self.c.now <= self.partitioned[1] + 30:
            return                                              # a partition: both sides are right to say so
        if line.endswith(" is dead"):
            self.false_dead += 1
        else:
            self.false_suspect += 1

    # -- the whole run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o, c = self.o, self.c
        host0 = time.process_time()
        wl = make(o.nodes, o.tasks, o.load, o.seed, o.crash_rate, o.downtime, o.join_rate)
        self.form(wl.slots)
        formed_events, formed_host = c.events, time.process_time() - host0
        news, news_reach = self.spread(news=True)
        routine, routine_reach = self.spread(news=False)
        start = c.now
        wl = make(o.nodes, o.tasks, o.load, o.seed, o.crash_rate, o.downtime, o.join_rate, start=start)
        if o.loss:
            c.loss = o.loss
        sent0, bytes0, events0, host1 = c.sent_by_type.copy(), c.bytes_by_type.copy(), c.events, time.process_time()
        self.say(f"workload: {len(wl.arrivals)} tasks over {wl.span - start:.1f} s, {len(wl.crashes)} crashes, "
                 f"{len(wl.joins)} joins")
        self.workload(wl)
        duration = c.now - start
        host = time.process_time() - host1
        events = c.events - events0
        sent = c.sent_by_type - sent0
        sizes = c.bytes_by_type - bytes0
        responses, lost = [], 0
        for task_id, manager, arrival in self.tasks:
            doc = c.nodes[manager].disk.get("tasks", task_id)
            if doc is None or doc["state"] != "succeeded" or doc.get("finished") is None:
                lost += 1
                continue
            responses.append((doc["finished"] - WALL_EPOCH_MS) / 1000 - arrival)
        ideal = omniscient(wl)
        detections = [r.done - r.at for r in self.crashes if r.done is not None]
        mean = sum(responses) / len(responses) if responses else float("nan")
        n_avg = len([s for s in c.nodes.values() if s.up]) or 1
        return {
            "nodes": o.nodes, "tasks": len(self.tasks), "load": o.load, "seed": o.seed,
            "messages_per_task": round(sum(sent[k] for k in NEGOTIATION) / max(1, len(self.tasks)), 2),
            "gossip_bytes_per_node_s": round(sum(sizes[k] for k in MEMBERSHIP) / n_avg / max(duration, 1e-9)),
            "spread_99_s": None if news is None else round(news, 3),
            "detection_s": round(max(detections), 2) if detections else None,
            "false_positives": self.false_dead,
            "response_vs_omniscient": round(mean / (sum(ideal) / len(ideal)), 3) if responses else None,
            "tasks_lost": lost,
            "detection_mean_s": round(sum(detections) / len(detections), 2) if detections else None,
            "crashes": len(self.crashes), "undetected": sum(1 for r in self.crashes if r.done is None),
            "false_suspicions": self.false_suspect,
            "spread_reach": round(news_reach, 4),
            "routine_spread_99_s": None if routine is None else round(routine, 3),
            "routine_reach": round(routine_reach, 4),
            "mean_response_s": round(mean, 3), "omniscient_response_s": round(sum(ideal) / len(ideal), 3),
            "frames_per_node_s": round(sum(sent[k] for k in MEMBERSHIP) / n_avg / max(duration, 1e-9), 2),
            "events": events, "cpu_us_per_event": round(host / max(1, events) * 1e6, 1),
            "formation_events": formed_events, "formation_host_s": round(formed_host, 1),
            "virtual_s": round(c.now, 1), "host_s": round(time.process_time() - host0, 1),
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }


def simulate(opts: SimOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    return Run(opts, progress).run()
