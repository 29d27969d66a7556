"""Prometheus metrics, read from the node's state at scrape time (no second set of counters to keep).

Served on `[metrics] listen` (default 127.0.0.1:9464; "" disables) at /metrics.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from ..config import parse_host_port
from ..protocol.node import Node
from . import views

log = logging.getLogger(__name__)


class NodeCollector:
    def __init__(self, get_node: Callable[[], Node | None]):
        self.get_node = get_node

    def collect(self) -> Iterable:
        node = self.get_node()
        if node is None:
            return
        m = views.metrics(node)
        tasks = GaugeMetricFamily("xchanged_tasks", "Unfinished tasks this node manages, by state",
                                  labels=["state"])
        for state in ("queued", "assigned", "running"):
            tasks.add_metric([state], m["tasks_by_state"].get(state, 0))
        yield tasks
        finished = CounterMetricFamily("xchanged_tasks_finished", "Tasks this node managed to an end since start",
                                       labels=["state"])
        for state in ("succeeded", "failed"):
            finished.add_metric([state], m["manager_events"].get(state, 0))
        yield finished
        manager = CounterMetricFamily("xchanged_manager_events", "Manager events since start", labels=["event"])
        for event, n in sorted(m["manager_events"].items()):
            manager.add_metric([event], n)
        yield manager
        drops = CounterMetricFamily("xchanged_frames_dropped", "Peer frames dropped, by reason", labels=["reason"])
        for reason, n in sorted(m["frames_dropped"].items()):
            drops.add_metric([reason], n)
        yield drops
        health = GaugeMetricFamily("xchanged_peers", "Known peers, by health", labels=["health"])
        for h in ("alive", "suspect", "dead"):
            health.add_metric([h], m["peers_by_health"].get(h, 0))
        yield health
        yield GaugeMetricFamily("xchanged_slots", "Task slots of this node", value=m["slots"])
        yield GaugeMetricFamily("xchanged_slots_free", "Free task slots of this node", value=m["slots_free"])
        yield GaugeMetricFamily("xchanged_running", "Attempts whose process runs on this node", value=m["started"])
        yield GaugeMetricFamily("xchanged_queued", "Accepted attempts waiting on this node for a slot",
                                value=m["queued"])
        yield CounterMetricFamily("xchanged_attempts_completed", "Attempts this node ran to an end",
                                  value=m["attempts_completed"])
        yield CounterMetricFamily("xchanged_audit_forks", "Peers whose audit log was found rewritten (forked)",
                                  value=m["audit_forks"])


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
