"""Issue 10: a task accepted into a contractor's local queue never waits on an idle slot, and the
manager never lets an attempt wait at a contractor forever, whatever the contractor does.

Contractor side (liveness): whenever a slot is free and the head of the local queue fits, the head
starts in the same step; every input that frees room (an exit, a released or expired reservation, a
cancel, a new resource reading) re-runs that check. Manager side (defence in depth): a queued
attempt is held to the start its contractor promised, plus a margin.
"""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xchanged.protocol.effects import StartTask
from xchanged.protocol.events import Capacity, ResourcesRead, TimerFired
from xchanged.protocol.lifecycle import Why
from xchanged.protocol.manager import QUEUE_WAIT_CAP
from xchanged.protocol.messages import Accept, Award, Bid, Cancel, Cfp, Progress, RejectBid, Requirements, TaskSpec
from xchanged.sim.cluster import SimCluster

from .fakes import FakePeer, NodeUnderTest
from .test_contract_net import Manager

WALL = 1_790_000_000_000
IDLE = Capacity(cpus=4, cpu_percent=5.0, mem_total=64 << 30, mem_available=60 << 30)
BUSY_CPU = Capacity(cpus=4, cpu_percent=95.0, mem_total=64 << 30, mem_available=60 << 30)
SHORT_MEMORY = Capacity(cpus=4, cpu_percent=5.0, mem_total=64 << 30, mem_available=1 << 20)


def sim(slots=(1,), prefetch=1, seed=5, **kw):
    c = SimCluster(seed=seed, latency=0.002, validate=True, **kw)
    for i, n in enumerate(slots):
        c.add_node(f"n{i}", slots=n, prefetch=prefetch)
    c.run_for(2.0)
    return c


# -- contractor: the liveness rule ----------------------------------------------------------------


def test_a_queued_attempt_starts_when_its_slot_frees_while_the_cpu_is_overloaded():
    """The reported case: the slot freed while the CPU read above overload_cpu_percent; the queue's
    head was refused the slot and nothing ever tried again (slots_free 0, running 0, queued 0)."""
    c = sim()
    n0 = c.id_of("n0")
    first = c.submit("n0", TaskSpec(["sleep", "2"]))
    second = c.submit("n0", TaskSpec(["sleep", "1"]))
    for _ in range(3):
        c.submit("n0", TaskSpec(["sleep", "1"]))        # keep the backlog deep, so n0 queues one
    c.run_for(0.5)
    assert c.task("n0", second).attempts[-1].state == "waiting"
    c.deliver(n0, ResourcesRead(BUSY_CPU))
    assert c.run_until(lambda: c.task("n0", first).state == "succeeded", 5)
    assert c.run_until(lambda: c.task("n0", second).state == "running", 0.1)


class Contractor(NodeUnderTest):
    """A 1-slot node under test, driven by a fake manager's signed frames."""

    def __init__(self, trust, prefetch=1):
        super().__init__(trust, name="c", slots=1, prefetch=prefetch, bid_window=0.05, award_timeout=1.0)
        self.manager = FakePeer("mgr", trust)
        self.handle(ResourcesRead(IDLE))

    def hear(self, message, t=None):
        return super().hear(self.manager, message, t)

    def started(self):
        return [e.task_id for e in self.effects if isinstance(e, StartTask)]

    def accepts(self):
        return [m for _, m in self.sent(Accept)]


def award(task_id, attempt=1, queue_ok=True):
    return Award(task_id, attempt, TaskSpec(["true"]), 0.5, queue_ok=queue_ok)


def cfp(task_id, attempt=1, queue_ok=False):
    return Cfp(task_id, attempt, Requirements(), 1, 50, queue_ok=queue_ok, command="true")


def test_a_queued_attempt_starts_when_the_reservation_holding_its_slot_is_rejected(trust):
    c = Contractor(trust)
    c.hear(cfp("T-A"))                      # a bid for A holds the only slot
    c.hear(award("T-B"))                    # B is awarded with queue_ok: it waits for the slot
    assert c.started() == [] and c.accepts()[-1].queued == 1
    c.hear(RejectBid("T-A", 1, "lost"))     # A's bid lost: the slot is free again
    assert c.started() == ["T-B"]
    assert c.node.contractor.slots_free == 0 and c.node.contractor.started == 1


def test_a_queued_attempt_starts_when_the_reservation_holding_its_slot_expires(trust):
    c = Contractor(trust)
    c.hear(cfp("T-A"))
    c.hear(award("T-B"))
    assert c.started() == []
    (reservation,) = c.node.contractor.reserved.values()
    c.handle(TimerFired(), t=reservation.expires)           # A's manager never answered: its ttl ends
    assert c.started() == ["T-B"]


def test_an_award_on_a_held_slot_starts_at_once_and_the_queue_follows(trust):
    c = Contractor(trust)
    c.hear(cfp("T-A"))
    c.hear(award("T-B"))
    c.hear(award("T-A"))                    # the bid's slot was promised to A: it starts first
    assert c.started() == ["T-A"] and c.accepts()[-1].queued == 0


def test_slots_and_queue_places_always_add_up(trust):
    """slots_free + started + slot reservations == slots at every step (validate_state, after each input)."""
    c = Contractor(trust, prefetch=2)
    c.hear(award("T-1"))
    c.hear(cfp("T-2", queue_ok=True))
    c.hear(award("T-3"))
    contractor = c.node.contractor
    assert (contractor.slots_free, contractor.started, contractor.queue_places) == (0, 1, 2)
    c.hear(RejectBid("T-2", 1, "lost"))
    assert contractor.queue_places == 1 and contractor.waiting == [("T-3", 1)]


# -- manager: a queued attempt is held to its promise ---------------------------------------------


def queued_at_peer(trust, est_start_ms=500):
    mgr = Manager(trust, bid_window=0.05, award_timeout=1.0)
    peer = FakePeer("p1", trust)
    mgr.handle(peer.say(peer.load(slots=1, free=1, labels={"role": "worker"})))
    mgr.submit()
    cfps = mgr.sent(Cfp)
    assert cfps, "the task was not announced"
    mgr.handle(peer.say(_bid(cfps[-1][1])))
    (_, awarded), = mgr.sent(Award)
    mgr.handle(peer.say(Accept("T-1", awarded.attempt, queued=1, est_start_ms=est_start_ms)))
    task = mgr.node.manager.tasks["T-1"]
    assert task.state == "assigned" and task.attempts[-1].state == "waiting"
    return mgr, peer, task, awarded.attempt


def _bid(cfp_msg):
    return Bid(cfp_msg.task_id, cfp_msg.attempt, slots=1, slots_free=0, cpu_percent=5.0, mem_available=1 << 33)


def test_a_queued_attempt_past_its_promised_start_is_reclaimed_and_the_task_requeued(trust):
    mgr, peer, task, attempt = queued_at_peer(trust, est_start_ms=500)
    margin = mgr.node.manager.settings.heartbeat_timeout
    for t in (1.0, 2.0, 3.0, 4.0):                          # heartbeats: still queued, nothing to wait for
        mgr.handle(peer.say(Progress("T-1", attempt, int(t * 1000), None, est_start_ms=0), t), t)
    assert task.attempts[-1].state == "waiting"
    mgr.tick(0.5 + margin + 0.01)
    assert task.attempts[-1].state == "lost" and task.attempts[-1].why == Why.PROMISE_BROKEN
    assert task.state == "queued"
    assert [m.attempt for _, m in mgr.sent(Cancel, to=peer.id)] == [attempt]


def test_renewed_promises_cannot_hold_an_attempt_past_the_cap(trust):
    mgr, peer, task, attempt = queued_at_peer(trust, est_start_ms=1000)
    t = 0.0
    while t < QUEUE_WAIT_CAP - 1:
        t += 1.0
        mgr.handle(peer.say(Progress("T-1", attempt, int(t * 1000), None, est_start_ms=1000), t), t)
        assert task.attempts[-1].state == "waiting"
    mgr.tick(QUEUE_WAIT_CAP + 0.01)
    assert task.attempts[-1].state == "lost"


def test_a_node_whose_memory_runs_short_loses_its_queued_task_to_another():
    """Legitimately stuck: the queue's head cannot start for want of memory. The manager takes it back
    after the promise and a margin, and the task runs elsewhere."""
    c = sim(slots=(1, 1))
    n1 = c.id_of("n1")
    ids = [c.submit("n0", TaskSpec(["sleep", "3"], requirements=Requirements(mem=1 << 30))) for _ in range(8)]
    assert c.run_until(lambda: any(c.task("n0", t).attempts and c.task("n0", t).attempts[-1].state == "waiting"
                                   and c.task("n0", t).attempts[-1].node == n1 for t in ids), 10)
    waiting = next(t for t in ids if c.task("n0", t).attempts and c.task("n0", t).attempts[-1].state == "waiting"
                   and c.task("n0", t).attempts[-1].node == n1)
    c.deliver(n1, ResourcesRead(SHORT_MEMORY))
    assert c.run_until(lambda: all(c.task("n0", t).state == "succeeded" for t in ids), 120)
    attempts = c.task("n0", waiting).attempts
    assert attempts[0].state == "lost" and attempts[0].why == Why.PROMISE_BROKEN
    assert attempts[-1].node != n1


# -- the property: random interleavings, every task ends, invariants hold at every step ------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_every_task_ends_and_invariants_hold_under_random_interleavings(seed):
    rng = random.Random(seed)
    c = SimCluster(seed=seed, latency=0.001, jitter=0.01, validate=True, bid_window=0.02, award_timeout=0.3)
    names = ["n0", "n1", "n2", "n3"]
    for name in names:
        c.add_node(name, slots=1, prefetch=rng.choice((1, 2)))
    c.run_for(2.0)
    managers = names[:2]
    ids = []
    for _ in range(60):
        m = rng.choice(managers)
        ids.append((m, c.submit(m, TaskSpec(["sleep", f"{rng.uniform(0.0, 0.05):.3f}"], retries=1))))
        if rng.random() < 0.3:
            c.run_for(rng.uniform(0.0, 0.05))
        roll = rng.random()
        if roll < 0.1:                                  # the CPU reading jumps across the threshold
            c.deliver(c.id_of(rng.choice(names)), ResourcesRead(BUSY_CPU if rng.random() < 0.5 else IDLE))
        elif roll < 0.15 and ids:
            c.cancel(*rng.choice(ids))
        elif roll < 0.18:                               # a contractor (never a manager) crashes, comes back
            victim = rng.choice(names[2:])
            c.crash(victim)
            c.run_for(rng.uniform(0.0, 0.2))
            c.restart(victim)
    for nid in c.nodes:
        c.deliver(nid, ResourcesRead(IDLE))
    assert c.run_until(lambda: all(c.task(m, t).state in ("succeeded", "failed", "cancelled") for m, t in ids), 600), \
        [c.task(m, t).to_doc() for m, t in ids if c.task(m, t).state not in ("succeeded", "failed", "cancelled")][:2]
