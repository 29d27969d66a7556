"""One node of the exchange: membership, manager and contractor composed behind one entry point.

    effects = node.handle(event, now)      # now: Instant(mono seconds, wall ms)
    deadline = node.next_deadline()        # call handle(TimerFired(), now) at or after it

After each input the manager "pumps" (announces queued tasks to free slots). A driver that feeds a
batch of inputs before it acts on their effects passes `pump=False` and calls `settle(now)` at the
end: the pump then runs once, with the time the batch ends (so a bid window starts when its cfps really go out),
and sees every task and freed slot of the batch at once (so it ranks them all together).

A node is both a manager (of the tasks submitted to it) and a contractor (for everyone's tasks,
including its own: messages to itself go out as ordinary signed frames that the driver loops back).
Nothing here does I/O or reads a clock, so the daemon and the simulator drive the same code.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from . import operations
from .audit_watch import AuditWatch
from .candidates import Candidates
from .cluster_view import ClusterView
from .codec import Envelope
from .contractor import Contractor, ContractorSettings
from .coordinator import Coordinator
from .effects import Log, Outbox, PersistAuditHead, PersistReputation, ProveAudit, Relay, Send
from .errors import LocalProtocolError
from .events import (
    AuditHeadSigned,
    CancelRequested,
    Capacity,
    CertificateLoaded,
    DrainChanged,
    FrameDropped,
    HandBackRunning,
    Instant,
    MessageReceived,
    OutputWritten,
    QueryRequested,
    ResourcesRead,
    SeedConfigured,
    SettingsChanged,
    StateRecovered,
    TaskExited,
    TaskStarted,
    TaskSubmitted,
    TimerFired,
    stimulus_of,
)
from .manager import Manager, ManagerSettings
from .membership import DEAD, GossipSettings, Membership, Transition
from .messages import (
    LOAD_NEWS,
    Accept,
    Ack,
    Answer,
    AuditProof,
    AuditProofReq,
    Award,
    Bid,
    Cancel,
    Cfp,
    Dead,
    Load,
    Output,
    PartsAck,
    Ping,
    PingReq,
    Pong,
    Progress,
    Query,
    Refuse,
    Reject,
    RejectBid,
    Result,
    Suspect,
)
from .reputation import Keeper
from .scheduling import Candidate
from .signing import node_id as id_of_key
from .tasks import FINISHED_RETENTION

MANAGER_ADDRESSES = 256         # addresses kept of managers that asked us for work and are not in our table


@dataclass(frozen=True, slots=True)
class NodeSettings:
    name: str
    address: str                          # host:port peers reach our peer socket at
    slots: int
    labels: dict[str, str] = field(default_factory=dict)
    gossip: GossipSettings = GossipSettings()
    bid_window: float = 0.05
    award_timeout: float = 2.0
    max_candidates: int = 16
    direct_award: bool = True             # award a lone free candidate we know without a bid round
    finished_retention: int = FINISHED_RETENTION   # finished tasks the manager keeps in memory (older: the store)
    overload_cpu_percent: float = 90.0
    allow: tuple[str, ...] = ("*",)
    heartbeat: float = 1.0
    prefetch: int = 1                     # accepted tasks that may wait locally for a slot
    max_coordinations: int = 64           # composites this node coordinates at once (no slot each)
    query_timeout: float = 3.0            # how long a query to another node waits for its answer
    vet: Optional[Callable[[str, str, Optional[str]], Optional[str]]] = None   # the driver's task policy
                                          # (command, user, cwd) -> why not (contractor.py: `policy`)


class Node:
    def __init__(self, node_id: str, settings: NodeSettings, rng: random.Random):
        self.id = node_id
        self.settings = settings
        self.out = Outbox()
        self.membership = Membership(node_id, settings.gossip, rng, settings.address, self._ours)
        self.manager = Manager(
            ManagerSettings(node_id, settings.bid_window, settings.award_timeout,
                            heartbeat_timeout=max(3 * settings.heartbeat, settings.gossip.dead_after) + 1.0,
                            max_candidates=settings.max_candidates, direct_award=settings.direct_award,
                            finished_retention=settings.finished_retention),
            self.out, rng, self.lookup)
        self.contractor = Contractor(
            ContractorSettings(node_id, settings.slots, dict(settings.labels), settings.overload_cpu_percent,
                               tuple(settings.allow), settings.heartbeat,
                               reservation_ttl=settings.bid_window + 2 * settings.award_timeout + 1.0,
                               prefetch=settings.prefetch, vet=settings.vet),
            self.out, self.lookup)
        self.coordinator = Coordinator(node_id, self.manager, self.out, self.lookup, settings.max_coordinations,
                                       settings.heartbeat)
        self.drops: Counter[str] = Counter()
        self.audit_head: dict[str, Any] | None = None       # our latest signed audit head (AuditHeadSigned)
        self.cert = b""                                      # our CA certificate (CertificateLoaded)
        self.audit_watch = AuditWatch(proof_timeout=max(2.0, 2 * settings.gossip.suspect_after))
        self.reputation = Keeper()                # which reputation records to persist (reputation.py)
        self.view = ClusterView(node_id, settings.query_timeout, self.out, self.membership, self.lookup)
        self._pump_due = False                    # an input changed state since the last pump
        self._own_cache: tuple[tuple[Any, ...], Load] | None = None
        self.offered = Candidates()               # whom the manager may ask (candidates.py)
        self._managers: OrderedDict[str, str] = OrderedDict()   # managers' addresses from their cfps and awards
        self._now = 0.0

    # -- the one entry point --------------------------------------------------------------------

    def handle(self, event: object, now: Instant, pump: bool = True) -> list[Any]:
        self.out.stimulus_id = stimulus_of(event)
        mono, wall = now
        self._now = mono
        changed = True                          # tasks or slots may have changed: pump at the end
        if isinstance(event, MessageReceived):
            self._on_message(event.envelope, mono, wall, event.relayed)
        elif isinstance(event, TimerFired):
            self._on_timer(mono, wall)
        elif isinstance(event, TaskSubmitted):
            self.manager.submit(event.request_id, event.task_id, event.spec, mono, wall, event.resubmit_of,
                                event.done)
        elif isinstance(event, CancelRequested):
            self.manager.cancel(event.request_id, event.task_id, mono, wall, event.by_node, event.by_user)
        elif isinstance(event, TaskStarted):
            self.contractor.on_started(event.task_id, event.attempt, event.pid, event.pid_start)
        elif isinstance(event, TaskExited):
            claim = self.contractor.running.get((event.task_id, event.attempt))
            self.contractor.on_exited(event, mono)
            if claim is not None:
                self._offer_freed_slot(claim.manager, mono)
        elif isinstance(event, OutputWritten):
            self.contractor.on_output(event)
            changed = False                     # output frees and takes nothing: no pump
        elif isinstance(event, QueryRequested):
            self.view.request(event.request_id, event.query, mono, wall)
            changed = False
        elif isinstance(event, ResourcesRead):
            self.contractor.capacity = event.capacity
        elif isinstance(event, SeedConfigured):
            self.membership.add_seed(event.address, event.source,
                                     id_of_key(event.public_key) if event.public_key else "", mono)
        elif isinstance(event, FrameDropped):
            self.drops[event.reason] += event.count
            changed = False                     # a flood of bad frames costs no pump
        elif isinstance(event, AuditHeadSigned):
            self.audit_head = event.head        # gossiped with our next load
            changed = False
        elif isinstance(event, CertificateLoaded):
            self.cert = event.cert              # carried by our loads from now on
            changed = False
        elif isinstance(event, StateRecovered):
            self.manager.recover(event.tasks, mono)
            self.contractor.recover(event.attempts, mono)
            self._recover_memory(event, mono, wall)
            operations.restore_totals(self, event.totals)
        elif isinstance(event, SettingsChanged):
            operations.reconfigure(self, event.settings, event.seeds, mono)
        elif isinstance(event, DrainChanged):
            operations.set_draining(self, event.draining, mono)
        elif isinstance(event, HandBackRunning):
            self.contractor.hand_back_running(event.reason, mono)
        else:
            raise LocalProtocolError(f"no such input: {event!r}")
        if changed:
            self.contractor.start_queued(mono)  # liveness: any input may have made room for the queue
            if self.manager.finished_parts:     # parts that ended: record them, release what they unblock
                finished, self.manager.finished_parts = self.manager.finished_parts, []
                self.coordinator.collect(finished, mono, wall)
            self._pump_due = True
        return self.settle(now) if pump else self._take()

    def settle(self, now: Instant) -> list[Any]:
        """Run the pump that inputs handled with `pump=False` left due (the end of a driver's batch)."""
        if self._pump_due:
            self._pump_due = False
            if self.manager.queued():           # nothing waits (nor has a round open): nothing to announce
                self.manager.pump(self.candidates(now.mono), now.mono, now.wall_ms)
        return self._take()

    def _take(self) -> list[Any]:
        """The effects so far; our cfps and awards say where we are (`reply_to`): in a large cluster the
        contractor may not hold us in its table, and must still answer."""
        effects = self.out.take()
        for i, effect in enumerate(effects):
            if isinstance(effect, Send) and isinstance(effect.message, (Cfp, Award)) and not effect.message.reply_to:
                effects[i] = replace(effect, message=replace(effect.message, reply_to=self.settings.address))
        return effects

    def validate_state(self) -> None:
        """Check the invariants across the core's structures; raises LocalProtocolError (our bug)."""
        self.contractor.validate_state()
        self.manager.validate_state()
        self.view.validate_state()

    def next_deadline(self) -> float:
        return min(self.membership.next_deadline(), self.manager.next_deadline(),
                   self.contractor.next_deadline(), self.coordinator.next_deadline(), self.view.next_deadline())

    # -- dispatch -------------------------------------------------------------------------------

    def _on_message(self, env: Envelope, now: float, wall: int, relayed: bool = False) -> None:
        msg = env.message
        if isinstance(msg, Load):
            is_new, transitions = self.membership.on_load(env, now, wall, relayed)
            if is_new and not (relayed and self.membership.superseded(env)):
                self.manager.on_load(env)
            self._apply(transitions, now, wall)
            if is_new and msg.audit_head is not None:
                self._on_audit_head(env, msg, now, wall)
            self._flush_membership(now)
            return
        if isinstance(msg, (Suspect, Dead)):
            m = self.membership
            self._apply(m.on_suspect(env, now) if isinstance(msg, Suspect) else m.on_dead(env, now), now, wall)
            self._flush_membership(now)
            return
        self._apply(self.membership.on_direct(env, now), now, wall)
        if isinstance(msg, (Cfp, Award)) and msg.reply_to and env.sender not in self.membership.peers:
            self._managers[env.sender] = msg.reply_to
            self._managers.move_to_end(env.sender)
            if len(self._managers) > MANAGER_ADDRESSES:
                self._managers.popitem(last=False)
        if isinstance(msg, Cfp):
            if msg.composite:
                if not operations.refused_while_draining(self, env):
                    self.coordinator.on_cfp(env, self.contractor.capacity)
            else:
                self.contractor.on_cfp(env, now)
        elif isinstance(msg, Award):
            if msg.spec.composite is not None:
                if not operations.refused_while_draining(self, env):
                    self.coordinator.on_award(env, now, wall)
            else:
                self.contractor.on_award(env, now, wall)
        elif isinstance(msg, RejectBid):
            self.contractor.on_reject_bid(env)
        elif isinstance(msg, Cancel):
            if not self.coordinator.on_cancel(env, now, wall):
                self.contractor.on_cancel(env, now)
        elif isinstance(msg, Ack):
            if not self.coordinator.on_ack(env):
                self.contractor.on_ack(env)
        elif isinstance(msg, PartsAck):
            self.coordinator.on_parts_ack(env, now)
        elif isinstance(msg, Bid):
            self.manager.on_bid(env, now, wall)
        elif isinstance(msg, Refuse):
            self.manager.on_refuse(env, now, wall)
        elif isinstance(msg, Accept):
            self.manager.on_accept(env, now, wall)
        elif isinstance(msg, Reject):
            self.manager.on_reject(env, now, wall)
        elif isinstance(msg, Progress):
            self.manager.on_progress(env, now, wall)
        elif isinstance(msg, Result):
            self.manager.on_result(env, now, wall)
            self._persist_reputation(now, wall, env.sender)
        elif isinstance(msg, Ping):
            answer = self.membership.on_ping(env)
            if answer:
                self.out.emit(Send, targets=(answer[0],), message=answer[1])
            self._flush_membership(now)
        elif isinstance(msg, PingReq):
            probe = self.membership.on_ping_req(env)
            if probe:
                self.out.emit(Send, targets=(probe[0],), message=probe[1])
        elif isinstance(msg, AuditProofReq):
            address = self.lookup(env.sender)[0]
            if address:
                self.out.emit(ProveAudit, target=(env.sender, address), old_size=msg.old_size,
                              new_size=msg.new_size)
        elif isinstance(msg, AuditProof):
            self._audit_fork(env.sender, self.audit_watch.on_proof(env.sender, msg, wall))
            self._persist_audit_watch()
        elif isinstance(msg, Query):
            self.view.on_query(env)
        elif isinstance(msg, Answer):
            self.view.on_answer(env, now, wall)
        elif isinstance(msg, Output):
            task = self.manager.tasks.get(msg.task_id)
            att = task.current if task is not None else None
            self.view.on_output(env, (att.attempt, att.node) if att is not None else None)
        elif isinstance(msg, Pong):
            transitions, forward_to = self.membership.on_pong(env, now)
            self._apply(transitions, now, wall)
            if forward_to:
                self.out.emit(Relay, targets=(forward_to,), frames=(env.raw,))

    def _on_timer(self, now: float, wall: int) -> None:
        m = self.membership
        transitions, round_started = m.on_timer(now)
        self._apply(transitions, now, wall)
        if round_started:
            load = self.load_signal(now)
            due = m.own_load_due(load)
            targets = m.own_load_targets(live_too=due)
            if targets:
                self.out.emit(Send, targets=tuple(targets), message=replace(load, news=m.own_news if due else 0))
            if due:
                m.sent_own_load()
            self._persist_reputation(now, wall)             # timeouts change records without a message
        self._flush_membership(now)
        self.manager.on_timer(now, wall)
        self.contractor.on_timer(now)
        self.coordinator.on_timer(now, wall)
        self.view.on_timer(now, wall)

    def _on_audit_head(self, env: Envelope, load: Load, now: float, wall: int) -> None:
        request, fork = self.audit_watch.on_head(env.sender, env.sender_key, load.audit_head, now, wall)
        if request is not None and load.address:
            self.out.emit(Send, targets=((env.sender, load.address),), message=request)
        self._audit_fork(env.sender, fork)
        self._persist_audit_watch()

    def _persist_audit_watch(self) -> None:
        for doc in self.audit_watch.take_changes():
            self.out.emit(PersistAuditHead, node_id=doc["node_id"], doc=doc)

    def _persist_reputation(self, now: float, wall: int, peer: str | None = None) -> None:
        m = self.manager
        for kind, key, doc in self.reputation.changes(m.records, m.speeds, now, wall, peer):
            self.out.emit(PersistReputation, kind=kind, key=key, doc=doc)

    def _recover_memory(self, event: StateRecovered, now: float, wall: int) -> None:
        """What outlives a restart besides tasks: peers' audit heads, and reputation (not safety-critical:
        documents that do not make sense are skipped, and said)."""
        skipped = self.audit_watch.restore(event.audit_heads)
        skipped += self.reputation.restore(event.reputation, self.manager.records, self.manager.speeds, now, wall)
        if skipped:
            self.out.emit(Log, level="warning", text=f"recovery skipped {skipped} malformed audit-head or "
                                                     "reputation documents from the store")

    def _audit_fork(self, peer_id: str, evidence: dict[str, Any] | None) -> None:
        if evidence is None:
            return
        name = self.lookup(peer_id)[1] or peer_id
        self.out.emit(Log, level="error",
                      text=f"audit: node {name} ({peer_id}) forked its audit log: {evidence['reason']}; "
                           f"evidence: xchanged audit evidence {peer_id}")

    def _flush_membership(self, now: float) -> None:
        """Send what membership decided (probes, suspicions, verdicts, gossip, welcomes) and, when we
        were suspected or declared dead, a refutation: a fresh load of our next life, at once."""
        m = self.membership
        for targets, message in m.take_sends():
            self.out.emit(Send, targets=targets, message=message)
        if m.refute_to is not None:
            self.out.emit(Send, targets=tuple(m.take_refutation()),
                          message=replace(self.load_signal(now), news=LOAD_NEWS))
            m.sent_own_load()

    def _ours(self, peer_id: str) -> bool:
        """A peer our manager has business with (an attempt there; a candidate it was handed lately,
        which may bid, be awarded or be told its bid lost): membership keeps its address while it
        lasts, however the sample turns over."""
        return self.manager.index.holding(peer_id) > 0 or self.offered.handed_lately(peer_id, self._now)

    def _apply(self, transitions: list[Transition], now: float, wall: int) -> None:
        for t in transitions:
            self.out.emit(Log, level="warning" if t.health != "alive" else "info",
                          text=f"peer {t.peer.name or t.peer.id} ({t.peer.id}) is {t.health}")
            self.coordinator.owner_health(t.peer.id, t.health, now)
            if t.health == DEAD:
                self.manager.peer_died(t.peer.id, now, wall)
                self.view.peer_died(t.peer.id, now, wall)

    def _offer_freed_slot(self, skip: str, now: float) -> None:
        """Pull-based work stealing: a freed slot is told at once (a direct load signal) to managers
        whose last signal showed queued work. One manager per free slot, not all of them: several
        managers told of one slot would all award it and all but one be rejected (a thundering herd).
        The manager of the finished attempt learns of the slot from the result, so when it has work
        queued the slot is left to it."""
        free = self.contractor.offer_slots
        owner = self.membership.peers.get(skip)
        if (self.manager.queued() > 0) if skip == self.id else (owner is not None and owner.load is not None
                                                                and owner.load.queued > 0):
            free -= 1
        if free <= 0:
            return
        waiting = [p for p in self.membership.healthy()
                   if p.load is not None and p.load.queued > 0 and p.id != skip and p.address]
        if len(waiting) > free:
            waiting = self.membership.rng.sample(waiting, free)
        if waiting:
            self.out.emit(Send, targets=tuple((p.id, p.address) for p in waiting), message=self.load_signal(now))

    # -- views ----------------------------------------------------------------------------------

    def lookup(self, peer_id: str) -> tuple[str, str]:
        """(address, name) of a peer, ourselves included; a manager not in our table: the address its
        cfp or award gave."""
        if peer_id == self.id:
            return self.settings.address, self.settings.name
        peer = self.membership.peers.get(peer_id)
        return (peer.address, peer.name) if peer else (self._managers.get(peer_id, ""), "")

    def load_signal(self, now: float, count_queued: bool = True) -> Load:
        cap: Capacity = self.contractor.capacity
        stats = {k: int(v) for k, v in self.manager.stats.items()}
        stats["completed"] = self.contractor.completed
        stats["attempts_failed"] = self.contractor.failed_runs
        stats["run_ms"] = self.contractor.run_ms
        return Load(name=self.settings.name, address=self.settings.address, slots=self.settings.slots,
                    slots_free=self.contractor.offer_slots, running=self.contractor.started,
                    queue_free=self.contractor.offer_queue(now),
                    queued=self.manager.queued() if count_queued else 0,
                    cpus=cap.cpus, cpu_percent=cap.cpu_percent, mem_total=cap.mem_total,
                    mem_available=cap.mem_available, gpus=list(cap.gpus),
                    labels=dict(self.settings.labels), stats=stats, audit_head=self.audit_head,
                    coord_free=0 if self.contractor.draining else self.coordinator.room,
                    draining=self.contractor.draining, cert=self.cert, refutes=self.membership.refutes,
                    joining=self.membership.joining)

    def candidates(self, now: float) -> list[Candidate]:
        """Ourselves and a bounded set of peers of the sample, whatever the cluster's size (candidates.py)."""
        own, s = self._own_load(now), self.settings
        ours = Candidate(self.id, own.name, own.address, own.slots, self.contractor.offer_slots, own.labels, own,
                         queue=own.queue_free, coord=own.coord_free)
        return self.offered.pick(ours, self.membership, self.manager.beliefs, self.manager.queued(),
                                 s.max_candidates, now + s.bid_window + s.award_timeout + 1.0, now)

    def _own_load(self, now: float) -> Load:
        """Our load for our own candidate, rebuilt only when what it says changed (a pump runs on
        almost every input while tasks wait)."""
        c = self.contractor
        key = (c.offer_slots, c.started, c.offer_queue(now), c.capacity, self.coordinator.room, self.audit_head is None,
               self.membership.refutes)
        if self._own_cache is None or self._own_cache[0] != key:
            self._own_cache = (key, self.load_signal(now, count_queued=False))
        return self._own_cache[1]
