"""Autoscale hooks: the daemon's side of protocol/autoscale.py. Every AUTOSCALE_TICK it hands the
decision the cluster as this node sees it; when this node is the one to act, it runs the configured
command as a subprocess, off the event loop, killed after `[autoscale] timeout`.

Every decision is logged and counted (by direction and what became of it: `run` here, `left` to the
leader, then `ok`, `failed` or `timeout` for a hook that ran). A hook's environment says why:

    XCHANGED_SCALE          up | down
    XCHANGED_BACKLOG        tasks waiting cluster-wide
    XCHANGED_UTILIZATION    busy share of the serving slots, percent
    XCHANGED_NODES          healthy nodes
    XCHANGED_REMOVE_NODE, XCHANGED_REMOVE_ID, XCHANGED_REMOVE_ADDRESS   (down) the idle node to remove
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections import Counter
from typing import TYPE_CHECKING

from ..config import AutoscaleConfig
from ..protocol import readout
from ..protocol.autoscale import DOWN, Agent, Autoscaler, AutoscaleSettings, Decision
from .executor import task_environment

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("xchanged.autoscale")
AUTOSCALE_TICK = 1.0            # seconds between looks at the cluster


def settings_of(config: AutoscaleConfig) -> AutoscaleSettings:
    return AutoscaleSettings(config.backlog_up, config.utilization_up, config.utilization_down, config.hold,
                             config.cooldown, config.min_nodes, up=bool(config.scale_up),
                             down=bool(config.scale_down))


def agents(peers: list[readout.PeerView]) -> list[Agent]:
    """The healthy nodes (ourselves first) as the decision sees them."""
    return [Agent(p.id, p.name, p.address, p.load.slots, p.load.running, p.load.queued, p.load.draining)
            for p in peers if p.health == "alive" and p.load is not None]


class AutoscaleHooks:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.scaler = Autoscaler(daemon.id, settings_of(daemon.config.autoscale))
        self.counts: Counter[tuple[str, str]] = Counter()       # (direction, what became of it)
        self.running: set[asyncio.Task] = set()

    @property
    def enabled(self) -> bool:
        c = self.daemon.config.autoscale
        return bool(c.scale_up or c.scale_down)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(AUTOSCALE_TICK)
            self.tick(time.monotonic())

    def tick(self, now: float) -> Decision | None:
        if not self.enabled or self.daemon.node is None:
            return None
        self.scaler.settings = settings_of(self.daemon.config.autoscale)     # a reload may have changed it
        decision = self.scaler.observe(agents(readout.peers(self.daemon.node, now)), now)
        if decision is not None:
            self._decided(decision)
        return decision

    def _decided(self, d: Decision) -> None:
        why = f"backlog {d.backlog}, utilisation {d.utilization:g}%, {d.nodes} nodes"
        if d.remove is not None:
            why += f"; remove {d.remove.name} ({d.remove.id})"
        if not d.act:
            self.counts[(d.direction, "left")] += 1
            log.info("autoscale: scale %s decided (%s); node %s runs the hook", d.direction, why, d.leader)
            return
        self.counts[(d.direction, "run")] += 1
        c = self.daemon.config.autoscale
        command = c.scale_up if d.direction != DOWN else c.scale_down
        log.warning("autoscale: scale %s (%s): running %s", d.direction, why, command)
        task = asyncio.get_running_loop().create_task(self._run_hook(d, shlex.split(command), c.timeout))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run_hook(self, d: Decision, argv: list[str], timeout: float) -> None:
        env = task_environment(os.environ)
        env.update(XCHANGED_SCALE=d.direction, XCHANGED_BACKLOG=str(d.backlog),
                   XCHANGED_UTILIZATION=f"{d.utilization:g}", XCHANGED_NODES=str(d.nodes))
        if d.remove is not None:
            env.update(XCHANGED_REMOVE_NODE=d.remove.name, XCHANGED_REMOVE_ID=d.remove.id,
                       XCHANGED_REMOVE_ADDRESS=d.remove.address)
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self.counts[(d.direction, "failed")] += 1
            log.error("autoscale: scale %s hook could not start: %s", d.direction, exc)
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            self.counts[(d.direction, "timeout")] += 1
            log.error("autoscale: scale %s hook killed after %gs", d.direction, timeout)
            return
        except asyncio.CancelledError:               # the daemon stops: do not leave it running
            proc.kill()
            await proc.wait()
            raise
        outcome = "ok" if proc.returncode == 0 else "failed"
        self.counts[(d.direction, outcome)] += 1
        tail = out.decode(errors="replace").strip()[-500:]
        log.log(logging.INFO if outcome == "ok" else logging.ERROR, "autoscale: scale %s hook exited %s%s",
                d.direction, proc.returncode, f": {tail}" if tail else "")

    async def close(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)

    def doc(self) -> dict:
        """Counts for stats and metrics: {direction: {outcome: n}}."""
        out: dict[str, dict[str, int]] = {}
        for (direction, outcome), n in sorted(self.counts.items()):
            out.setdefault(direction, {})[outcome] = n
        return out
