"""Prometheus metrics, read from the node's state at scrape time (no second set of counters to keep).

Served on `[metrics] listen` (default 127.0.0.1:9464; "" disables) at /metrics. The HTTP server runs
in a thread of its own, so it never reads the node: at each scrape it asks for a snapshot of the
core's counters and the daemon's own (`views.Figures`), which the daemon takes on its event loop
(`Daemon.figures`).

Histograms (seconds; observe.py): xchanged_queue_wait_seconds, xchanged_bid_window_seconds,
xchanged_award_to_start_seconds, xchanged_run_time_seconds. Counters: xchanged_refusals{reason} (cfps
refused and awards rejected here), xchanged_gossip_bytes{direction}, xchanged_reloads{result},
xchanged_drains{action}, xchanged_history_pruned, xchanged_autoscale{direction,outcome}.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ..config import parse_host_port
from ..protocol.readout import Counters
from .views import Figures

TIMING_HELP = {
    "queue_wait": "Time from a task's (re)queueing to the start of the attempt that runs it",
    "bid_window": "How long a bidding round stayed open",
    "award_to_start": "Time from an award to the start of its process",
    "run_time": "Run time of attempts that exited or timed out",
}

log = logging.getLogger(__name__)


class NodeCollector:
    """Turns a counters snapshot into metric families; `get_counters` returns None when there is none
    to be had (the node is not built yet, or the loop did not answer in time): the scrape is empty."""

    def __init__(self, get_counters: Callable[[], Figures | Counters | None]):
        self.get_counters = get_counters

    def collect(self) -> Iterable:
        got = self.get_counters()
        if got is None:
            return
        figures = got if isinstance(got, Figures) else Figures(got)
        c = figures.core
        yield from self._core(c)
        yield from self._timings(c)
        yield from self._runtime(figures.runtime)

    def _timings(self, c: Counters) -> Iterable:
        for name, view in c.timings.items():
            buckets = [(f"{bound:g}", n) for bound, n in zip(view.buckets, view.counts)] + [("+Inf", view.count)]
            yield HistogramMetricFamily(f"xchanged_{name}_seconds", TIMING_HELP.get(name, name), buckets=buckets,
                                        sum_value=view.total)
        refusals = CounterMetricFamily("xchanged_refusals", "Cfps refused and awards rejected by this node, by "
                                       "reason", labels=["reason"])
        for reason, n in sorted(c.refusals.items()):
            refusals.add_metric([reason], n)
        yield refusals
        yield GaugeMetricFamily("xchanged_draining", "1 while this node drains (takes no new work)",
                                value=int(c.draining))

    def _runtime(self, r: dict) -> Iterable:
        if not r:
            return
        yield from self._security(r.get("security"))
        gossip = CounterMetricFamily("xchanged_gossip_bytes", "Bytes of load and gossip frames", labels=["direction"])
        for direction, n in sorted(r.get("gossip_bytes", {}).items()):
            gossip.add_metric([direction], n)
        yield gossip
        reloads = CounterMetricFamily("xchanged_reloads", "Config reloads, by result", labels=["result"])
        for result, n in sorted(r.get("reloads", {}).items()):
            reloads.add_metric([result], n)
        yield reloads
        drains = CounterMetricFamily("xchanged_drains", "Drains and undrains of this node", labels=["action"])
        for action, n in sorted(r.get("drains", {}).items()):
            drains.add_metric([action], n)
        yield drains
        yield CounterMetricFamily("xchanged_history_pruned", "Finished tasks pruned from the store",
                                  value=r.get("history_pruned", 0))
        scale = CounterMetricFamily("xchanged_autoscale", "Autoscale decisions, by direction and what became of "
                                    "them (run here, left to the leader, ok, failed, timeout)",
                                    labels=["direction", "outcome"])
        for direction, outcomes in sorted(r.get("autoscale", {}).items()):
            for outcome, n in sorted(outcomes.items()):
                scale.add_metric([direction, outcome], n)
        yield scale

    def _core(self, c: Counters) -> Iterable:
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


    @staticmethod
    def _security(security: dict | None) -> Iterable:
        """The transport's defences (runtime/figures.py `security_doc`): ZAP refusals, connection events, per-peer
        queues, peers trusted by certificate (docs/security.md)."""
        if not security:
            return
        denied = CounterMetricFamily("xchanged_zap_denied", "Peer connections refused by ZAP, by reason",
                                     labels=["reason"])
        for reason, n in sorted(security["zap_denied"].items()):
            denied.add_metric([reason], n)
        yield denied
        events = CounterMetricFamily("xchanged_peer_connection_events", "Peer socket connection events "
                                     "(handshakes failed or refused, disconnections)", labels=["event"])
        for event, n in sorted(security["connections"].items()):
            events.add_metric([event], n)
        yield events
        yield GaugeMetricFamily("xchanged_peer_queue_frames", "Peer frames waiting in the per-peer queues",
                                value=security["peer_queue"]["frames"])
        yield GaugeMetricFamily("xchanged_trusted_certified_peers", "Peers trusted by a CA certificate",
                                value=security["trust"]["certified"])


class MetricsServer:
    """The running /metrics endpoint: an HTTP server in a thread of its own."""

    def __init__(self, server, thread: threading.Thread):
        self.server, self.thread = server, thread

    def close(self) -> None:
        """Stop serving, close the listening socket and wait for the thread to end."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve_metrics(listen: str, get_counters: Callable[[], Figures | Counters | None]) -> MetricsServer | None:
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
