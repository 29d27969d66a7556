"""The JSON documents of the control socket's inspecting operations (stable keys; keys may be added)
and the figures /metrics exports, built from what the core lets a driver read (protocol/readout.py).

This is the runtime's one reader of a Node: the control operations and the metrics ask these
functions, and these ask only `readout`, never the core's live structures, so when the core changes
inside, neither this module nor its callers follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol import policy, readout
from ..protocol.messages import PartResult, to_body
from ..protocol.node import Node
from ..protocol.observe import HistogramView


@dataclass(frozen=True, slots=True)
class Figures:
    """What /metrics reads at a scrape, taken on the event loop: the core's counters and the daemon's
    own (`Daemon.runtime_figures`: reloads, drains, history, autoscale, gossip bytes)."""

    core: readout.Counters
    runtime: dict[str, Any] = field(default_factory=dict)


def parts(node: Node, task_id: str) -> list[PartResult] | None:
    """A composite's parts that ended, from memory (None: not in memory; ask the store)."""
    return readout.parts(node, task_id)


def tasks(node: Node, state: str | None = None) -> list[dict]:
    """The tasks this node manages and holds in memory (every unfinished one), in submission order."""
    return readout.task_docs(node, state)


def task(node: Node, task_id: str) -> dict | None:
    """One task's status document, or None when it is not in memory (unknown, or finished long ago)."""
    return readout.task_doc(node, task_id)


def audit_evidence(node: Node, wanted: str = "") -> list[dict]:
    """What this node saw of `wanted`'s (a node id or name; "": every node's) audit heads, with the
    evidence of a fork where it found one."""
    return readout.audit_evidence(node, wanted)


def counters(node: Node) -> readout.Counters:
    """The figures that change with every input, at this instant (take it on the event loop)."""
    return readout.counters(node)


def _peer_doc(view: readout.PeerView) -> dict:
    load, rep = view.load, view.reputation
    return {
        "id": view.id, "name": view.name, "address": view.address, "health": view.health,
        "last_seen_s": None if view.last_seen_s is None else round(view.last_seen_s, 3),
        "slots": load.slots if load else 0, "slots_free": load.slots_free if load else 0,
        "running": load.running if load else 0, "queued": load.queued if load else 0,
        "cpus": load.cpus if load else 0, "cpu_percent": load.cpu_percent if load else 0.0,
        "mem_total": load.mem_total if load else 0, "mem_available": load.mem_available if load else 0,
        "gpus": [to_body(g) for g in load.gpus] if load else [], "labels": dict(load.labels) if load else {},
        "utilisation": round(min(1.0, load.running / load.slots), 3) if load and load.slots else 0.0,
        "completed": int(load.stats.get("completed", 0)) if load else 0,
        "score": view.score,
        "success_rate": rep.success_rate if rep else None, "breaker": rep.breaker if rep else policy.CLOSED,
        "successes": rep.successes if rep else 0, "failures": rep.failures if rep else 0,
        "bid_accuracy": rep.bid_accuracy if rep else None,
        "self": view.is_self, "audit": view.audit, "audit_size": view.audit_size,
        "draining": bool(load and load.draining),
        # the agent's own counts (gossiped; they survive its restarts), for the seed's per-agent figures
        "attempts_failed": int(load.stats["attempts_failed"]) if load and "attempts_failed" in load.stats else None,
        "run_ms": int(load.stats.get("run_ms", 0)) if load else 0,
    }


def peers(node: Node, now: float) -> list[dict]:
    """Ourselves first, then every known peer by name, each scored as a bid from it would be at `now`."""
    return [_peer_doc(view) for view in readout.peers(node, now)]


def stats(node: Node, now: float, uptime: float, stored_states: dict[str, int] | None = None) -> dict:
    """Totals and per-agent figures, scored as `peers(node, now)` scores them (same `now`, same score).

    `stored_states`: task counts by state from the store, which, unlike memory, holds every finished
    task (memory keeps only the newest; unfinished ones are always in memory)."""
    c = readout.counters(node)
    states = {state: n for state, n in c.tasks_by_state.items() if state in readout.UNFINISHED_STATES}
    for state, n in (stored_states or {}).items():
        if state not in readout.UNFINISHED_STATES:
            states[state] = n
    peer_docs = peers(node, now)
    live = [p for p in peer_docs if p["health"] != "dead"]
    slots = sum(p["slots"] for p in live)
    busy = sum(min(p["slots"], p["running"]) for p in live)
    m = c.manager
    finished = m.get("succeeded", 0) + m.get("failed", 0)
    serving = [p for p in live if p["slots"]]
    return {
        "node": peer_docs[0]["name"], "uptime_s": round(uptime, 1),
        "total_agents": len(peer_docs), "healthy_agents": sum(1 for p in peer_docs if p["health"] == "alive"),
        "total_capacity": slots, "current_load": busy,
        "utilization_percent": round(100 * busy / slots, 1) if slots else 0.0,
        "utilization": round(100 * busy / slots, 1) if slots else 0.0,            # seed 003's name
        "queued_jobs": states.get("queued", 0), "assigned_jobs": states.get("assigned", 0),
        "running_jobs": states.get("running", 0),
        "tasks_by_state": states,
        "submitted": m.get("submitted", 0), "succeeded": m.get("succeeded", 0), "failed": m.get("failed", 0),
        "retries": m.get("retries", 0),
        # seed 003's totals, of the tasks this node manages (kept in the store: they survive restarts)
        "total_jobs_queued": m.get("submitted", 0), "total_jobs_assigned": m.get("awards", 0),
        "total_jobs_failed": m.get("failed", 0), "total_jobs_retried": m.get("retries", 0),
        "draining": peer_docs[0]["draining"],
        "running_here": c.started, "queued_here": c.queued,     # this node's contractor: started, waiting
        **fairness([p["running"] / p["slots"] for p in serving],
                   [p["completed"] / p["slots"] for p in serving]),
        "queue_latency": percentiles(c.timings["queue_wait"]),
        "timings": {name: percentiles(view) for name, view in c.timings.items()},
        "refusals": dict(c.refusals),
        "success_rate": round(m.get("succeeded", 0) / finished, 4) if finished else None,
        "awards": m.get("awards", 0), "announcements": m.get("announcements", 0),
        "late_bids": m.get("late_bids", 0),
        "frames_dropped": dict(c.frames_dropped),
        "audit_forks": c.audit_forks, "audit_forked_nodes": list(c.audit_forked_nodes),
        "free_slots": sum(p["slots_free"] for p in live),
        "queued_total": sum(p["queued"] for p in live),      # every live manager's queue, from its load signal
        "outranked_rounds": m.get("outranked", 0),
        "agents": [{k: p[k] for k in ("name", "health", "slots", "slots_free", "running", "queued", "cpu_percent",
                                       "utilisation", "completed", "success_rate", "score", "breaker",
                                       "bid_accuracy", "gpus") if k in p}
                   | {"agent_id": p["id"], "current_jobs": p["running"], "max_jobs": p["slots"],
                      "load_percent": round(100 * p["utilisation"], 1), "total_completed": p["completed"],
                      "total_failed": p["failures"] if p["attempts_failed"] is None else p["attempts_failed"],
                      "avg_time": round(p["run_ms"] / p["completed"] / 1000, 3) if p["completed"] else None,
                      "is_healthy": p["health"] == "alive", "draining": p["draining"]}
                   for p in peer_docs],
    }


def fairness(loads: list[float], work: list[float]) -> dict[str, float | None]:
    """Seed 002's balance figures over the live agents: the variance of their load (busy share of
    slots, now) and Jain's fairness index of it, (sum x)^2 / (n * sum x^2): 1.0 when every agent is
    equally loaded, 1/n when one carries everything; the same over the work each has done (attempts
    completed per slot). None without agents; an index over all-zero loads is 1.0 (nobody favoured)."""
    return {"load_variance": _variance(loads), "fairness_index": _jain(loads),
            "work_variance": _variance(work), "work_fairness_index": _jain(work)}


def _variance(xs: list[float]) -> float | None:
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    return round(sum((x - mean) ** 2 for x in xs) / len(xs), 6)


def _jain(xs: list[float]) -> float | None:
    if not xs:
        return None
    squares = sum(x * x for x in xs)
    return round(sum(xs) ** 2 / (len(xs) * squares), 6) if squares else 1.0


def percentiles(view: HistogramView) -> dict[str, float | int | None]:
    """p50/p90/p99 (seconds) of the recent samples of a timing, with the count and mean of all of them."""
    def p(q: float) -> float | None:
        v = view.percentile(q)
        return None if v is None else round(v, 4)
    return {"p50": p(50), "p90": p(90), "p99": p(99), "count": view.count,
            "mean": round(view.total / view.count, 4) if view.count else None}
