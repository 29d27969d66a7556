"""One cluster, one view, in the core: whom a node asks about a task it does not manage, how the
answer (or the silence) becomes one Reply, how a peer's query is handed to the driver, and where a
running attempt's live output goes. Real Nodes, fake peers speaking signed frames, time by hand."""

import json

import pytest

from xchanged.protocol import codec
from xchanged.protocol.cluster_view import NO_SUCH_TASK, UNREACHABLE
from xchanged.protocol.effects import Audit, LiveOutput, Reply, ServeQuery, StartTask
from xchanged.protocol.events import (
    CancelRequested,
    Capacity,
    OutputWritten,
    QueryRequested,
    ResourcesRead,
    TaskSubmitted,
    TimerFired,
)
from xchanged.protocol.membership import GossipSettings
from xchanged.protocol.messages import (
    ANSWER_CHUNK,
    OUTPUT_CHUNK,
    Accept,
    Answer,
    Award,
    Output,
    Query,
    Requirements,
    TaskSpec,
    answer_parts,
)
from xchanged.protocol.signing import sign
from xchanged.protocol.task_ids import make_task_id, manager_tag, names, tag_of
from xchanged.sim.cluster import SimCluster

from .fakes import FakePeer, NodeUnderTest

CAPACITY = Capacity(cpus=2, cpu_percent=5.0, mem_total=1 << 34, mem_available=1 << 33)


class Asker(NodeUnderTest):
    """The node a client asked; it manages none of the tasks asked about."""

    def ask(self, rid: int, op: str = "status", task_id: str = "", t: float | None = None, **fields) -> list:
        return self.handle(QueryRequested(rid, Query(rid, op, task_id, **fields)), t)

    def tick(self, t: float) -> list:
        return self.handle(TimerFired(), t)

    def replies(self, rid: int) -> list[Reply]:
        return [e for e in self.effects if isinstance(e, Reply) and e.request_id == rid]

    def queried(self, rid: int) -> set[str]:
        return {pid for targets, m in self.sent(Query) if m.request_id == rid for pid, _ in targets}


def alive_until(node: Asker, peers: list[FakePeer], start: float, end: float) -> None:
    """The peers keep gossiping (alive, but not answering) from `start` to `end`, the clock ticking."""
    t = start
    while t < end:
        t = min(end, t + 0.25)
        for p in peers:
            node.hear(p, p.load(), t)
        node.tick(t)


def answer(peer: FakePeer, rid: int, doc, t: float = 0.0) -> list:
    return [peer.say(part, t) for part in answer_parts(rid, json.dumps(doc).encode())]


@pytest.fixture
def world(trust):
    node = Asker(trust, name="asker", query_timeout=3.0)
    peers = [FakePeer(n, trust) for n in ("p1", "p2")]
    for p in peers:
        node.hear(p, p.load())
    return node, peers


def doc_of(task_id: str, state: str = "running") -> dict:
    return {"id": task_id, "state": state, "node": "p2", "attempts": []}


# -- task ids ---------------------------------------------------------------------------------------


def test_a_task_id_names_its_manager_and_stays_unique(trust):
    peer = FakePeer("m", trust)
    a, b = make_task_id(peer.id, bytes(10)), make_task_id(peer.id, bytes(9) + b"\1")
    assert a != b and len(a) == 26 and a.startswith("T-") and a[2:].isalnum() and a[2:].isupper()
    assert manager_tag(a) == manager_tag(b) == tag_of(peer.id) and names(a, peer.id)
    assert a[:10] == b[:10]                         # every id of one manager starts alike
    for old in ("T-ABCDEFGHIJKLMNOP", "T-0000000000000001", "nonsense", "T-" + "1" * 24):
        assert manager_tag(old) is None            # no tag: asked of every peer
    with pytest.raises(ValueError):
        make_task_id(peer.id, b"short")


def test_queries_and_answers_are_checked_when_built_and_received(trust):
    for bad in (dict(op="frob", task_id="T-1"), dict(op="tasks", task_id="T-1"), dict(op="status"),
                dict(op="wait", task_id="T-1", wait_ms=10**9), dict(op="logs", task_id="T-1", offsets=[-1, 0]),
                dict(op="tasks", limit=0)):
        with pytest.raises(ValueError):
            Query(1, **bad)
    with pytest.raises(ValueError):
        Answer(1, True, part=3, parts=2)
    with pytest.raises(ValueError):
        Output("T-1", 1, "stdin", 0, b"")
    peer = FakePeer("p", trust)
    q = Query(5, "logs", "T-1", follow=True, offsets=[3, 4], wait_ms=2000, user="alice")
    assert peer.env(q).message == q                 # a round trip through the codec
    frame = peer.encoder.encode(Query(6, "status", "T-1"), 0)
    forged = frame.replace(b"status", b"frobbb")    # re-signed below, so only the body is wrong
    signed = forged[:-64]
    with pytest.raises(codec.DecodeError) as err:
        codec.decode(signed + sign(peer.key, signed), trust)
    assert err.value.reason == codec.INVALID_BODY


# -- asking -----------------------------------------------------------------------------------------


def test_a_tagged_id_is_asked_of_its_manager_alone_and_answered_with_its_document(world):
    node, (p1, p2) = world
    tid = make_task_id(p1.id, bytes(10))
    node.ask(7, "status", tid, t=1.0)
    assert node.queried(7) == {p1.id}
    for event in answer(p1, 7, doc_of(tid)):
        node.handle(event)
    [reply] = node.replies(7)
    assert reply.ok and reply.result == doc_of(tid)


def test_an_answer_in_parts_is_joined_in_any_order(world):
    node, (p1, _) = world
    tid = make_task_id(p1.id, bytes(10))
    big = dict(doc_of(tid), blob="x" * (2 * ANSWER_CHUNK + 10))
    node.ask(8, "status", tid)
    parts = answer(p1, 8, big)
    assert len(parts) == 3
    for event in reversed(parts):
        assert node.replies(8) == []
        node.handle(event)
    [reply] = node.replies(8)
    assert reply.ok and reply.result == big


def test_a_silent_manager_is_unreachable_after_the_query_timeout_with_what_was_last_known(world):
    node, (p1, _) = world
    tid = make_task_id(p1.id, bytes(10))
    node.ask(1, "status", tid, t=1.0)
    for event in answer(p1, 1, doc_of(tid), t=1.0):
        node.handle(event)
    node.ask(2, "status", tid, t=2.0)
    alive_until(node, [p1], 2.0, 4.99)
    assert node.replies(2) == []
    node.tick(5.0)                                   # 2.0 + query_timeout
    [reply] = node.replies(2)
    assert not reply.ok and reply.result["code"] == UNREACHABLE
    assert reply.result["last_known"] == doc_of(tid) and reply.result["manager"]["id"] == p1.id
    assert "p1" in reply.error and "running" in reply.error


def test_a_wait_query_waits_as_long_as_it_asked_the_manager_to(world):
    node, (p1, _) = world
    tid = make_task_id(p1.id, bytes(10))
    node.ask(3, "wait", tid, t=0.0, wait_ms=10_000)
    alive_until(node, [p1], 0.0, 12.99)
    assert node.replies(3) == []
    node.tick(13.0)
    assert node.replies(3)[0].result["code"] == UNREACHABLE and "within 13s" in node.replies(3)[0].error


def test_a_dead_manager_is_answered_for_at_once_and_its_pending_queries_end_when_it_dies(trust):
    node = Asker(trust, name="asker", query_timeout=30.0,
                 gossip=GossipSettings(interval=0.5, suspect_after=1.5, dead_after=4.0, probe_k=0))
    p1, p2 = FakePeer("p1", trust), FakePeer("p2", trust)
    for p in (p1, p2):
        node.hear(p, p.load())
    tid = make_task_id(p1.id, bytes(10))
    node.ask(1, "logs", tid, t=0.5, follow=True, wait_ms=5000)
    t = 0.5
    while not node.replies(1):                       # p2 keeps talking; p1 has gone silent
        t += 0.25
        assert t < 6.0, "the dead manager's query was not answered when it was declared dead"
        node.hear(p2, p2.load(), t)
        node.tick(t)
    [reply] = node.replies(1)
    assert reply.result["code"] == UNREACHABLE and "declared dead" in reply.error
    sent_before = len(node.sent(Query))
    node.ask(2, "status", tid, t=t)                  # now: no query goes out, the answer is at once
    assert len(node.sent(Query)) == sent_before
    assert node.replies(2)[0].result["code"] == UNREACHABLE


def test_an_id_without_a_tag_is_asked_of_every_peer_and_the_one_that_has_it_answers(world):
    node, (p1, p2) = world
    old = "T-ABCDEFGHIJKLMNOP"
    node.ask(1, "status", old)
    assert node.queried(1) == {p1.id, p2.id}
    node.hear(p1, Answer(1, False, code=NO_SUCH_TASK, error="no such task"))
    assert node.replies(1) == []
    for event in answer(p2, 1, doc_of(old)):
        node.handle(event)
    assert node.replies(1)[0].result == doc_of(old)

    node.ask(2, "status", old)                       # nobody has it
    for p in (p1, p2):
        node.hear(p, Answer(2, False, code=NO_SUCH_TASK, error="no such task"))
    [reply] = node.replies(2)
    assert not reply.ok and reply.result["code"] == NO_SUCH_TASK

    node.ask(3, "status", old, t=1.0)                # one says no, one is silent: it may be the manager
    node.hear(p1, Answer(3, False, code=NO_SUCH_TASK, error="no such task"))
    alive_until(node, [p1, p2], 1.0, 4.0)
    [reply] = node.replies(3)
    assert reply.result["code"] == UNREACHABLE and "p2" in reply.error


def test_the_managers_own_error_is_passed_on(world):
    node, (p1, _) = world
    tid = make_task_id(p1.id, bytes(10))
    node.ask(1, "logs", tid)
    node.hear(p1, Answer(1, False, code="error", error=f"no output recorded for {tid} yet"))
    [reply] = node.replies(1)
    assert not reply.ok and reply.error.startswith("no output recorded") and reply.result["code"] == "error"


def test_tasks_of_every_manager_list_the_unreachable_ones_too(world):
    node, (p1, p2) = world
    node.ask(1, "tasks", t=1.0, limit=5)
    assert node.queried(1) == {p1.id, p2.id}
    liar = {"tasks": [doc_of("T-A"), doc_of("T-B")], "total": 9, "truncated": True, "name": "evil", "id": "N0"}
    for event in answer(p1, 1, liar, t=1.1):
        node.handle(event)
    assert node.replies(1) == []
    alive_until(node, [p1, p2], 1.1, 4.0)
    [reply] = node.replies(1)
    by_name = {m["name"]: m for m in reply.result["managers"]}
    assert set(by_name) == {"p1", "p2"}
    assert by_name["p1"]["status"] == "ok" and by_name["p1"]["id"] == p1.id       # it cannot rename itself
    assert [d["id"] for d in by_name["p1"]["tasks"]] == ["T-A", "T-B"] and by_name["p1"]["truncated"]
    assert by_name["p2"]["status"] == "unreachable" and "no answer" in by_name["p2"]["error"]


def test_answers_nobody_asked_for_change_nothing(world, trust):
    node, (p1, p2) = world
    stranger = FakePeer("p3", trust)
    node.hear(stranger, stranger.load())
    tid = make_task_id(p1.id, bytes(10))
    node.ask(1, "status", tid)
    for event in answer(p2, 1, doc_of(tid, "succeeded")) + answer(stranger, 99, doc_of(tid)):
        node.handle(event)                          # not the peer asked; no such request
    assert node.replies(1) == [] and node.node.view.stats["stray_answers"] == 2
    node.hear(p1, Answer(1, True, b"{not json"))
    [reply] = node.replies(1)
    assert not reply.ok and "not JSON" in reply.error
    for event in answer(p1, 1, doc_of(tid)):          # too late: the query has ended
        node.handle(event)
    assert len(node.replies(1)) == 1


def test_a_node_asked_about_its_own_id_says_no_such_task_without_asking_anyone(world):
    node, _ = world
    node.ask(1, "status", make_task_id(node.id, bytes(10)))
    assert node.queried(1) == set() and node.replies(1)[0].result["code"] == NO_SUCH_TASK


# -- answering, cancelling, live output ----------------------------------------------------------


def test_a_peers_query_is_handed_to_the_driver_to_serve(world, trust):
    node, (p1, _) = world
    q = Query(4, "cancel", "T-X", user="alice")
    node.hear(p1, q)
    [serve] = [e for e in node.effects if isinstance(e, ServeQuery)]
    assert serve.asker == (p1.id, p1.address) and serve.asker_name == "p1" and serve.query == q
    unknown = FakePeer("nobody", trust)              # trusted, but never sent a load: no address to answer
    node.hear(unknown, Query(5, "status", "T-X"))
    assert len([e for e in node.effects if isinstance(e, ServeQuery)]) == 1
    assert node.node.view.stats["unanswerable"] == 1


class ManagerNode(NodeUnderTest):
    """Manages one task, running at p1."""

    def __init__(self, trust):
        super().__init__(trust, name="mgr", labels={"role": "manager"})
        self.handle(ResourcesRead(CAPACITY))
        self.p1, self.p2 = FakePeer("p1", trust), FakePeer("p2", trust)
        for p in (self.p1, self.p2):
            self.hear(p, p.load(slots=1, free=1 if p is self.p1 else 0, labels={"role": "worker"}))
        self.node.manager._record(self.p1.id).successes = 1          # known: a direct award
        self.tid = make_task_id(self.id, bytes(10))
        spec = TaskSpec(["work"], requirements=Requirements(labels={"role": "worker"}))
        self.handle(TaskSubmitted(1, self.tid, spec))
        [(_, award)] = self.sent(Award, to=self.p1.id)
        self.attempt = award.attempt
        self.hear(self.p1, Accept(self.tid, self.attempt))


def test_the_manager_keeps_live_output_of_the_current_attempt_from_its_contractor_only(trust):
    node = ManagerNode(trust)
    assert node.node.manager.tasks[node.tid].state == "running"
    node.hear(node.p1, Output(node.tid, node.attempt, "stdout", 0, b"line-1\n"))
    node.hear(node.p2, Output(node.tid, node.attempt, "stdout", 7, b"forged\n"))        # not its contractor
    node.hear(node.p1, Output(node.tid, node.attempt + 5, "stdout", 0, b"stale\n"))     # not its attempt
    node.hear(node.p1, Output("T-OTHER", 1, "stdout", 0, b"?\n"))                       # not our task
    kept = [e for e in node.effects if isinstance(e, LiveOutput)]
    assert [(e.task_id, e.attempt, e.stream, e.offset, e.data) for e in kept] == \
        [(node.tid, node.attempt, "stdout", 0, b"line-1\n")]
    assert node.node.view.stats["stale_output"] == 3


def test_a_cancel_from_another_node_is_audited_with_who_asked(trust):
    node = ManagerNode(trust)
    node.handle(CancelRequested(9, node.tid, by_node=node.p2.id, by_user="alice"))
    [entry] = [e.entry for e in node.effects if isinstance(e, Audit) and e.entry["event"] == "cancel"]
    assert entry["requested_by"] == node.p2.id and entry["user"] == "alice" and entry["manager"] == node.id
    task = node.node.manager.tasks[node.tid]
    assert task.state == "cancelled" and task.why == "cancelled" and "alice" in task.reason and "p2" in task.reason
    local = ManagerNode(trust)
    local.handle(CancelRequested(1, local.tid))
    [entry] = [e.entry for e in local.effects if isinstance(e, Audit) and e.entry["event"] == "cancel"]
    assert entry["requested_by"] == local.id and entry["user"] == ""


def test_the_contractor_streams_what_a_running_attempt_writes_to_its_manager(trust):
    node = NodeUnderTest(trust, name="worker", slots=1)
    node.handle(ResourcesRead(CAPACITY))
    manager = FakePeer("mgr", trust)
    node.hear(manager, manager.load())
    node.hear(manager, Award("T-1", 3, TaskSpec(["work"])))
    assert [e for e in node.effects if isinstance(e, StartTask)]
    node.handle(OutputWritten("T-1", 3, "stdout", b"hello\n"))
    node.handle(OutputWritten("T-1", 3, "stderr", b"oops\n"))
    node.handle(OutputWritten("T-1", 3, "stdout", b"x" * (OUTPUT_CHUNK + 1)))
    node.handle(OutputWritten("T-9", 1, "stdout", b"not running here\n"))
    sent = [(m.stream, m.offset, len(m.data)) for _, m in node.sent(Output, to=manager.id)]
    assert sent == [("stdout", 0, 6), ("stderr", 0, 5), ("stdout", 6, OUTPUT_CHUNK), ("stdout", 6 + OUTPUT_CHUNK, 1)]


# -- through the simulator's driver -------------------------------------------------------------------


def test_in_the_simulator_any_node_reads_another_managers_task_until_it_crashes():
    cluster = SimCluster(seed=3, validate=True, query_timeout=2.0)
    for name in ("a", "b", "c"):
        cluster.add_node(name)
    cluster.run_for(3.0)
    tid = cluster.submit("a", TaskSpec(["sleep", "1"]), task_id=make_task_id(cluster.id_of("a"), bytes(10)))
    old = cluster.submit("a", TaskSpec(["sleep", "1"]))                    # an id without a tag
    cluster.run_until(lambda: all(cluster.task("a", t).state == "succeeded" for t in (tid, old)), limit=30)
    c = cluster.node("c")
    for rid, task_id in ((9001, tid), (9002, old)):
        cluster.deliver(c.node.id, QueryRequested(rid, Query(rid, "status", task_id)))
        cluster.run_until(lambda: rid in c.replies, limit=5)
        assert c.replies[rid].ok and c.replies[rid].result["state"] == "succeeded"
    cluster.deliver(c.node.id, QueryRequested(9003, Query(9003, "tasks")))
    cluster.run_until(lambda: 9003 in c.replies, limit=5)
    listed = {m["name"]: m for m in c.replies[9003].result["managers"]}
    assert {d["id"] for d in listed["a"]["tasks"]} == {tid, old} and listed["b"]["tasks"] == []
    cluster.crash("a")
    start = cluster.now
    cluster.deliver(c.node.id, QueryRequested(9004, Query(9004, "status", tid)))
    cluster.run_until(lambda: 9004 in c.replies, limit=10)
    reply = c.replies[9004]
    assert not reply.ok and reply.result["code"] == UNREACHABLE and cluster.now - start <= 2.0 + 1e-6
    assert reply.result["last_known"]["state"] == "succeeded"
