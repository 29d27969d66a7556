"""The daemon: one asyncio loop that feeds inputs to the protocol Node and carries out its effects.

    inputs (peer frames, control requests, process exits, resource readings, timers)
        -> Node.handle(event, now) -> effects -> perform, in order -> re-arm the timer

Durability rule: a store write or audit append staged by an effect is written (it survives a crash
of the daemon) before the next effect that depends on it is carried out: a message to a peer, a
reply to a client, or the start of a process; writes the core marks AFTER (write-behind) right
after the batch's effects. Everything written is fsynced (survives power loss) within SYNC_INTERVAL
by a worker thread, so the event loop never waits on the disk (disk_sync.py).

Around the loop, each in a module of its own: what each effect does (effect_handlers.py), peer
frames in and out (peer_frames.py), peers' keys, seeds and trust files (peer_keys.py), group fsync
and audit heads (disk_sync.py), control requests (control.py), reload, drain and stop (operations.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import Config, format_address, parse_address, parse_host_port
from ..config_check import ConfigRejected
from ..protocol import codec
from ..protocol.events import (
    AuditHeadSigned,
    CertificateLoaded,
    DrainChanged,
    ResourcesRead,
    SeedConfigured,
    StateRecovered,
)
from ..protocol.inbound import FrameGate
from ..protocol.node import Node
from ..protocol.signing import load_private_key, node_id, public_bytes
from . import cgroups, figures, views
from .audit import AuditCorrupted, AuditError, AuditLog
from .autoscale import AutoscaleHooks
from .clock import wall_ms
from .confine import TaskPolicy
from .control import Control
from .curve import curve_keypair
from .discovery import Discovery, first_ipv4, interface_ip
from .disk_sync import DiskSync
from .effect_handlers import build_driver
from .executor import Executor, kill_orphans
from .inflow import Inflow
from .operations import Operations, node_settings
from .optional import TokenError, read_token, serve_metrics, start_http
from .peer_frames import PeerFrames
from .peer_keys import PeerKeys, SeedKeyError
from .ratelimit import RateLimitedLog
from .resources import ResourceReader
from .samples import History
from .store import Store
from .systemd import notify as _sd_notify
from .transport import ControlServer, PeerTransport
from .trust import Trust, TrustFileError

if TYPE_CHECKING:
    from .http_api import HttpServer
    from .metrics import MetricsServer

log = logging.getLogger("xchanged")
RESOURCE_INTERVAL = 1.0
MAX_INPUTS = 100_000
QUEUE_FULL_REPORT = 5.0  # seconds: at most one "input queue full" line per this
MAX_BATCH = 256          # inputs handled per group commit
VALIDATE = os.environ.get("XCHANGED_VALIDATE") == "1"   # check the core's invariants after every batch
                                                        # (the chaos soak sets it; tests/protocol do it always)


class DaemonError(Exception):
    """The daemon cannot start, or had to stop (the message says why; `xchanged run` exits 1)."""


def advertised_address(config: Config, port: int) -> str:
    """The host:port peers dial: `[network] advertise` (a bare host gets the listen port), else the
    listen address when it is a specific one, else the first non-loopback IPv4 address."""
    if config.network.advertise:
        host, given = parse_address(config.network.advertise, port)
        return format_address(host, given or port)
    host, _ = parse_host_port(config.network.listen)
    if host not in ("0.0.0.0", "::", ""):
        return format_address(host, port)
    return f"{first_ipv4()}:{port}"


class Daemon:
    def __init__(self, config: Config, log_level: str | None = None):
        self.config = config
        self.forced_log_level = log_level          # `xchanged run -v`: wins over [node] log_level, reloads too
        try:
            self.http_token = read_token(config.http)     # before anything opens: a bad token file stops us
        except TokenError as exc:
            raise DaemonError(f"refusing to start: {exc}") from None
        self.key = load_private_key(config.node.key_file.read_bytes())
        self.public_key = public_bytes(self.key)
        self.id = node_id(self.public_key)
        try:
            self.trusted = Trust(config.trust, self.public_key, config.node.name)
        except TrustFileError as exc:
            raise DaemonError(f"refusing to start: {exc}") from None
        self.trust = self.trusted.store                 # shared with the gate and discovery, changed in place
        self.keys = PeerKeys(self.trusted, self.put, lambda: self.node is not None)
        n = config.network
        self.inflow = Inflow(n.peer_rate, n.peer_burst, n.peer_queue, n.stranger_rate)
        self.policy = TaskPolicy(config.executor, config.node.state_dir)
        if why := self.policy.check_config():
            raise DaemonError(f"refusing to start: {why}")
        config.node.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.node.state_dir / "xchanged.db")
        self.store.defer_sync = True              # submit/cancel replies wait for an fsync off the loop
        previous = int(self.store.get_meta("incarnation") or 0)
        self.incarnation = max(previous + 1, wall_ms())
        self.store.set_meta("incarnation", str(self.incarnation))
        self.encoder = codec.Encoder(self.key, self.public_key, self.incarnation)
        self.gate = FrameGate(self.trust, self.trusted.vouch)
        self.inputs: asyncio.Queue = asyncio.Queue(MAX_INPUTS)
        self.queue_full = RateLimitedLog(log, logging.ERROR, "input queue full", QUEUE_FULL_REPORT)
        self.transport: PeerTransport | None = None
        self.peers: PeerFrames | None = None      # frames in and out, once the transport listens
        self.control = Control(self)
        self.control_server: ControlServer | None = None
        self.executor: Executor | None = None
        self.cgroup_status = ""
        self.node: Node | None = None
        self.address = ""
        self.started = time.monotonic()
        self.finished_in_batch: list[dict] = []   # task documents gone terminal in this batch
        self._stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None   # the running loop (figures.py asks it for snapshots)
        self.ready = asyncio.Event()              # set once every socket answers (in-process users wait on it)
        self._tasks: list[asyncio.Task] = []
        self.audit: AuditLog = self._open_audit()
        self.failure: Exception | None = None     # why the daemon stopped itself (a failed write or fsync)
        self.metrics: MetricsServer | None = None
        self.discovery: Discovery | None = None
        self.history = History()                  # the last minutes of cluster load (the dashboard's chart)
        self.http: HttpServer | None = None       # [http]: the dashboard and JSON API, on this loop
        self.ops = Operations(self)                # reload, drain, graceful stop, watchdog, history
        self.autoscale = AutoscaleHooks(self)
        # Called with the new Config at each reload, before anything is applied; one that raises
        # config_check.ConfigRejected rejects the reload (the trust store of issue 16 hooks in here).
        self.reload_hooks: list[Any] = [self.keys.trust_hook, self.keys.seeds_hook, self._reload_policy_hook]

    # -- lifecycle ------------------------------------------------------------------------------

    def _open_audit(self) -> AuditLog:
        path = self.config.audit.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return AuditLog(path, self.key, self.id, logger=log)
        except AuditCorrupted as exc:
            self.store.close()
            raise DaemonError(
                f"refusing to start: {exc}. Nothing was changed; inspect it with `xchanged audit verify "
                f"{exc.path}`, and keep the file as evidence (move it aside to start a new log).") from None
        except (AuditError, OSError) as exc:
            self.store.close()
            raise DaemonError(f"refusing to start: cannot open the audit log {path}: {exc}") from None

    def _sign_head(self) -> None:
        """At start: flush and sign every record (nothing else touches the log yet)."""
        head = self.audit.head
        if head is None or head.size != self.audit.size:
            head = self.audit.sign_head(wall_ms())
        self._handle(AuditHeadSigned(head.to_dict()))

    def _fail(self, exc: Exception) -> None:
        log.critical("stopping: writing to disk failed: %s", exc)
        self.failure = exc
        self._stopping.set()

    def _build_node(self) -> Node:
        return Node(self.id, node_settings(self.config, self.address, self.policy.vet), random.Random(os.urandom(16)))

    def apply_log_level(self) -> None:
        level = self.forced_log_level or self.config.node.log_level
        logging.getLogger("xchanged").setLevel(level.upper())

    async def run(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        _watch_children_with_pidfds(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.ops.request_stop)          # drain, grace, hand back, stop
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)    # systemctl reload sends it
        self.apply_log_level()
        curve = None if self.config.network.insecure else curve_keypair(self.key)
        self.transport = PeerTransport(self.config.network.listen, curve=curve, zap_decide=self.trusted.zap)
        self.transport.start()
        self.address = advertised_address(self.config, self.transport.port)
        self.peers = PeerFrames(self.transport, self.address, self.id, self.public_key, self.encoder, self.inflow,
                                self.gate, self.keys, self.inputs, self.put)
        self.node = self._build_node()
        self.driver = build_driver(self)
        self._sign_head()
        self._handle(CertificateLoaded(self.trusted.own_cert))
        tree, why = cgroups.detect(self.config.executor.cgroup)
        if tree is None:
            log.info("no cgroup per task (%s): memory limits enforced by rlimits and RSS watching", why)
        else:
            log.info("a cgroup per task under %s", tree.root)
        self.cgroup_status = str(tree.root) if tree is not None else f"none: {why}"
        self.executor = Executor(self.put, self.config.executor.max_output, self.config.executor.kill_grace,
                                 stream_interval=self.config.executor.stream_interval,
                                 scratch=self.config.node.state_dir / "scratch", policy=self.policy, cgroups=tree)
        self.resources = ResourceReader()
        self._handle(ResourcesRead(await asyncio.to_thread(self.resources.read)))
        tasks = [dict(d, parts_done=self.store.parts(d["id"])) if d.get("composite") else d
                 for d in self.store.unfinished_tasks()]         # a composite's reported parts come back with it
        if self.ops.drained_before():
            log.warning("this node was drained (xchanged drain): it takes no work until `xchanged undrain`")
            self._handle(DrainChanged(True))       # before the recovered tasks: none is awarded here
        self._handle(StateRecovered(tasks, self._recover_attempts(),
                                    self.store.audit_heads({node_id(k) for k in self.trust.keys}),
                                    self.store.reputation(), self.store.totals()))
        for address, key in self.seeds():
            self._handle(SeedConfigured(address, key))
        self.control_server = ControlServer(self.config.network.control, self.control.handle)
        await self.control_server.start()
        self.metrics = serve_metrics(self.config.metrics.listen, self.figures)
        self.http = await start_http(self)
        if self.config.network.mdns:
            await self._start_discovery()
        disk_sync = DiskSync(self.store, self.audit, self.config.gossip.interval, self.put, self._fail)
        self._tasks = [loop.create_task(self.peers.receive()), loop.create_task(self._read_resources()),
                       loop.create_task(disk_sync.run()), loop.create_task(self.history.run(self)),
                       loop.create_task(self.ops.watchdog()), loop.create_task(self.ops.prune_history()),
                       loop.create_task(self.ops.keep_totals()), loop.create_task(self.autoscale.run())]
        log.info("xchanged %s node %s (%s) listening on %s, control %s", __version__, self.config.node.name,
                 self.id, self.address, self.config.network.control)
        _sd_notify("READY=1")
        self.ready.set()
        try:
            await self._main_loop()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        _sd_notify("STOPPING=1")
        self.queue_full.flush(float("inf"))            # inputs dropped since the last line, said once more
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.control.replies_synced()            # replies owed an fsync: on disk first
        await self.autoscale.close()
        if self.node is not None:
            self.ops.save_totals()
        if self.discovery is not None:
            await self.discovery.close()
        if self.http is not None:
            await self.http.close()
        if self.control_server:
            await self.control_server.close()
        await self.control.cluster.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.executor:
            await self.executor.close()
        if self.transport:
            await self.transport.stop()
            self.transport.close()
        self.resources.close()
        self.store.close()
        if self.audit is not None:
            self.audit.close()
        log.info("stopped")

    def stop(self) -> None:
        self._stopping.set()

    def figures(self) -> views.Figures | None:
        """(Another thread: the metrics server.) The core's counters and the daemon's own (figures.py)."""
        return figures.snapshot(self)

    def runtime_figures(self) -> dict[str, Any]:
        """The daemon's own counts, for `stats` (figures.py)."""
        return figures.runtime_figures(self)

    def _reload_policy_hook(self, new: Config) -> None:
        """A reload hook: a run_as that cannot work here rejects the reload (as it stops a start)."""
        if why := TaskPolicy(new.executor, new.node.state_dir).check_config():
            raise ConfigRejected(why)

    def seeds(self, config: Config | None = None, learn: bool = True) -> list[tuple[str, bytes | None]]:
        """(address, node key) of each seed of `config` (default: ours), the keys learnt with `learn`
        (peer_keys.py); DaemonError for a key that names no one."""
        try:
            return self.keys.seeds(config or self.config, learn)
        except SeedKeyError as exc:
            raise DaemonError(str(exc)) from None

    def _reload_on_signal(self) -> None:
        if self.node is None:
            log.warning("SIGHUP while starting: the config just read stands; reload again once started")
            return
        try:
            self.ops.reload()
        except ConfigRejected as exc:
            log.error("reload rejected, the daemon keeps its config: %s", exc)

    async def _main_loop(self) -> None:
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                timeout = max(0.0, self.node.next_deadline() - time.monotonic())
                get = asyncio.ensure_future(self.inputs.get())
                done, _ = await asyncio.wait({get, stop_wait}, timeout=min(timeout, 3600.0),
                                             return_when=asyncio.FIRST_COMPLETED)
                batch = []
                if get in done:
                    batch.append(get.result())
                    while len(batch) < MAX_BATCH and not self.inputs.empty():
                        batch.append(self.inputs.get_nowait())
                else:
                    get.cancel()
                self._handle_batch(batch)
        finally:
            stop_wait.cancel()

    def put(self, event: Any) -> None:
        """Queue an input for the loop (peer frames, process exits, control requests, readings)."""
        try:
            self.inputs.put_nowait(event)
        except asyncio.QueueFull:
            self.queue_full.hit(type(event).__name__, time.monotonic())

    # -- inputs ---------------------------------------------------------------------------------

    async def _read_resources(self) -> None:
        while True:
            await asyncio.sleep(RESOURCE_INTERVAL)
            self.put(ResourcesRead(await asyncio.to_thread(self.resources.read)))
            self.queue_full.flush(time.monotonic())     # drops counted since the last line, if any
            self.keys.check_files()

    # -- the core and its effects ---------------------------------------------------------------

    def _handle(self, event: Any) -> None:
        self.driver.batch([event])

    def handle_now(self, event: Any) -> None:
        """Feed one input at once, ahead of the queue (an operator's reload or drain), as one batch."""
        self._handle_batch([event])

    def _handle_batch(self, events: list[Any]) -> None:
        """One batch through the shared driver loop (driver.py): the core sees every input, pumps once,
        and its decisions are written before anything outside this process sees them; the worker
        thread of disk_sync.py puts them on disk within SYNC_INTERVAL. Then the clients waiting
        for a task that finished are answered."""
        self.driver.batch(events)
        if self.store.sync_owed:
            self.control.sync_then_reply()
        self.peers.inputs_taken()
        if VALIDATE:
            self.node.validate_state()
        self.ops.after_batch()
        finished, self.finished_in_batch = self.finished_in_batch, []
        for doc in finished:
            for future in self.control.waiters.pop(doc["id"], []):
                if not future.done():
                    future.set_result(doc)

    def _recover_attempts(self) -> list[dict]:
        """The contractor's attempts from before a restart, after killing what is left of their
        processes (so an attempt reported lost cannot still finish and cause a second side effect)."""
        attempts = self.store.attempts()
        killed = kill_orphans(self.id, attempts)
        for doc in attempts:
            note = killed.get((doc["task_id"], doc["attempt"]))
            if note and doc["state"] == "running":
                doc["orphan"] = note
        for task_id, attempt in killed:
            log.warning("killed an orphaned process of attempt %s/%s left by the previous run", task_id, attempt)
        return attempts

    async def _start_discovery(self) -> None:
        """mDNS: announce ourselves, turn trusted services into seeds (never fatal: logs and goes on)."""
        def on_peer(address: str, public_key: bytes) -> None:
            self.keys.learn(address, public_key)
            self.put(SeedConfigured(address, public_key, source="mdns"))

        discovery = Discovery(self.id, self.public_key, self.config.node.name, self.address,
                              interface_ip(self.config.network.listen), self.trust, on_peer,
                              cert=self.trusted.own_cert, vouch=self.trusted.vouch)
        try:
            await discovery.start()
        except (OSError, ValueError) as exc:
            log.warning("mDNS discovery unavailable: %s", exc)
            await discovery.close()
            return
        self.discovery = discovery


def _watch_children_with_pidfds(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.11 waits for each child process in a thread of its own (ThreadedChildWatcher): a thread
    started and joined per task. A pidfd watcher waits on the loop itself (3.12 picks it by default)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:                          # an old kernel: keep the threaded watcher
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.get_event_loop_policy().set_child_watcher(watcher)


def run_daemon(config: Config, log_level: str | None = None) -> None:
    """Run until stopped; DaemonError when it cannot start or had to stop (a failed write or fsync)."""
    daemon = Daemon(config, log_level)
    try:
        asyncio.run(daemon.run())
    except AuditError as exc:           # raised while carrying out effects: nothing after it was done
        log.critical("stopped: the audit log failed: %s", exc)
        raise DaemonError(f"stopped: the audit log failed: {exc}") from None
    if daemon.failure is not None:
        raise DaemonError(f"stopped: writing to disk failed: {daemon.failure}")