"""Prometheus metrics, read from the node's state at scrape time (no second set of counters to keep).

Served on `[metrics] listen` (default 127.0.0.1:9464; "" disables) at /metrics. The HTTP server runs
in a thread of its own, so it never reads the node: at each scrape it asks for a snapshot of the
core's counters (`readout.Counters`), which the daemon takes on its event loop (`Daemon.counters`).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from ..config import parse_host_port
from ..protocol.readout import Counters

log = logging.getLogger(__name__)


class NodeCollector:
    """Turns a counters snapshot into metric families; `get_counters` returns None when there is none
    to be had (the node is not built yet, or the loop did not answer in time): the scrape is empty."""

    def __init__(self, get_counters: Callable[[], Counters | None]):
        self.get_counters = get_counters

    def collect(self) -> Iterable:
        c = self.get_counters()
        if c is None:
            return
        tasks = GaugeMetricFamily("xchanged_tasks", "Unfinished tasks this node manages, by state",
                                  labels=["state"])
        for state in ("queued", "assigned", "running"):
            tasks.add_metric([state], c.tasks_by_state.get(state, 0))
        yield tasks
        finished = CounterMetricFamily("xchanged_tasks_finished", "Tasks this node managed to an end since start",
                                       labels=["state"])
        for state in ("succeeded", "failed"):
            finished.add_metric([state], c.manager.get(state, 0))
        yield finished
        manager = CounterMetricFamily("xchanged_manager_events", "Manager events since start", labels=["event"])
        for event, n in sorted(c.manager.items()):
            manager.add_metric([event], n)
        yield manager
        drops = CounterMetricFamily("xchanged_frames_dropped", "Peer frames dropped, by reason", labels=["reason"])
        for reason, n in sorted(c.frames_dropped.items()):
            drops.add_metric([reason], n)
        yield drops
        health = GaugeMetricFamily("xchanged_peers", "Known peers, by health", labels=["health"])
        for h in ("alive", "suspect", "dead"):
            health.add_metric([h], c.peers_by_health.get(h, 0))
        yield health
        yield GaugeMetricFamily("xchanged_slots", "Task slots of this node", value=c.slots)
        yield GaugeMetricFamily("xchanged_slots_free", "Free task slots of this node", value=c.slots_free)
        yield GaugeMetricFamily("xchanged_running", "Attempts whose process runs on this node", value=c.started)
        yield GaugeMetricFamily("xchanged_queued", "Accepted attempts waiting on this node for a slot",
                                value=c.queued)
        yield CounterMetricFamily("xchanged_attempts_completed", "Attempts this node ran to an end",
                                  value=c.attempts_completed)
        yield CounterMetricFamily("xchanged_audit_forks", "Peers whose audit log was found rewritten (forked)",
                                  value=c.audit_forks)


class MetricsServer:
    """The running /metrics endpoint: an HTTP server in a thread of its own."""

    def __init__(self, server, thread: threading.Thread):
        self.server, self.thread = server, thread

    def close(self) -> None:
        """Stop serving, close the listening socket and wait for the thread to end."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve_metrics(listen: str, get_counters: Callable[[], Counters | None]) -> MetricsServer | None:
    """Start the /metrics endpoint (None when disabled, or when it cannot listen: that is logged)."""
    if not listen:
        return None
    host, port = parse_host_port(listen)
    registry = CollectorRegistry()
    registry.register(NodeCollector(get_counters))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics endpoint %s unavailable: %s", listen, exc)
        return None
    return MetricsServer(server, thread)
