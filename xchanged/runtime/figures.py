"""The daemon's figures, for `stats` and /metrics: the core's counters (views.py) with the frames
dropped before the core (inflow.py), the daemon's own counts (reloads, drains, history, autoscale,
gossip bytes) and what the transport's defences saw (`security`, docs/security.md).

Rule: the core is read on the event loop only. A metrics scrape runs in another thread, so it asks
the loop for a snapshot between two batches and waits at most COUNTERS_WAIT seconds for it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import TYPE_CHECKING, Any

from . import views

if TYPE_CHECKING:
    from .daemon import Daemon

COUNTERS_WAIT = 5.0      # seconds a metrics scrape waits for the loop to take a snapshot


def snapshot(daemon: Daemon) -> views.Figures | None:
    """(Another thread: the metrics server.) A snapshot of the core's counters and the daemon's
    own, taken on the event loop between two batches; None when there is no node yet or the loop
    does not answer within COUNTERS_WAIT seconds."""
    loop = daemon.loop
    if loop is None or daemon.node is None:
        return None
    answer: concurrent.futures.Future = concurrent.futures.Future()

    def take() -> None:
        try:
            counters = views.counters(daemon.node)         # with the frames dropped before the core (inflow.py)
            counters = dataclasses.replace(counters, frames_dropped={**counters.frames_dropped,
                                                                     **daemon.inflow.drops})
            answer.set_result(views.Figures(counters, runtime_figures(daemon)))
        except Exception as exc:          # handed to the scrape, which logs it; the loop goes on
            answer.set_exception(exc)
    try:
        loop.call_soon_threadsafe(take)
        return answer.result(COUNTERS_WAIT)
    except (RuntimeError, concurrent.futures.TimeoutError):     # loop closed, or busy for too long
        return None


def runtime_figures(daemon: Daemon) -> dict[str, Any]:
    """The daemon's own counts (not the core's): reloads, drains, history, autoscale, gossip bytes,
    and what the transport's defences saw (`security`)."""
    return dict(daemon.ops.doc(), autoscale=daemon.autoscale.doc(), gossip_bytes=dict(daemon.peers.gossip_bytes),
                security=security_doc(daemon))


def security_doc(daemon: Daemon) -> dict:
    """What the transport's defences saw (the `security` part of `stats`; docs/security.md)."""
    t = daemon.transport
    if t is None:
        return {}
    return {"transport": "insecure" if t.curve is None else "curve",
            "zap_allowed": t.zap.allowed if t.zap else 0, "zap_denied": dict(t.zap.denied) if t.zap else {},
            "connections": dict(t.connection_events), "send_no_key": t.no_key,
            "peer_queue": {"frames": len(daemon.inflow), "bytes": daemon.inflow.bytes_waiting},
            "trust": daemon.trusted.summary(), "task_cgroups": daemon.cgroup_status,
            "run_as": daemon.config.executor.run_as}
