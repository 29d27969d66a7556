"""What an operator does to a running node: reload its settings, drain it, undrain it.

Rules:
- Reload (`SettingsChanged`): every setting the core holds takes its new value at once (labels,
  slots, allow-list, prefetch, bidding and gossip timings, static seeds); the node's name and address
  are kept (they need a restart). Nothing that runs or waits is touched: fewer slots than attempts
  running means no new work until they drain below the new count; bids beyond the new room lapse;
  queued attempts beyond a smaller prefetch are handed back. Peers see the change in our next load
  signal (labels and slots are a material change: it is sent at the next gossip round).
- Drain (`DrainChanged(True)`): the contractor refuses every cfp and award (code `draining`), hands
  back the attempts waiting in its local queue (their managers re-award them at once), and lets the
  running ones finish; our load says `draining` and offers no slot, so managers (ours included) stop
  asking. A fresh load goes to every live peer at once rather than at the next round. Undrain is
  the reverse. The manager side is not affected: the node's own tasks still go to other nodes.
- A draining node coordinates no new composite either (a composite's cfp or award is refused with
  `draining`); the coordinations it runs go on, like running attempts.
- A stopping daemon past its grace (`HandBackRunning`) hands back the running attempts too, killing
  their processes, so their managers re-award them now instead of after a restart or a death.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .codec import Envelope
from .contractor import ContractorSettings
from .effects import Log, Send
from .messages import Award, Cfp, RefusalCode, Refuse, Reject
from .negotiation import ManagerSettings

if TYPE_CHECKING:
    from .node import Node, NodeSettings


def manager_settings(node_id: str, s: NodeSettings) -> ManagerSettings:
    """The manager's settings derived from the node's (as Node.__init__ derives them)."""
    return ManagerSettings(node_id, s.bid_window, s.award_timeout,
                           heartbeat_timeout=max(3 * s.heartbeat, s.gossip.dead_after) + 1.0,
                           max_candidates=s.max_candidates, direct_award=s.direct_award,
                           finished_retention=s.finished_retention)


def contractor_settings(node_id: str, s: NodeSettings) -> ContractorSettings:
    """The contractor's settings derived from the node's (as Node.__init__ derives them)."""
    return ContractorSettings(node_id, s.slots, dict(s.labels), s.overload_cpu_percent, tuple(s.allow), s.heartbeat,
                              reservation_ttl=s.bid_window + 2 * s.award_timeout + 1.0, prefetch=s.prefetch)


def reconfigure(node: Node, new: NodeSettings, seeds: tuple[str, ...], now: float) -> None:
    old = node.settings
    settings = dataclasses.replace(new, name=old.name, address=old.address)
    changed = sorted(f.name for f in dataclasses.fields(settings)
                     if getattr(settings, f.name) != getattr(old, f.name))
    node.settings = settings
    node.membership.settings = settings.gossip
    node.manager.settings = manager_settings(node.id, settings)
    node.manager.index.retention = settings.finished_retention
    node.contractor.reconfigure(contractor_settings(node.id, settings), now)
    node.coordinator.max_coordinations, node.coordinator.heartbeat = settings.max_coordinations, settings.heartbeat
    node.view.query_timeout = settings.query_timeout
    membership = node.membership
    for address in [a for a, source in membership.seeds.items() if source == "seed" and a not in seeds]:
        del membership.seeds[address]
    for address in seeds:
        membership.add_seed(address, "seed")
    node.out.emit(Log, level="info", text="settings reloaded" + (f": {', '.join(changed)} changed" if changed
                                                                  else ", nothing changed"))


def set_draining(node: Node, draining: bool, now: float) -> None:
    contractor = node.contractor
    if draining == contractor.draining:
        return
    if draining:
        contractor.drain(now)
    else:
        contractor.draining = False
    running = contractor.started
    node.out.emit(Log, level="warning" if draining else "info",
                  text=(f"draining: taking no new work; {running} attempts running here will finish"
                        if draining else "undrained: taking work again"))
    targets = tuple((p.id, p.address) for p in node.membership.live_peers() if p.address)
    if targets:
        node.out.emit(Send, targets=targets, message=node.load_signal(now))


def refused_while_draining(node: Node, env: Envelope) -> bool:
    """A composite's cfp, or an award of a composite we do not coordinate yet, while we drain: refused
    (code `draining`), and True; else False (the coordinator takes it)."""
    msg = env.message
    if not node.contractor.draining:
        return False
    if isinstance(msg, Award) and (env.sender, msg.task_id) in node.coordinator.coordinations:
        return False
    answer = Refuse if isinstance(msg, Cfp) else Reject
    node.contractor.refusals[RefusalCode.DRAINING] += 1
    node.out.emit(Send, targets=((env.sender, node.lookup(env.sender)[0]),),
                  message=answer(msg.task_id, msg.attempt, RefusalCode.DRAINING, "the node is draining"))
    return True


def totals(node: Node) -> dict[str, dict[str, int]]:
    """The running totals a driver saves and hands back at the next start (StateRecovered.totals)."""
    c = node.contractor
    return {"manager": {k: int(v) for k, v in node.manager.stats.items()},
            "contractor": {"completed": c.completed, "failed_runs": c.failed_runs, "run_ms": c.run_ms}}


def restore_totals(node: Node, saved: dict[str, Any]) -> None:
    for key, value in (saved.get("manager") or {}).items():
        if isinstance(value, int):
            node.manager.stats[key] += value
    contractor = saved.get("contractor") or {}
    c = node.contractor
    c.completed += int(contractor.get("completed", 0))
    c.failed_runs += int(contractor.get("failed_runs", 0))
    c.run_ms += int(contractor.get("run_ms", 0))
