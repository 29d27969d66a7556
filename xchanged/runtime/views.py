"""Everything the runtime reads of the protocol core's state: the JSON documents of the control
socket's inspecting operations (stable keys; keys may be added) and the figures /metrics exports.

This is the only module outside `protocol/` that looks inside a Node (its manager's tasks and records,
its membership table, its contractor, its audit watch), so when the core's internals change, only
this module follows. Everything else asks these functions.
"""

from __future__ import annotations

from collections import Counter

from ..protocol import policy
from ..protocol.manager import ASSIGNED, QUEUED, RUNNING
from ..protocol.messages import Bid, Requirements, to_body
from ..protocol.node import Node


def tasks(node: Node, state: str | None = None) -> list[dict]:
    """The tasks this node manages and holds in memory (every unfinished one), in submission order."""
    docs = [t.to_doc() for t in node.manager.tasks.values() if state in (None, "", t.state)]
    docs.sort(key=lambda d: d["order"])
    return docs


def task(node: Node, task_id: str) -> dict | None:
    """One task's status document, or None when it is not in memory (unknown, or finished long ago)."""
    found = node.manager.tasks.get(task_id)
    return found.to_doc() if found is not None else None


def audit_evidence(node: Node, wanted: str = "") -> list[dict]:
    """What this node saw of `wanted`'s (a node id or name; "": every node's) audit heads, with the
    evidence of a fork where it found one."""
    found = [w for w in node.audit_watch.nodes.values()
             if wanted in ("", w.node_id) or node.lookup(w.node_id)[1] == wanted]
    return [dict(w.doc(), name=node.lookup(w.node_id)[1], evidence=w.evidence) for w in found]


def peer_score(load, record, now: float | None) -> float | None:
    """The score a bid matching this peer's last load signal would get from us now (policy.score)."""
    if load is None:
        return None
    bid = Bid("", 0, slots=load.slots, slots_free=load.slots_free, cpu_percent=load.cpu_percent,
              mem_available=load.mem_available)
    record = record or policy.ContractorRecord()
    at = now if now is not None else (record.last_award or 0.0) + policy.FAIRNESS_HORIZON
    return round(policy.score(bid, record, Requirements(), at, False), 4)


def _peer_doc(pid: str, name: str, address: str, health: str, last_seen: float | None, load, record,
              now: float | None = None) -> dict:
    doc = {
        "id": pid, "name": name, "address": address, "health": health,
        "last_seen_s": None if last_seen is None else round(last_seen, 3),
        "slots": load.slots if load else 0, "slots_free": load.slots_free if load else 0,
        "running": load.running if load else 0, "queued": load.queued if load else 0,
        "cpus": load.cpus if load else 0, "cpu_percent": load.cpu_percent if load else 0.0,
        "mem_total": load.mem_total if load else 0, "mem_available": load.mem_available if load else 0,
        "gpus": [to_body(g) for g in load.gpus] if load else [], "labels": dict(load.labels) if load else {},
        "utilisation": round(min(1.0, load.running / load.slots), 3) if load and load.slots else 0.0,
        "completed": int(load.stats.get("completed", 0)) if load else 0,
        "score": peer_score(load, record, now),
        "success_rate": None, "breaker": policy.CLOSED, "successes": 0, "failures": 0, "bid_accuracy": None,
    }
    if record is not None:
        doc.update(success_rate=round(record.success_rate, 3), breaker=record.breaker,
                   successes=record.successes, failures=record.failures,
                   bid_accuracy=round(record.accuracy, 3) if record.estimates else None)
    return doc


def peers(node: Node, now: float) -> list[dict]:
    own = node.load_signal(now)
    out = [dict(_peer_doc(node.id, own.name, own.address, "alive", 0.0, own, node.manager.records.get(node.id),
                          now),
                self=True, audit="self", audit_size=(node.audit_head or {}).get("size"))]
    for peer in sorted(node.membership.peers.values(), key=lambda p: p.name):
        out.append(dict(_peer_doc(peer.id, peer.name, peer.address, peer.health, now - peer.last_heard,
                                  peer.load, node.manager.records.get(peer.id), now), self=False,
                        **_audit_doc(node, peer.id)))
    return out


def _audit_doc(node: Node, peer_id: str) -> dict:
    """`audit`: unknown | ok | checking | forked (its log was rewritten); `audit_size`: last checked head."""
    watched = node.audit_watch.nodes.get(peer_id)
    return {"audit": node.audit_watch.status(peer_id),
            "audit_size": watched.head.size if watched is not None and watched.head is not None else None}


def stats(node: Node, now: float, uptime: float, stored_states: dict[str, int] | None = None) -> dict:
    """Totals and per-agent figures, scored as `peers(node, now)` scores them (same `now`, same score).

    `stored_states`: task counts by state from the store, which, unlike memory, holds every finished
    task (memory keeps only the newest; unfinished ones are always in memory)."""
    states = Counter(t.state for t in node.manager.index.active.values())
    for state, n in (stored_states or {}).items():
        if state not in (QUEUED, ASSIGNED, RUNNING):
            states[state] = n
    peer_docs = peers(node, now)
    live = [p for p in peer_docs if p["health"] != "dead"]
    slots = sum(p["slots"] for p in live)
    busy = sum(min(p["slots"], p["running"]) for p in live)
    m = node.manager.stats
    finished = m["succeeded"] + m["failed"]
    return {
        "node": node.settings.name, "uptime_s": round(uptime, 1),
        "total_agents": len(peer_docs), "healthy_agents": sum(1 for p in peer_docs if p["health"] == "alive"),
        "total_capacity": slots, "current_load": busy,
        "utilization_percent": round(100 * busy / slots, 1) if slots else 0.0,
        "queued_jobs": states[QUEUED], "assigned_jobs": states[ASSIGNED], "running_jobs": states[RUNNING],
        "tasks_by_state": dict(states),
        "submitted": m["submitted"], "succeeded": m["succeeded"], "failed": m["failed"], "retries": m["retries"],
        "success_rate": round(m["succeeded"] / finished, 4) if finished else None,
        "awards": m["awards"], "announcements": m["announcements"], "late_bids": m["late_bids"],
        "frames_dropped": dict(node.drops),
        "audit_forks": node.audit_watch.forks, "audit_forked_nodes": node.audit_watch.forked(),
        "free_slots": sum(p["slots_free"] for p in live),
        "queued_total": sum(p["queued"] for p in live),      # every live manager's queue, from its load signal
        "outranked_rounds": m["outranked"],
        "agents": [{k: p[k] for k in ("name", "health", "slots", "slots_free", "running", "queued", "cpu_percent",
                                       "utilisation", "completed", "success_rate", "score", "breaker",
                                       "bid_accuracy") if k in p}
                   | {"agent_id": p["id"], "current_jobs": p["running"], "max_jobs": p["slots"],
                      "load_percent": round(100 * p["utilisation"], 1), "total_completed": p["completed"],
                      "total_failed": p["failures"], "is_healthy": p["health"] == "alive"}
                   for p in peer_docs],
    }


def metrics(node: Node) -> dict:
    """The figures /metrics exports. Called from the metrics server's thread while the loop changes
    the node: every collection is copied (list()) before it is walked."""
    c = node.contractor
    return {
        "tasks_by_state": Counter(t.state for t in list(node.manager.index.active.values())),
        "manager_events": dict(list(node.manager.stats.items())),
        "frames_dropped": dict(list(node.drops.items())),
        "peers_by_health": Counter(p.health for p in list(node.membership.peers.values())),
        "slots": node.settings.slots, "slots_free": c.slots_free,
        "started": c.started,                 # attempts whose process runs (queued ones are not counted)
        "queued": len(c.waiting),             # accepted attempts waiting here for a slot (prefetch)
        "attempts_completed": c.completed,
        "audit_forks": node.audit_watch.forks,
    }
