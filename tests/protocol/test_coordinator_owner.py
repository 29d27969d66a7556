"""A coordinator whose owner (the composite's manager) is declared dead sends it nothing, sends at
once when it comes back, and gives the coordination up after OWNER_RETENTION (coordinator.py)."""

from __future__ import annotations

from collections import Counter

from tests.protocol.test_composite import cluster, composite, done, sleeps
from xchanged.protocol import coordinator as coordinator_module
from xchanged.protocol.specs import TaskSpec


def coordinating(sim, tid):
    """(the coordinator's sim node, its Coordinator, the frames it sends: (time, peer, type))."""
    assert sim.run_until(lambda: sim.task("n0", tid).state == "running", 10)
    nid = sim.task("n0", tid).attempts[-1].node
    coord = sim.nodes[nid].node.coordinator
    sent: list[tuple[float, str, str]] = []
    send = coord._send

    def recording(peer, message, fallback=""):
        sent.append((sim.now, peer, message.TYPE))
        send(peer, message, fallback)
    coord._send = recording
    return sim.nodes[nid], coord, sent


def dead_to(sim, node, peer_id) -> bool:
    peer = node.node.membership.peers.get(peer_id)
    return peer is not None and peer.health == "dead"


def test_an_owner_declared_dead_is_sent_nothing_and_gets_everything_at_once_when_back():
    sim = cluster(n=3, slots=2, owner_coordinates=False)
    tid = sim.submit("n0", composite(sleeps([3.0] * 4), reduce=TaskSpec(["sleep", "0"])))
    node, coord, sent = coordinating(sim, tid)
    owner = sim.id_of("n0")
    sim.crash("n0")
    assert sim.run_until(lambda: dead_to(sim, node, owner), 60)
    declared = sim.now
    [c] = coord.coordinations.values()
    assert c.owner_dead_since is not None
    sim.run_for(120)                                   # the parts and the reduce end meanwhile
    assert not c.in_flight and c.report is not None    # a report waits for the owner
    assert [s for s in sent if s[1] == owner and s[0] > declared + 0.01] == []
    sim.restart("n0")
    back = sim.now
    doc = done(sim, tid, limit=60)
    assert doc["state"] == "succeeded" and len(doc["attempts"]) == 1, doc   # no re-award: the result came
    manager = sim.nodes[owner].node.manager
    heartbeat_timeout = manager.settings.heartbeat_timeout
    assert sim.now - back < heartbeat_timeout, (sim.now - back, heartbeat_timeout)
    ran = Counter(e.spec.name for _, _, e in sim.runs if e.spec.parent == tid)
    assert ran and all(n == 1 for n in ran.values()), ran
    assert sim.run_until(lambda: not coord.coordinations, 10)          # the manager's ack ends it


def test_a_final_result_for_an_owner_that_never_returns_is_given_up_after_the_retention(monkeypatch):
    monkeypatch.setattr(coordinator_module, "OWNER_RETENTION", 300.0)
    sim = cluster(n=3, slots=2, owner_coordinates=False)
    tid = sim.submit("n0", composite(sleeps([0.2] * 2)))
    node, coord, sent = coordinating(sim, tid)
    owner = sim.id_of("n0")
    [c] = coord.coordinations.values()
    assert sim.run_until(lambda: c.final is not None, 30)
    sim.crash("n0")                                    # decommissioned: never comes back
    assert sim.run_until(lambda: dead_to(sim, node, owner), 60)
    declared = sim.now
    sim.run_for(200)
    assert coord.coordinations, "kept while the owner may still come back"
    assert [s for s in sent if s[1] == owner and s[0] > declared + 0.01] == []
    assert sim.run_until(lambda: not coord.coordinations, 200)
    assert sim.now - declared >= 300.0
    assert coord.next_deadline() == float("inf")


def test_an_award_of_an_invalid_composite_from_a_peer_is_rejected_not_a_crash():
    """Clients' composites are checked at submit; one that reaches a coordinator anyway (a buggy or
    hostile peer: the simulator's submit skips the control checks) is rejected with the reason."""
    from xchanged.protocol.specs import CompositeSpec, Step

    sim = cluster(n=3, owner_coordinates=False)
    cycle = CompositeSpec([Step("a", TaskSpec(["sleep", "1"]), depends_on=["b"]),
                           Step("b", TaskSpec(["sleep", "1"]), depends_on=["a"])])
    tid = sim.submit("n0", TaskSpec(argv=[], composite=cycle))
    assert sim.run_until(lambda: "invalid composite" in (sim.task("n0", tid).reason or ""), 30)
    assert "cycle" in sim.task("n0", tid).reason
    assert all(not s.node.coordinator.coordinations for s in sim.nodes.values())
