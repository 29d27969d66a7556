"""Prometheus metrics, read from the node's state at scrape time (no second set of counters to keep).

Served on `[metrics] listen` (default 127.0.0.1:9464; "" disables) at /metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from ..config import parse_host_port
from ..protocol.node import Node

log = logging.getLogger(__name__)


class NodeCollector:
    def __init__(self, get_node: Callable[[], Node | None]):
        self.get_node = get_node

    def collect(self) -> Iterable:
        node = self.get_node()
        if node is None:
            return
        # scraped from another thread: take atomic snapshots (list()) of what the loop mutates
        states = Counter(t.state for t in list(node.manager.index.active.values()))
        tasks = GaugeMetricFamily("xchanged_tasks", "Unfinished tasks this node manages, by state",
                                  labels=["state"])
        for state in ("queued", "assigned", "running"):
            tasks.add_metric([state], states.get(state, 0))
        yield tasks
        finished = CounterMetricFamily("xchanged_tasks_finished", "Tasks this node managed to an end since start",
                                       labels=["state"])
        for state in ("succeeded", "failed"):
            finished.add_metric([state], node.manager.stats.get(state, 0))
        yield finished
        manager = CounterMetricFamily("xchanged_manager_events", "Manager events since start", labels=["event"])
        for event, n in sorted(list(node.manager.stats.items())):
            manager.add_metric([event], n)
        yield manager
        drops = CounterMetricFamily("xchanged_frames_dropped", "Peer frames dropped, by reason", labels=["reason"])
        for reason, n in sorted(list(node.drops.items())):
            drops.add_metric([reason], n)
        yield drops
        health = GaugeMetricFamily("xchanged_peers", "Known peers, by health", labels=["health"])
        by_health = Counter(p.health for p in list(node.membership.peers.values()))
        for h in ("alive", "suspect", "dead"):
            health.add_metric([h], by_health.get(h, 0))
        yield health
        c = node.contractor
        yield GaugeMetricFamily("xchanged_slots", "Task slots of this node", value=node.settings.slots)
        yield GaugeMetricFamily("xchanged_slots_free", "Free task slots of this node", value=c.slots_free)
        yield GaugeMetricFamily("xchanged_running", "Attempts running on this node", value=len(c.running))
        yield CounterMetricFamily("xchanged_attempts_completed", "Attempts this node ran to an end",
                                  value=c.completed)
        yield CounterMetricFamily("xchanged_audit_forks", "Peers whose audit log was found rewritten (forked)",
                                  value=node.audit_watch.forks)


def serve_metrics(listen: str, get_node: Callable[[], Node | None]):
    """Start the /metrics endpoint; returns the server (or None when disabled)."""
    if not listen:
        return None
    host, port = parse_host_port(listen)
    registry = CollectorRegistry()
    registry.register(NodeCollector(get_node))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics endpoint %s unavailable: %s", listen, exc)
        return None
    return server
