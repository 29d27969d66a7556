"""A virtual cluster: real protocol Nodes, real signed frames, a fake clock and a fake network.

Frames are encoded and verified exactly as in the daemon, and each node is driven by the daemon's
own loop (driver.py: batches, one pump per batch, writes staged and committed around the effects
that depend on them); only the transport, the executor and the disk are replaced. The disk
(sim/store.py) keeps the daemon's durability levels, so a crash loses what a real one would: staged
writes, and on a power cut (`crash(power_loss=True)`) commits not yet fsynced. A task's command is
simulated: `["sleep", S]` runs for S virtual seconds and exits 0,
`["exit", N]` exits N at once, `["hang"]` never exits. Links can be cut, frames lost (`loss`),
the cluster split into partitions and nodes crashed, so tests and benchmarks can explore failures
deterministically from a seed.

`fast=True` (large simulations, `xchanged sim`) replaces Ed25519 by a cheap keyed hash of the same
size (fastsig.py), decodes each distinct frame once for all nodes, and keeps smaller duplicate
filters; nothing else changes. The daemon never does this.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..driver import Driver
from ..protocol import codec
from ..protocol.effects import (
    BEFORE,
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
    CancelRequested,
    Capacity,
    Instant,
    ResourcesRead,
    SeedConfigured,
    StateRecovered,
    TaskExited,
    TaskStarted,
    TaskSubmitted,
)
from ..protocol.inbound import FrameGate
from ..protocol.messages import Answer, AuditProof, Outcome, TaskSpec, answer_parts, to_body
from ..protocol.node import Node, NodeSettings
from ..protocol.replay import DuplicateFilter
from ..protocol.signing import TrustStore, generate_key, node_id, public_bytes
from ..protocol.tasks import Task
from .fastsig import CheapSignatures
from .store import SimStore

WALL_EPOCH_MS = 1_790_000_000_000
SEEDS = 3                      # a new node is seeded with the first few nodes, as a real cluster is


class TableView(Mapping):
    """One table of a node's disk as the node itself sees it (its latest writes, staged or not)."""

    def __init__(self, disk: SimStore, table: str):
        self.disk, self.table = disk, table

    def __getitem__(self, key: Any) -> Any:
        doc = self.disk.get(self.table, key)
        if doc is None:
            raise KeyError(key)
        return doc

    def __iter__(self) -> Iterator[Any]:
        return iter(self.disk.latest(self.table))

    def __len__(self) -> int:
        return len(self.disk.latest(self.table))


@dataclass
class SimNode:
    node: Node
    encoder: codec.Encoder
    gate: FrameGate
    address: str
    up: bool = True
    replies: dict[int, Any] = field(default_factory=dict)
    started: dict[tuple[str, int], float] = field(default_factory=dict)
    disk: SimStore = field(default_factory=SimStore)
    audit: list[dict] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    outputs: dict[tuple[str, int], tuple[bytes, bytes]] = field(default_factory=dict)
    live: dict[tuple[str, int, str], bytearray] = field(default_factory=dict)   # (task, attempt, stream)
    timer_at: float = float("inf")
    key: Any = None
    driver: Driver | None = None

    @property
    def store(self) -> TableView:
        """The manager's task documents (as the store keeps them)."""
        return TableView(self.disk, "tasks")

    @property
    def attempts(self) -> TableView:
        """The contractor's durable attempt records."""
        return TableView(self.disk, "attempts")


class SimCluster:
    def __init__(self, seed: int = 0, latency: float = 0.001, jitter: float = 0.0, validate: bool = False,
                 loss: float = 0.0, fast: bool = False, keep_logs: bool = True,
                 on_log: Callable[[str, str], None] | None = None, **settings: Any):
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.jitter = jitter            # extra random delay per frame, up to this (frames may overtake)
        self.loss = loss                # probability that a frame is lost on the way
        self.validate = validate        # check every node's invariants after each input (tests)
        self.settings = settings
        self.cheap = CheapSignatures(self.rng.randbytes(16)) if fast else None
        self.keep_logs = keep_logs      # every node's log lines in SimNode.logs (tests read them)
        self.on_log = on_log            # (node id, line) for each log line, if given
        self.group: dict[str, int] = {}     # node id -> partition (absent: 0); frames cross none
        self.sent_by_type: Counter[str] = Counter()     # frames sent, by message type
        self.bytes_by_type: Counter[str] = Counter()
        self.lost = 0
        self.events = 0                 # driver batches run (one frame's inputs, one other input, or a timer)
        self.inputs = 0                 # inputs handed to the core
        self.watched: tuple[str, int] | None = None    # (node id, seq): loads of it signed at or after seq...
        self.reached: dict[str, float] = {}            # ... reached these nodes, first at these times
        self.nodes: dict[str, SimNode] = {}
        self.by_address: dict[str, str] = {}
        self.by_name: dict[str, str] = {}
        self.keys: dict[bytes, str] = {}
        self.trust = TrustStore(self.keys)
        self.cut: set[frozenset[str]] = set()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._request = itertools.count(1)
        self.frames_sent = 0
        self.bytes_sent = 0
        self.completions: list[tuple[str, str, int]] = []     # (node, task, attempt) per exited process
        self.runs: list[tuple[str, float, StartTask]] = []    # (node, time, effect) per started process

    # -- building -------------------------------------------------------------------------------

    def add_node(self, name: str, slots: int = 2, labels: dict | None = None, cpus: int | None = None,
                 cpu_percent: float = 10.0, gpus: tuple = (), seeds: list[str] | None = None,
                 **overrides: Any) -> str:
        key = generate_key() if self.cheap is None else Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        pub = public_bytes(key)                 # fast: keys (so node ids) from the seed too: same seed, same run
        nid = node_id(pub)
        self.keys[pub] = name
        address = f"sim-{name}:7946"
        settings = NodeSettings(name=name, address=address, slots=slots, labels=labels or {},
                                **{**self.settings, **overrides})
        node = Node(nid, settings, random.Random(self.rng.random()))
        sim = SimNode(node, self._encoder(key, pub, 1), self._gate(), address, key=key)
        sim.driver = self._driver(nid, sim)
        self.nodes[nid] = sim
        self.by_address[address] = nid
        self.by_name[name] = nid
        cap = Capacity(cpus=cpus or slots, cpu_percent=cpu_percent, mem_total=64 << 30,
                       mem_available=60 << 30, gpus=gpus)
        self.deliver(nid, ResourcesRead(cap))
        for address in self.seed_addresses(nid) if seeds is None else seeds:
            self.deliver(nid, SeedConfigured(address))
        return nid

    def _encoder(self, key: Any, pub: bytes, incarnation: int) -> codec.Encoder:
        if self.cheap is None:
            return codec.Encoder(key, pub, incarnation)
        return codec.Encoder(key, pub, incarnation, signer=self.cheap.signer(pub))

    def _gate(self) -> FrameGate:
        if self.cheap is None:
            return FrameGate(self.trust)
        return FrameGate(self.trust, decode=self.cheap.decode, duplicates=DuplicateFilter(1024))

    def seed_addresses(self, nid: str) -> list[str]:
        """The first SEEDS nodes other than `nid`: gossip tells it of everyone else."""
        return [s.address for other, s in self.nodes.items() if other != nid][:SEEDS]

    def node(self, name: str) -> SimNode:
        return self.nodes[self.by_name[name]]

    def id_of(self, name: str) -> str:
        return self.by_name[name]

    # -- driving --------------------------------------------------------------------------------

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + int(self.now * 1000)

    def deliver(self, nid: str, event: Any) -> None:
        self._batch(nid, [event])

    def _batch(self, nid: str, events: list[Any]) -> None:
        sim = self.nodes[nid]
        if not sim.up:
            return
        self.events += 1
        self.inputs += len(events)
        sim.driver.batch(events)
        if self.validate:
            sim.node.validate_state()
        deadline = sim.node.next_deadline()
        if deadline < sim.timer_at:
            sim.timer_at = deadline
            self._at(deadline, lambda: self._timer(nid, deadline))

    def _timer(self, nid: str, deadline: float) -> None:
        sim = self.nodes[nid]
        if sim.timer_at != deadline:
            return
        sim.timer_at = float("inf")
        self._batch(nid, [])                 # the driver fires the core's timer when it is due

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), fn))

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Run `fn` at virtual time `when` (a workload's arrivals, crashes, checks)."""
        self._at(when, fn)

    def watch(self, node: str | None, seq: int = 0) -> None:
        """Record when each node first receives a load of `node` (an id) signed at or after `seq`,
        directly or relayed (`reached`); None stops."""
        self.watched = (node, seq) if node is not None else None
        self.reached = {}

    def run_until(self, predicate: Callable[[], bool], limit: float = 600.0) -> bool:
        """Advance virtual time until predicate() holds; False if `limit` virtual seconds pass."""
        end = self.now + limit
        while not predicate():
            if not self._queue or self._queue[0][0] > end:
                self.now = end
                return predicate()
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()
        return True

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        self.run_until(lambda: self.now >= end and (not self._queue or self._queue[0][0] > end), limit=seconds)

    # -- client actions -------------------------------------------------------------------------

    def submit(self, name: str, spec: TaskSpec, task_id: str | None = None) -> str:
        nid = self.id_of(name)
        task_id = task_id or f"T-{next(self._seq):016d}"
        self.deliver(nid, TaskSubmitted(next(self._request), task_id, spec))
        return task_id

    def cancel(self, name: str, task_id: str) -> None:
        self.deliver(self.id_of(name), CancelRequested(next(self._request), task_id))

    def task(self, name: str, task_id: str):
        """The manager's task; a finished one it has evicted from memory is read back from its store."""
        sim = self.node(name)
        task = sim.node.manager.tasks.get(task_id)
        return task if task is not None else Task.from_doc(sim.store[task_id])

    # -- failures -------------------------------------------------------------------------------

    def crash(self, name: str, power_loss: bool = False) -> None:
        """The node stops at once, its processes with it. What it had committed stays (on a power
        cut, only what was also fsynced: see sim/store.py)."""
        sim = self.node(name)
        sim.up = False
        sim.started.clear()
        sim.disk.crash(self.now, power_loss)

    def restart(self, name: str) -> None:
        """Start a crashed node again from what it persisted: same key, a new incarnation, a fresh
        Node fed `StateRecovered` (its unfinished tasks, its contractor's attempt records, the audit
        heads it checked and its reputation documents)."""
        sim = self.node(name)
        old = sim.node
        sim.up, sim.timer_at = True, float("inf")
        sim.started.clear()
        sim.node = Node(old.id, old.settings, random.Random(self.rng.random()))
        sim.encoder = self._encoder(sim.key, public_bytes(sim.key), sim.encoder.incarnation + 1)
        sim.gate = self._gate()
        sim.driver = self._driver(old.id, sim)
        self.deliver(old.id, ResourcesRead(old.contractor.capacity))
        parts = sim.disk.table("parts")
        unfinished = [dict(d, parts_done=[p for (task_id, _), p in parts.items() if task_id == d["id"]])
                      for d in sim.disk.table("tasks").values() if d["state"] in ("queued", "assigned", "running")]
        self.deliver(old.id, StateRecovered(sorted(unfinished, key=lambda d: d["order"]),
                                            list(sim.disk.table("attempts").values()),
                                            list(sim.disk.table("audit_heads").values()),
                                            list(sim.disk.table("reputation").values())))
        for address in self.seed_addresses(old.id):
            self.deliver(old.id, SeedConfigured(address))

    def cut_link(self, a: str, b: str) -> None:
        self.cut.add(frozenset((self.id_of(a), self.id_of(b))))

    def heal_link(self, a: str, b: str) -> None:
        self.cut.discard(frozenset((self.id_of(a), self.id_of(b))))

    def partition(self, *groups: list[str]) -> None:
        """Split the cluster: no frame crosses between the named groups (nodes not named: group 0)."""
        self.group = {self.id_of(name): number for number, names in enumerate(groups, 1) for name in names}

    def heal(self) -> None:
        self.group = {}

    # -- effects --------------------------------------------------------------------------------

    def _driver(self, nid: str, sim: SimNode) -> Driver:
        """The daemon's loop (driver.py) over this node, with simulated disk, network and processes."""
        def send(effect: Send) -> None:
            frame = sim.encoder.encode(effect.message, self.wall_ms())
            kind = effect.message.TYPE
            self.sent_by_type[kind] += len(effect.targets)
            self.bytes_by_type[kind] += len(effect.targets) * len(frame)
            for _, address in effect.targets:
                self._transmit(nid, address, frame)

        def relay(effect: Relay) -> None:
            for _, address in effect.targets:
                for frame in effect.frames:
                    self.sent_by_type["relay"] += 1
                    self.bytes_by_type["relay"] += len(frame)
                    self._transmit(nid, address, frame)

        def log(effect: Log) -> None:
            if self.keep_logs:
                sim.logs.append(effect.text)
            if self.on_log is not None:
                self.on_log(nid, effect.text)

        def kill(effect: KillTask) -> None:
            key = (effect.task_id, effect.attempt)
            if key in sim.started:
                del sim.started[key]
                self._at(self.now, lambda: self.deliver(nid, TaskExited(
                    effect.task_id, effect.attempt, Outcome.CANCELLED, None, 0, reason=effect.reason)))

        def prove(effect: ProveAudit) -> None:          # nodes here sign no audit heads: nothing to prove
            send(Send(targets=(effect.target,), message=AuditProof(
                effect.old_size, effect.new_size, [], error="the simulator keeps no audit log")))

        disk = sim.disk

        def persist_parts(effect: PersistParts) -> None:
            for part in effect.parts:
                disk.put("parts", (effect.task_id, part.key), to_body(part), BEFORE)

        handlers: dict[type, Callable[[Any], None]] = {
            Send: send, Relay: relay, KillTask: kill, ProveAudit: prove,
            ServeQuery: lambda e: self._serve_query(nid, e),
            LiveOutput: lambda e: sim.live.setdefault((e.task_id, e.attempt, e.stream), bytearray()).extend(e.data),
            StartTask: lambda e: self._start(nid, e),
            PersistTask: lambda e: disk.put("tasks", e.doc["id"], e.doc, e.when),
            PersistParts: persist_parts,
            PersistAttempt: lambda e: disk.put("attempts", (e.doc["task_id"], e.doc["attempt"]), e.doc, e.when),
            ForgetAttempt: lambda e: disk.delete("attempts", (e.task_id, e.attempt)),
            PersistAuditHead: lambda e: disk.put("audit_heads", e.node_id, e.doc, e.when),
            PersistReputation: lambda e: (disk.put("reputation", (e.kind, e.key), e.doc, e.when) if e.doc is not None
                                          else disk.delete("reputation", (e.kind, e.key), e.when)),
            StoreOutput: lambda e: sim.outputs.__setitem__((e.task_id, e.attempt), (e.stdout, e.stderr)),
            Audit: lambda e: sim.audit.append(e.entry),
            Reply: lambda e: sim.replies.__setitem__(e.request_id, e),
            Log: log,
        }
        return Driver(sim.node, lambda: Instant(self.now, self.wall_ms()), handlers,
                      lambda phase: disk.commit_due(self.now, phase))

    def _serve_query(self, nid: str, effect: ServeQuery) -> None:
        """A peer's query about this node's tasks, answered as the daemon would (simplified: a
        `wait` answers at once; `logs` gives the stored output), after the batch that asked."""
        sim, q = self.nodes[nid], effect.query

        def doc_of(task_id: str) -> dict | None:
            task = sim.node.manager.tasks.get(task_id)
            return task.to_doc() if task is not None else sim.disk.get("tasks", task_id)

        def answer() -> None:
            doc = doc_of(q.task_id)
            if q.op == "tasks":
                docs = [d for d in sorted(sim.disk.latest("tasks").values(), key=lambda d: d["order"])
                        if q.state in ("", d["state"])]
                doc = {"tasks": docs[-q.limit:], "total": len(docs), "truncated": len(docs) > q.limit}
            elif doc is not None and q.op == "logs":
                attempt = max((a for t, a in sim.outputs if t == q.task_id), default=None)
                out = sim.outputs.get((q.task_id, attempt)) if attempt is not None else None
                doc = {"id": q.task_id, "attempt": attempt, "stdout": out[0].decode(), "stderr": out[1].decode()} \
                    if out else None
            elif doc is not None and q.op == "audit":
                doc = {"node": sim.node.settings.name, "records": [e for e in sim.audit if e.get("task") == q.task_id]}
            if doc is None:
                frames = [Answer(q.request_id, False, code="no_such_task", error=f"no such task: {q.task_id}")]
            else:
                frames = answer_parts(q.request_id, json.dumps(doc, default=repr).encode())
            for frame in frames:
                self._transmit(nid, effect.asker[1], sim.encoder.encode(frame, self.wall_ms()))

        if q.op == "cancel" and doc_of(q.task_id) is not None:
            self._at(self.now, lambda: self.deliver(nid, CancelRequested(
                next(self._request), q.task_id, by_node=effect.asker[0], by_user=q.user)))
        self._at(self.now, answer)

    def _transmit(self, src: str, address: str, frame: bytes) -> None:
        dst = self.by_address.get(address)
        if dst is None or (self.cut and frozenset((src, dst)) in self.cut):
            return
        if self.group and self.group.get(src, 0) != self.group.get(dst, 0):
            return
        if self.loss and src != dst and self.rng.random() < self.loss:
            self.lost += 1
            return
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        delay = self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
        self._at(self.now + delay, lambda: self._receive(dst, frame))

    def _receive(self, dst: str, frame: bytes) -> None:
        sim = self.nodes[dst]
        if sim.up:
            events = sim.gate.admit(frame, self.wall_ms())
            if self.watched is not None and dst not in self.reached:
                origin, seq = self.watched
                for event in events:
                    env = getattr(event, "envelope", None)
                    if env is not None and env.sender == origin and env.type == "load" and env.seq >= seq:
                        self.reached[dst] = self.now
            if events:
                self._batch(dst, events)        # one frame's events together, as the daemon queues them

    def _start(self, nid: str, effect: StartTask) -> None:
        sim = self.nodes[nid]
        key = (effect.task_id, effect.attempt)
        sim.started[key] = self.now
        self.runs.append((sim.node.settings.name, self.now, effect))
        self._at(self.now, lambda: self.deliver(nid, TaskStarted(effect.task_id, effect.attempt, 1000)))
        argv = effect.spec.argv
        if argv[0] == "sleep":
            duration, code = float(argv[1]), 0
        elif argv[0] == "exit":
            duration, code = 0.0, int(argv[1])
        elif argv[0] == "hang":
            duration, code = float("inf"), 0
        else:
            duration, code = 0.0, 127
        timeout = effect.spec.timeout
        outcome = "exited"
        if timeout is not None and duration > timeout:
            duration, outcome, code = timeout, "timeout", None
        if duration == float("inf"):
            return

        def finish() -> None:
            if sim.started.pop(key, None) is None or not sim.up:
                return
            self.completions.append((sim.node.settings.name, effect.task_id, effect.attempt))
            self.deliver(nid, TaskExited(effect.task_id, effect.attempt, outcome, code, int(duration * 1000),
                                         stdout=f"ran {effect.task_id}\n".encode()))
        self._at(self.now + duration, finish)
