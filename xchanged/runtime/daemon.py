"""The daemon: one asyncio loop that feeds inputs to the protocol Node and carries out its effects.

    inputs (peer frames, control requests, process exits, resource readings, timers)
        -> Node.handle(event, now) -> effects -> perform, in order -> re-arm the timer

Durability rule: a store write or audit append staged by an effect is written (it survives a crash
of the daemon) before the next effect that depends on it is carried out: a message to a peer, a
reply to a client, or the start of a process; writes the core marks AFTER (write-behind) right
after the batch's effects. Everything written is fsynced (survives power loss) within SYNC_INTERVAL
by a worker thread, so the event loop never waits on the disk; a client's submit or cancel is
fsynced before its reply (protocol/effects.py: SYNC), also in a worker thread: the reply waits, the
loop does not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import Config, format_address, parse_address, parse_host_port, parse_seed
from ..config_check import ConfigRejected
from ..driver import Driver
from ..protocol import codec
from ..protocol.effects import (
    Audit,
    ForgetAttempt,
    KillTask,
    LiveOutput,
    Log,
    PersistAttempt,
    PersistAuditHead,
    PersistParts,
    PersistReputation,
    PersistTask,
    ProveAudit,
    Relay,
    Reply,
    Send,
    ServeQuery,
    StartTask,
    StoreOutput,
)
from ..protocol.events import (
    AuditHeadSigned,
    CertificateLoaded,
    DrainChanged,
    FrameDropped,
    Instant,
    MessageReceived,
    ResourcesRead,
    SeedConfigured,
    StateRecovered,
)
from ..protocol.inbound import FrameGate
from ..protocol.lifecycle import TERMINAL
from ..protocol.messages import AuditProof, to_body
from ..protocol.node import Node
from ..protocol.signing import PUBLIC_KEY_LEN, load_private_key, node_id, public_bytes
from . import cgroups, views
from .audit import AuditCorrupted, AuditError, AuditLog
from .autoscale import AutoscaleHooks
from .confine import TaskPolicy
from .control import Control
from .curve import curve_keypair
from .discovery import Discovery, first_ipv4, interface_ip
from .executor import Executor, kill_orphans
from .inflow import STRANGER, Inflow
from .operations import Operations, node_settings
from .optional import TokenError, read_token, serve_metrics, start_http
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
SYNC_INTERVAL = 0.1      # seconds: the longest a written decision waits to be fsynced
COUNTERS_WAIT = 5.0      # seconds a metrics scrape waits for the loop to take a snapshot
SERVE_FRAMES = 256       # peer frames taken from the per-peer queues (inflow.py) between two yields
INPUT_ROOM = MAX_INPUTS // 2   # peer frames wait in their per-peer queues while the input queue is this full
MAX_ADDRESS_KEYS = 65_536      # address -> node key learnt from loads (for seeds and relayed addresses)
VALIDATE = os.environ.get("XCHANGED_VALIDATE") == "1"   # check the core's invariants after every batch
                                                        # (the chaos soak sets it; tests/protocol do it always)


class DaemonError(Exception):
    """The daemon cannot start, or had to stop (the message says why; `xchanged run` exits 1)."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


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


GOSSIP_TYPES = ("load", "gossip")


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
        self.address_keys: dict[str, bytes] = {}        # peer address -> its node key (seeds, loads)
        n = config.network
        self.inflow = Inflow(n.peer_rate, n.peer_burst, n.peer_queue, n.stranger_rate)
        self.policy = TaskPolicy(config.executor, config.node.state_dir)
        if why := self.policy.check_config():
            raise DaemonError(f"refusing to start: {why}")
        self._room = asyncio.Event()                    # set when the input queue has room for peer frames
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
        self.control = Control(self)
        self.control_server: ControlServer | None = None
        self.executor: Executor | None = None
        self.cgroup_status = ""
        self.node: Node | None = None
        self.address = ""
        self.started = time.monotonic()
        self._finished: list[dict] = []            # task documents gone terminal in this batch
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self.reload_hooks: list[Any] = [self._reload_trust_hook, self._reload_seeds_hook, self._reload_policy_hook]
        self.gossip_bytes = {"in": 0, "out": 0}   # load and gossip frames, received and sent

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

    async def _sync_to_disk(self) -> None:
        """Group fsync, off the event loop: every SYNC_INTERVAL the store's log and the audit log are
        fsynced in a worker thread (what the loop wrote meanwhile waits for the next round), and every
        gossip interval a new audit head is signed over the records that are on disk, and gossiped."""
        head_every = max(self.config.gossip.interval, 0.05)
        next_head = time.monotonic()
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            now = time.monotonic()
            sign_at = wall_ms() if now >= next_head else None
            if sign_at is not None:
                next_head = now + head_every
            try:
                head = await asyncio.to_thread(self._sync_files, now, sign_at)
            except (AuditError, OSError, sqlite3.Error) as exc:
                self._fail(exc)
                return
            if head is not None:
                self.put(AuditHeadSigned(head.to_dict()))

    def _sync_files(self, now: float, sign_at: int | None):
        """(Worker thread.) fsync what was written; sign a head over the durable records if asked."""
        if self.store.unsynced:
            self.store.sync(now)
        self.audit.flush()
        if sign_at is None:
            return None
        head, size = self.audit.head, self.audit.durable_size
        if head is None or head.size != size:
            head = self.audit.sign_head(sign_at, size)
        return head

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
        loop = self._loop = asyncio.get_running_loop()
        _watch_children_with_pidfds(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.ops.request_stop)          # drain, grace, hand back, stop
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)    # systemctl reload sends it
        self.apply_log_level()
        curve = None if self.config.network.insecure else curve_keypair(self.key)
        self.transport = PeerTransport(self.config.network.listen, curve=curve, zap_decide=self.trusted.zap)
        self.transport.start()
        self.address = advertised_address(self.config, self.transport.port)
        self.node = self._build_node()
        self.driver = self._build_driver()
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
        self._tasks = [loop.create_task(self._receive_peers()), loop.create_task(self._read_resources()),
                       loop.create_task(self._sync_to_disk()), loop.create_task(self.history.run(self)),
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
        """(Another thread: the metrics server.) A snapshot of the core's counters and the daemon's
        own, taken on the event loop between two batches; None when there is no node yet or the loop
        does not answer within COUNTERS_WAIT seconds."""
        loop = self._loop
        if loop is None or self.node is None:
            return None
        answer: concurrent.futures.Future = concurrent.futures.Future()

        def take() -> None:
            try:
                counters = views.counters(self.node)         # with the frames dropped before the core (inflow.py)
                counters = dataclasses.replace(counters, frames_dropped={**counters.frames_dropped,
                                                                         **self.inflow.drops})
                answer.set_result(views.Figures(counters, self.runtime_figures()))
            except Exception as exc:          # handed to the scrape, which logs it; the loop goes on
                answer.set_exception(exc)
        try:
            loop.call_soon_threadsafe(take)
            return answer.result(COUNTERS_WAIT)
        except (RuntimeError, concurrent.futures.TimeoutError):     # loop closed, or busy for too long
            return None

    def runtime_figures(self) -> dict[str, Any]:
        """The daemon's own counts (not the core's): reloads, drains, history, autoscale, gossip bytes,
        and what the transport's defences saw (`security`)."""
        return dict(self.ops.doc(), autoscale=self.autoscale.doc(), gossip_bytes=dict(self.gossip_bytes),
                    security=self.security_doc())

    def security_doc(self) -> dict:
        """What the transport's defences saw (the `security` part of `stats`; docs/security.md)."""
        t = self.transport
        if t is None:
            return {}
        return {"transport": "insecure" if t.curve is None else "curve",
                "zap_allowed": t.zap.allowed if t.zap else 0, "zap_denied": dict(t.zap.denied) if t.zap else {},
                "connections": dict(t.connection_events), "send_no_key": t.no_key,
                "peer_queue": {"frames": len(self.inflow), "bytes": self.inflow.bytes_waiting},
                "trust": self.trusted.summary(), "task_cgroups": self.cgroup_status,
                "run_as": self.config.executor.run_as}

    def reload_trust(self) -> None:
        """Re-read the trust files now, and hand our certificate to the core if it changed (a
        bad file is logged and the previous trust kept: runtime/trust.py)."""
        before = self.trusted.own_cert
        if self.trusted.reload_trust():
            self._after_trust_change(before)

    def _reload_trust_hook(self, new: Config) -> None:
        """A reload hook (operations.py): the new config's trust files, checked and taken, or the
        whole reload rejected (ConfigRejected) with the trust left as it was."""
        before = self.trusted.own_cert
        try:
            self.trusted.reload_from(new.trust)
        except TrustFileError as exc:
            raise ConfigRejected(f"trust: {exc}") from None
        self._after_trust_change(before)

    def _check_trust_files(self) -> None:
        """Every second (the resource loop): reload the trust files if one changed; expire certificates."""
        before = self.trusted.own_cert
        if self.trusted.check_files(time.monotonic()):
            self._after_trust_change(before)

    def _after_trust_change(self, own_cert_before: bytes) -> None:
        if self.trusted.own_cert != own_cert_before and self.node is not None:
            self.put(CertificateLoaded(self.trusted.own_cert))

    def _reload_policy_hook(self, new: Config) -> None:
        """A reload hook: a run_as that cannot work here rejects the reload (as it stops a start)."""
        if why := TaskPolicy(new.executor, new.node.state_dir).check_config():
            raise ConfigRejected(why)

    def _reload_seeds_hook(self, new: Config) -> None:
        """A reload hook: every seed of the new config names a key we can find (else rejected)."""
        try:
            self.seeds(new, learn=False)
        except DaemonError as exc:
            raise ConfigRejected(str(exc)) from None

    def seeds(self, config: Config | None = None, learn: bool = True) -> list[tuple[str, bytes | None]]:
        """(address, node key) of each seed of `config` (default: ours); a key written as a name is
        looked up in authorized_keys; with `learn`, the keys are remembered for sending to those
        addresses. DaemonError for a key that names no one."""
        config = config or self.config
        seeds = []
        for seed in config.network.seeds:
            written, address = parse_seed(seed)
            key = None
            if written:
                key = self.trusted.key_named(written)
                if key is None:
                    try:
                        key = base64.b64decode(written, validate=True)
                    except (binascii.Error, ValueError):
                        key = None
                    if key is None or len(key) != PUBLIC_KEY_LEN:
                        raise DaemonError(f"network.seeds: {seed!r}: {written!r} is neither a base64 node key nor "
                                          "the name of exactly one key in authorized_keys")
                if learn:
                    self.address_keys[address] = key
            elif not config.network.insecure and learn:
                log.warning("seed %s has no key (KEY@host:port): it can be reached only once its key is learnt "
                            "from other peers", address)
            seeds.append((address, key))
        return seeds

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

    async def _receive_peers(self) -> None:
        """Peer frames: from the socket into per-peer queues (rate limits, bounds: inflow.py), then,
        peers served in turn, through the gate into the input queue, while that has room (else they
        wait in their queues, where a flooding peer's frames are the ones dropped)."""
        transport, inflow = self.transport, self.inflow
        while True:
            batch = transport.receive_ready() if len(inflow) else await transport.receive_batch()
            now = time.monotonic()
            for tag, frame in batch:
                inflow.offer(self._peer_of(tag), frame, now)
            if self.inputs.qsize() >= INPUT_ROOM:
                self._room.clear()
                await self._room.wait()
                continue
            drops: Counter[str] = Counter()         # summed up: a flood costs the core one input per reason
            for _ in range(SERVE_FRAMES):
                item = inflow.take()
                if item is None:
                    break
                self._accept_frame(item[1], drops)
            for reason, n in drops.items():
                self.put(FrameDropped(reason, count=n))
            await asyncio.sleep(0)          # let the main loop take what was put

    def _peer_of(self, tag: str | None) -> str:
        """The per-peer limit a connection's frames count against: its own if its Curve key is a
        trusted node's; the shared STRANGER one otherwise (insecure mode: the connection's own)."""
        if self.transport.curve is None:
            return tag or STRANGER
        try:
            return tag if tag and self.trusted.is_trusted_curve(bytes.fromhex(tag)) else STRANGER
        except ValueError:
            return STRANGER

    def _accept_frame(self, frame: bytes, drops: Counter[str] | None = None) -> None:
        """One frame through the gate into the input queue; its drops counted in `drops` when given
        (the receive loop puts their sums in), else put one by one."""
        events = self.gate.admit(frame, wall_ms())
        if events and isinstance(events[0], MessageReceived) and events[0].envelope.type in GOSSIP_TYPES:
            self.gossip_bytes["in"] += len(frame)
        for event in events:
            if isinstance(event, FrameDropped):
                log.debug("dropped frame: %s", event.reason)
                if drops is not None:
                    drops[event.reason] += 1
                    continue
            elif isinstance(event, MessageReceived) and event.envelope.type == "load":
                self._learn_address(event.envelope.message.address, event.envelope.sender_key)
            self.put(event)

    def _learn_address(self, address: str, key: bytes) -> None:
        if address and self.address_keys.get(address) != key:
            if len(self.address_keys) >= MAX_ADDRESS_KEYS:
                self.address_keys.pop(next(iter(self.address_keys)))
            self.address_keys[address] = key

    async def _read_resources(self) -> None:
        while True:
            await asyncio.sleep(RESOURCE_INTERVAL)
            self.put(ResourcesRead(await asyncio.to_thread(self.resources.read)))
            self.queue_full.flush(time.monotonic())     # drops counted since the last line, if any
            self._check_trust_files()

    # -- the core and its effects ---------------------------------------------------------------

    def _handle(self, event: Any) -> None:
        self.driver.batch([event])

    def handle_now(self, event: Any) -> None:
        """Feed one input at once, ahead of the queue (an operator's reload or drain), as one batch."""
        self._handle_batch([event])

    def _handle_batch(self, events: list[Any]) -> None:
        """One batch through the shared driver loop (driver.py): the core sees every input, pumps once,
        and its decisions are written before anything outside this process sees them; the worker
        thread of `_sync_to_disk` puts them on disk within SYNC_INTERVAL. Then the clients waiting
        for a task that finished are answered."""
        self.driver.batch(events)
        if self.store.sync_owed:
            self.control.sync_then_reply()
        if self.inputs.qsize() < INPUT_ROOM:
            self._room.set()
        if VALIDATE:
            self.node.validate_state()
        self.ops.after_batch()
        finished, self._finished = self._finished, []
        for doc in finished:
            for future in self.control.waiters.pop(doc["id"], []):
                if not future.done():
                    future.set_result(doc)

    def _build_driver(self) -> Driver:
        store = self.store

        live = self.control.cluster.live

        def persist_task(effect: PersistTask) -> None:
            store.put_task(effect.doc, effect.when)
            if effect.doc["state"] in TERMINAL:
                self._finished.append(effect.doc)
            live.task_changed(effect.doc)           # followers of its output: it started, or ended

        def store_output(effect: StoreOutput) -> None:
            store.put_output(effect.task_id, effect.attempt, effect.stdout, effect.stderr)
            live.finish(effect.task_id)

        def send(effect: Send) -> None:
            ts = wall_ms()
            frame = self.encoder.encode(effect.message, ts)
            if effect.message.TYPE in GOSSIP_TYPES:
                self.gossip_bytes["out"] += len(frame) * len(effect.targets)
            for peer, address in effect.targets:
                if peer == self.id or address == self.address:     # our own contractor (or manager): the
                    # frame is signed as any other (it may be audit evidence), not verified again
                    self.put(MessageReceived(codec.Envelope(self.public_key, self.id, self.encoder.incarnation,
                                                            self.encoder.seq, ts, effect.message, frame)))
                else:
                    self._send(peer, address, frame)

        def relay(effect: Relay) -> None:
            for peer, address in effect.targets:
                for frame in effect.frames:
                    self._send(peer, address, frame)

        handlers: dict[type, Any] = {
            PersistTask: persist_task,
            PersistAttempt: lambda e: store.put_attempt(e.doc, e.when),
            PersistParts: lambda e: store.put_parts(e.task_id, [to_body(p) for p in e.parts]),
            ForgetAttempt: lambda e: store.delete_attempt(e.task_id, e.attempt),
            StoreOutput: store_output,
            LiveOutput: lambda e: live.add(e.task_id, e.attempt, e.stream, e.offset, e.data),
            ServeQuery: self.control.cluster.serve,
            PersistAuditHead: lambda e: store.put_audit_head(e.node_id, e.doc, e.when),
            PersistReputation: lambda e: store.put_reputation(e.kind, e.key, e.doc, e.when),
            Audit: lambda e: self.audit.append(e.entry),
            Log: lambda e: log.log(logging.getLevelName(e.level.upper()), "%s [%s]", e.text, e.stimulus_id),
            Send: send, Relay: relay,
            Reply: lambda e: self.control.reply(e, held=store.sync_owed),   # a submit or cancel: once on disk
            StartTask: lambda e: self.executor.start(e.task_id, e.attempt, e.spec, e.env),
            KillTask: lambda e: self.executor.kill(e.task_id, e.attempt, e.reason),
            ProveAudit: lambda e: self._send(*e.target, self.encoder.encode(self._audit_proof(e), wall_ms())),
        }
        return Driver(self.node, lambda: Instant(time.monotonic(), wall_ms()), handlers,
                      lambda phase: store.commit_due(time.monotonic(), phase))

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

    def _audit_proof(self, req: ProveAudit) -> AuditProof:
        if req.new_size > self.audit.size:
            return AuditProof(req.old_size, req.new_size, [],
                              error=f"new_size {req.new_size} is beyond the log ({self.audit.size} records)")
        return AuditProof(req.old_size, req.new_size, self.audit.consistency_proof(req.old_size, req.new_size))

    def _send(self, peer: str, address: str, frame: bytes) -> None:
        if peer == self.id or address == self.address:
            self._accept_frame(frame)          # our own contractor: same checks, no socket
        elif address:
            key = self.trusted.key_of(peer) if peer else None
            self.transport.send(address, frame, key or self.address_keys.get(address))

    async def _start_discovery(self) -> None:
        """mDNS: announce ourselves, turn trusted services into seeds (never fatal: logs and goes on)."""
        def on_peer(address: str, public_key: bytes) -> None:
            self._learn_address(address, public_key)
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
