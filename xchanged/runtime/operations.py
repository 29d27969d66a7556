"""Running a node in a fleet: reload, drain, a graceful stop, the systemd watchdog, history pruning,
and the totals that survive a restart. The daemon's side of protocol/operations.py.

Reload (SIGHUP, `systemctl reload`, `xchanged reload`): the config file is checked exactly as
`xchanged config check` checks it; a config that fails is rejected with the same one-line error and
nothing changes. Otherwise the reload hooks run (`Daemon.reload_hooks`, each given the new config;
one that raises ConfigRejected rejects the reload before anything is applied: the trust files,
runtime/trust.py, and the seeds' keys), then the new values are applied: the core's settings (an input,
`SettingsChanged`: labels, slots, allow-list, prefetch, bidding and gossip, seeds), the log level,
the executor's output cap and kill grace, the metrics endpoint, history and autoscale settings.
Keys that need a restart (RESTART_KEYS) keep their running value and are reported as such.

Drain: `xchanged drain` is persisted (a drained node stays drained across restarts until
`xchanged undrain`); the drain of a stopping daemon is not.

Stop (SIGTERM, SIGINT): drain, give running attempts `[node] stop_grace` to finish, then hand the
rest back (killed; their managers re-award them at once), wait up to HAND_BACK_WAIT for the managers
to acknowledge the results, and stop. A second signal stops at once. The results not acknowledged
are kept in the store and resent at the next start, like any other (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..config import SECTIONS, Config
from ..config_check import ConfigRejected, check_config
from ..protocol import readout
from ..protocol.events import DrainChanged, HandBackRunning, SettingsChanged
from ..protocol.membership import GossipSettings
from ..protocol.node import NodeSettings
from .optional import serve_metrics
from .store import PRUNE_BATCH
from .systemd import notify as _sd_notify

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("xchanged")

#: Keys a reload cannot change: they keep their running value until the daemon restarts.
RESTART_KEYS = ("node.name", "node.state_dir", "node.key_file", "network.listen", "network.advertise",
                "network.control", "network.mdns", "trust.authorized_keys", "audit.path", "http.listen",
                "http.token_file", "http.token_reads")
HAND_BACK_WAIT = 3.0            # seconds a stopping daemon waits for its handed-back results' acks
PRUNE_EVERY = (1.0, 60.0)       # seconds between pruning passes: history / 4, within these bounds
PRUNE_PAUSE = 0.05              # seconds between two batches of one pass
TOTALS_EVERY = 2.0              # seconds between saves of the running totals
DRAINED_KEY = "draining"        # store meta: "1" while `xchanged drain` holds


def node_settings(config: Config, address: str, vet: Any = None) -> NodeSettings:
    """The core's settings from a config (at start, and at each reload); `vet`: the task policy's
    check (confine.TaskPolicy.vet)."""
    c = config
    gossip = GossipSettings(c.gossip.interval, c.gossip.fanout, c.gossip.suspect_after, c.gossip.dead_after,
                            c.gossip.probe_k, view_size=c.gossip.view_size, sample_size=c.gossip.sample_size)
    return NodeSettings(
        name=c.node.name, address=address, slots=c.node.slots, labels=dict(c.node.labels),
        gossip=gossip, bid_window=c.bidding.window, award_timeout=c.bidding.award_timeout,
        max_candidates=c.bidding.max_candidates, overload_cpu_percent=c.bidding.overload_cpu_percent,
        allow=tuple(c.executor.allow), heartbeat=c.executor.heartbeat, prefetch=c.node.prefetch,
        max_coordinations=c.node.coordinations, query_timeout=c.network.query_timeout, vet=vet)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ."""
    out = []
    for name in SECTIONS:
        a, b = getattr(old, name), getattr(new, name)
        out += [f"{name}.{f.name}" for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    return out


def keep_running_values(old: Config, new: Config, keys: list[str]) -> Config:
    """`new` with the dotted `keys` set back to their values in `old`."""
    sections: dict[str, dict[str, Any]] = {}
    for key in keys:
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = getattr(getattr(old, section), name)
    return dataclasses.replace(new, **{s: dataclasses.replace(getattr(new, s), **v) for s, v in sections.items()})


class Operations:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.reloads = {"ok": 0, "rejected": 0}
        self.drains = {"drain": 0, "undrain": 0}
        self.stopping = False
        self.pruned = 0
        self._idle_waiters: list[asyncio.Future] = []
        self._acked_waiters: list[asyncio.Future] = []
        self._saved_totals: dict | None = None

    # -- reload -----------------------------------------------------------------------------------

    def reload(self) -> dict:
        """Re-read the config file and apply it; ConfigRejected (the daemon keeps its config) if it fails."""
        d = self.daemon
        _sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            if d.config.source is None:
                raise ConfigRejected("this daemon was not started from a config file: nothing to re-read")
            try:
                new = check_config(d.config.source)
                for hook in d.reload_hooks:            # e.g. the trust store (issue 16): may reject
                    hook(new)
            except ConfigRejected:
                self.reloads["rejected"] += 1
                raise
            return self._apply(new)
        finally:
            _sd_notify("READY=1")

    def _apply(self, new: Config) -> dict:
        d = self.daemon
        old = d.config
        changed = changed_keys(old, new)
        restart = [k for k in changed if k in RESTART_KEYS]
        new = keep_running_values(old, new, restart)
        notes = []
        if new.metrics.listen != old.metrics.listen:
            server = serve_metrics(new.metrics.listen, d.figures) if new.metrics.listen else None
            if new.metrics.listen and server is None:
                notes.append(f"metrics.listen: cannot serve {new.metrics.listen}; kept {old.metrics.listen!r}")
                new = keep_running_values(old, new, ["metrics.listen"])
            else:
                if d.metrics is not None:
                    d.metrics.close()
                d.metrics = server
        d.config = new
        d.apply_log_level()
        if d.executor is not None:
            d.executor.max_output, d.executor.kill_grace = new.executor.max_output, new.executor.kill_grace
        seeds = tuple(address for address, _ in d.seeds())    # KEY@host:port: the keys go to the transport
        d.policy.config = new.executor                       # run_as, env_allow, limits: for the next task
        d.handle_now(SettingsChanged(node_settings(new, d.address, d.policy.vet), seeds))
        self.reloads["ok"] += 1
        for key in restart:
            log.warning("reload: %s changed; it takes effect at the next restart", key)
        for note in notes:
            log.error("reload: %s", note)
        applied = [k for k in changed if k not in restart]
        log.info("reload: config %s re-read; %s", new.source, ", ".join(applied) + " applied" if applied
                 else "nothing to apply")
        return {"changed": applied, "restart_needed": restart, "notes": notes}

    # -- drain ------------------------------------------------------------------------------------

    def drain(self, persist: bool = True) -> None:
        d = self.daemon
        if persist:
            d.store.set_meta(DRAINED_KEY, "1")
        if not readout.occupancy(d.node).draining:
            self.drains["drain"] += 1
            d.handle_now(DrainChanged(True))

    def undrain(self) -> None:
        d = self.daemon
        if self.stopping:
            raise ConfigRejected("the daemon is stopping; it cannot take work again")
        d.store.set_meta(DRAINED_KEY, "0")
        if readout.occupancy(d.node).draining:
            self.drains["undrain"] += 1
            d.handle_now(DrainChanged(False))

    def drained_before(self) -> bool:
        return self.daemon.store.get_meta(DRAINED_KEY) == "1"

    def drain_doc(self) -> dict:
        occ = readout.occupancy(self.daemon.node)
        return {"draining": occ.draining, "running": occ.running, "queued": occ.queued, "idle": occ.idle,
                "stopping": self.stopping}

    async def wait_idle(self, timeout: float) -> bool:
        """Until nothing runs or waits here (True), or `timeout` seconds (False)."""
        return await self._wait(self._idle_waiters, lambda: readout.occupancy(self.daemon.node).idle, timeout)

    async def _wait(self, waiters: list[asyncio.Future], done: Any, timeout: float) -> bool:
        if done():
            return True
        future = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return done()
        finally:
            if future in waiters:
                waiters.remove(future)

    def after_batch(self) -> None:
        """(The daemon, after each batch.) Wake the waits whose condition now holds."""
        if self._idle_waiters and readout.occupancy(self.daemon.node).idle:
            self._wake(self._idle_waiters)
        if self._acked_waiters and readout.unacknowledged(self.daemon.node) == 0:
            self._wake(self._acked_waiters)

    @staticmethod
    def _wake(waiters: list[asyncio.Future]) -> None:
        for future in waiters:
            if not future.done():
                future.set_result(True)
        waiters.clear()

    # -- stopping ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM or SIGINT: a graceful stop; a second one stops at once."""
        d = self.daemon
        if self.stopping or d.node is None:
            log.warning("stopping now")
            d.stop()
            return
        self.stopping = True
        asyncio.get_running_loop().create_task(self._graceful_stop())

    async def _graceful_stop(self) -> None:
        d = self.daemon
        grace = d.config.node.stop_grace
        _sd_notify("STOPPING=1")
        self.drain(persist=False)
        occ = readout.occupancy(d.node)
        if not occ.idle:
            log.warning("stopping: %d attempts running here get %gs to finish", occ.running, grace)
            if not await self.wait_idle(grace):
                occ = readout.occupancy(d.node)
                log.warning("stopping: handing back %d running attempts to their managers", occ.running)
                d.handle_now(HandBackRunning(f"the node stopped ({grace:g}s grace)"))
        if readout.unacknowledged(d.node):
            await self._wait(self._acked_waiters, lambda: readout.unacknowledged(d.node) == 0, HAND_BACK_WAIT)
        d.stop()

    # -- background work --------------------------------------------------------------------------

    async def watchdog(self) -> None:
        """systemd's watchdog (WatchdogSec=): WATCHDOG=1 every half period, but only while the main
        loop still completes batches (it does at least every gossip interval), so a wedged loop is
        restarted."""
        usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return
        interval = int(usec) / 2e6
        seen = -1
        while True:
            batches = self.daemon.driver.batches
            if batches != seen:
                _sd_notify("WATCHDOG=1")
                seen = batches
            await asyncio.sleep(interval)

    async def prune_history(self) -> None:
        """Delete finished tasks past `[node] history` / `history_tasks`, a batch at a time, in a worker
        thread (store.prune), so the loop never waits on it."""
        while True:
            node = self.daemon.config.node
            cutoff = int(time.time() * 1000 - node.history * 1000) if node.history > 0 else None
            deleted = 0
            if cutoff is not None or node.history_tasks:
                deleted = await asyncio.to_thread(self.daemon.store.prune, cutoff, node.history_tasks)
            if deleted:
                self.pruned += deleted
                log.debug("history: pruned %d finished tasks", deleted)
            pause = node.history / 4 if node.history > 0 else PRUNE_EVERY[1]
            await asyncio.sleep(PRUNE_PAUSE if deleted >= PRUNE_BATCH else min(max(pause, PRUNE_EVERY[0]),
                                                                                PRUNE_EVERY[1]))

    def save_totals(self) -> None:
        """Stage the running totals when they changed (LAZY: committed with the next batch)."""
        totals = readout.totals(self.daemon.node)
        if totals != self._saved_totals:
            self.daemon.store.put_totals(totals)
            self._saved_totals = totals

    async def keep_totals(self) -> None:
        while True:
            await asyncio.sleep(TOTALS_EVERY)
            self.save_totals()

    def doc(self) -> dict:
        """Counts for stats and metrics."""
        return {"reloads": dict(self.reloads), "drains": dict(self.drains), "history_pruned": self.pruned}
