"""One cluster, one view: questions about tasks other nodes manage, asked over the signed peer
protocol, and where a running attempt's live output goes.

Asking (a client asked this node about a task it does not manage: `QueryRequested`):
- Whom to ask. A task id names its manager (task_ids.py): a known peer with that tag is asked alone
  (ONE). An id without a tag, or naming a node we do not know, is asked of every peer not declared
  dead (ANY): the first that has it answers; the others say `no_such_task`. `tasks --cluster` asks
  every peer (ALL) and lists each one: its tasks, or why it could not be asked.
- It never hangs. A manager already declared dead is answered for at once; a query waits at most
  `query_timeout` (plus the `wait_ms` it asked the answerer to wait), and a peer declared dead
  meanwhile counts as having answered "unreachable" at that moment. Every pending query ends in
  exactly one `Reply`.
- An unreachable manager's answer says so, with code `manager_unreachable`, when we last heard from
  it, and the task's last document this node saw (from earlier answers; LAST_KNOWN of them kept).
- Answers come in `parts` (messages.answer_parts); only the peers asked may answer, each once; the
  joined document must be JSON, else it counts as that peer's error. Anything else is ignored.

Answering (`query` from a trusted peer): the core emits `ServeQuery`, which the driver serves from
its store, audit log and live output exactly as the same control operation locally. The answerer
only ever answers for itself (never forwards), so a query cannot loop.

Live output: a contractor sends what a running attempt writes to its manager (`output`, with the
byte offset in its stream); the manager keeps it (`LiveOutput`) only for the current attempt of a
task it manages, from the node running it; anything else is stale and dropped.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .codec import Envelope
from .effects import LiveOutput, Outbox, Reply, Send, ServeQuery
from .errors import LocalProtocolError
from .membership import DEAD, Membership
from .messages import Answer, Output, Query
from .task_ids import manager_tag, tag_of

ONE, ANY, ALL = "one", "any", "all"
UNREACHABLE = "manager_unreachable"       # error codes of a Reply's result["code"]
NO_SUCH_TASK = "no_such_task"
BUSY = "busy"
LAST_KNOWN = 1000                         # task documents remembered from answers, for "last known"
MAX_PENDING = 4096                        # queries in flight; more are refused with `busy`
REMEMBERED_OPS = frozenset({"status", "wait", "cancel"})     # answers that are a task's document


@dataclass(slots=True)
class Pending:
    """A query in flight: whom we still wait for, and what came so far."""

    request_id: int
    query: Query
    mode: str                                   # ONE | ANY | ALL
    asked: tuple[str, ...]                      # every peer asked, in order
    waiting: set[str]                           # those whose answer is still due
    deadline: float
    parts: dict[str, dict[int, bytes]] = field(default_factory=dict)   # sender -> part -> body
    expected: dict[str, int] = field(default_factory=dict)             # sender -> parts announced
    results: dict[str, dict[str, Any]] = field(default_factory=dict)   # ALL: sender -> its entry
    unreachable: dict[str, str] = field(default_factory=dict)          # peer -> why it did not answer


class ClusterView:
    def __init__(self, self_id: str, query_timeout: float, out: Outbox, membership: Membership,
                 lookup: Callable[[str], tuple[str, str]]):
        self.self_id = self_id
        self.query_timeout = query_timeout
        self.out = out
        self.membership = membership
        self.lookup = lookup                    # peer id -> (address, name)
        self.pending: dict[int, Pending] = {}
        self._timers: list[tuple[float, int]] = []
        self.last_known: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()   # id -> (doc, wall ms)
        self.stats = {"queries": 0, "answers": 0, "stray_answers": 0, "served": 0, "unanswerable": 0,
                      "unreachable": 0, "stale_output": 0}

    # -- asking ---------------------------------------------------------------------------------

    def request(self, request_id: int, query: Query, now: float, wall_ms: int) -> None:
        self.stats["queries"] += 1
        if len(self.pending) >= MAX_PENDING or request_id in self.pending:
            self._fail(request_id, BUSY, f"too many queries in flight ({len(self.pending)})")
            return
        unreachable: dict[str, str] = {}
        if query.op == "tasks":
            mode, targets = ALL, self._everyone(unreachable)
        else:
            manager = self.manager_of(query.task_id)
            if manager == self.self_id:
                self._fail(request_id, NO_SUCH_TASK, f"no such task: {query.task_id}")
                return
            peer = self.membership.peers.get(manager) if manager else None
            if peer is not None and peer.health == DEAD:
                self._unreachable(request_id, query, manager or "", "was declared dead", now, wall_ms)
                return
            if peer is not None and peer.address:
                mode, targets = ONE, [peer.id]
            else:
                mode, targets = ANY, self._everyone(unreachable)
                if not targets:
                    self._finish_any(Pending(request_id, query, ANY, (), set(), now, unreachable=unreachable),
                                     now, wall_ms)
                    return
        p = Pending(request_id, query, mode, tuple(targets), set(targets),
                    now + self.query_timeout + query.wait_ms / 1000, unreachable=unreachable)
        if not targets:                                   # ALL with nobody to ask: ourselves only
            self._finish_all(p)
            return
        self.pending[request_id] = p
        heapq.heappush(self._timers, (p.deadline, request_id))
        self.out.emit(Send, targets=tuple((t, self.lookup(t)[0]) for t in targets), message=query)

    def manager_of(self, task_id: str) -> str | None:
        """The node a task id names as its manager: our id, a known peer's, or None (no tag, or
        a node we have never heard of)."""
        tag = manager_tag(task_id)
        if tag is None:
            return None
        if tag == tag_of(self.self_id):
            return self.self_id
        return next((p.id for p in self.membership.peers.values() if tag_of(p.id) == tag), None)

    def _everyone(self, unreachable: dict[str, str]) -> list[str]:
        """Every peer we could ask (not declared dead, address known); the dead ones into `unreachable`."""
        targets = []
        for peer in self.membership.peers.values():
            if peer.health == DEAD:
                unreachable[peer.id] = "declared dead"
            elif peer.address:
                targets.append(peer.id)
        return sorted(targets)

    def on_answer(self, env: Envelope, now: float, wall_ms: int) -> None:
        ans: Answer = env.message
        p = self.pending.get(ans.request_id)
        sender = env.sender
        if p is None or sender not in p.waiting:
            self.stats["stray_answers"] += 1
            return
        if not ans.ok:
            self._answered(p, sender, None, ans.code or "error", ans.error, now, wall_ms)
            return
        expected = p.expected.setdefault(sender, ans.parts)
        parts = p.parts.setdefault(sender, {})
        if expected != ans.parts or ans.part in parts:
            self._answered(p, sender, None, "error", "malformed answer (parts do not match)", now, wall_ms)
            return
        parts[ans.part] = ans.body
        if len(parts) < expected:
            return
        body = b"".join(parts[i] for i in range(expected))
        del p.parts[sender]
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self._answered(p, sender, None, "error", "malformed answer (not JSON)", now, wall_ms)
            return
        self.stats["answers"] += 1
        self._answered(p, sender, doc, "", "", now, wall_ms)

    def _answered(self, p: Pending, sender: str, doc: Any, code: str, error: str, now: float,
                  wall_ms: int) -> None:
        p.waiting.discard(sender)
        p.parts.pop(sender, None)
        if p.mode == ALL:
            name = self.lookup(sender)[1]
            if isinstance(doc, dict):
                for task in doc.get("tasks") or ():
                    self._remember(task, wall_ms)
                p.results[sender] = {"id": sender, "name": name, "status": "ok", "tasks": doc.get("tasks"),
                                     "total": doc.get("total"), "truncated": bool(doc.get("truncated"))}
            else:
                p.results[sender] = {"id": sender, "name": name, "status": "error",
                                     "error": error or "malformed answer", "code": code or "error"}
            if not p.waiting:
                self._finish_all(p)
            return
        if doc is not None:
            if p.query.op in REMEMBERED_OPS:
                self._remember(doc, wall_ms)
            self._end(p)
            self.out.emit(Reply, request_id=p.request_id, ok=True, result=doc)
        elif p.mode == ANY and code == NO_SUCH_TASK:
            if not p.waiting:
                self._finish_any(p, now, wall_ms)
        else:                                   # the manager's own error ("no output yet", ...)
            self._end(p)
            self._fail(p.request_id, code or "error", error, manager=self._who(sender, now))

    def _finish_any(self, p: Pending, now: float, wall_ms: int) -> None:
        """Nobody that answered has the task: say so, and who did not answer (it may be its manager)."""
        self._end(p)
        task_id = p.query.task_id
        if not p.unreachable:
            asked = f"none of the {len(p.asked)} other nodes manages it" if p.asked else "no other node to ask"
            self._fail(p.request_id, NO_SUCH_TASK, f"no such task: {task_id} ({asked})")
            return
        silent = ", ".join(f"{self.lookup(peer)[1] or peer} ({why})" for peer, why in sorted(p.unreachable.items()))
        self.stats["unreachable"] += 1
        self._fail(p.request_id, UNREACHABLE,
                   f"task {task_id}: no node that answered manages it; not answered by {silent}, "
                   "which may be its manager" + self._last_known_text(task_id, wall_ms),
                   last=self.last_known.get(task_id))

    def _finish_all(self, p: Pending) -> None:
        self._end(p)
        managers = [p.results[peer] for peer in p.asked if peer in p.results]
        for peer, why in sorted(p.unreachable.items()):
            managers.append({"id": peer, "name": self.lookup(peer)[1], "status": "unreachable", "error": why})
        self.out.emit(Reply, request_id=p.request_id, ok=True, result={"managers": managers})

    def _unreachable(self, request_id: int, query: Query, manager: str, why: str, now: float, wall_ms: int) -> None:
        self.stats["unreachable"] += 1
        name = self.lookup(manager)[1] or manager
        self._fail(request_id, UNREACHABLE,
                   f"manager unreachable: {name} ({manager}) {why}" + self._last_known_text(query.task_id, wall_ms),
                   manager=self._who(manager, now), last=self.last_known.get(query.task_id))

    def _who(self, peer_id: str, now: float) -> dict[str, Any]:
        peer = self.membership.peers.get(peer_id)
        return {"id": peer_id, "name": self.lookup(peer_id)[1],
                "health": peer.health if peer else "unknown",
                "last_seen_s": round(now - peer.last_heard, 3) if peer else None}

    def _last_known_text(self, task_id: str, wall_ms: int) -> str:
        known = self.last_known.get(task_id)
        if known is None:
            return "; nothing known of the task here"
        doc, when = known
        where = f" on {doc['node']}" if doc.get("node") else ""
        return f"; last known {max(0, wall_ms - when) / 1000:.0f}s ago: {doc.get('state')}{where}"

    def _fail(self, request_id: int, code: str, error: str, manager: dict[str, Any] | None = None,
              last: tuple[dict[str, Any], int] | None = None) -> None:
        details: dict[str, Any] = {"code": code}
        if manager is not None:
            details["manager"] = manager
        if code == UNREACHABLE:
            details["last_known"] = last[0] if last else None
            details["last_known_ms"] = last[1] if last else None
        self.out.emit(Reply, request_id=request_id, ok=False, error=error, result=details)

    def _end(self, p: Pending) -> None:
        self.pending.pop(p.request_id, None)

    def _remember(self, doc: Any, wall_ms: int) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or "state" not in doc:
            return
        self.last_known[doc["id"]] = (doc, wall_ms)
        self.last_known.move_to_end(doc["id"])
        while len(self.last_known) > LAST_KNOWN:
            self.last_known.popitem(last=False)

    # -- failures and time ----------------------------------------------------------------------

    def peer_died(self, peer_id: str, now: float, wall_ms: int) -> None:
        """A peer we wait for was declared dead: it has answered "unreachable", now."""
        for p in [p for p in self.pending.values() if peer_id in p.waiting]:
            if p.mode == ONE:
                self._end(p)
                self._unreachable(p.request_id, p.query, peer_id, "was declared dead", now, wall_ms)
                continue
            p.waiting.discard(peer_id)
            p.parts.pop(peer_id, None)
            p.unreachable[peer_id] = "declared dead"
            if not p.waiting:
                self._finish(p, now, wall_ms)

    def on_timer(self, now: float, wall_ms: int) -> None:
        while self._timers and self._timers[0][0] <= now:
            deadline, request_id = heapq.heappop(self._timers)
            p = self.pending.get(request_id)
            if p is None or p.deadline != deadline:
                continue
            waited = self.query_timeout + p.query.wait_ms / 1000
            if p.mode == ONE:
                self._end(p)
                self._unreachable(request_id, p.query, p.asked[0], f"did not answer within {waited:g}s", now, wall_ms)
                continue
            for peer in p.waiting:
                p.unreachable[peer] = f"no answer within {waited:g}s"
            p.waiting.clear()
            self._finish(p, now, wall_ms)

    def _finish(self, p: Pending, now: float, wall_ms: int) -> None:
        if p.mode == ALL:
            self._finish_all(p)
        else:
            self._finish_any(p, now, wall_ms)

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else float("inf")

    # -- answering and live output --------------------------------------------------------------

    def on_query(self, env: Envelope) -> None:
        """A trusted peer asks about our tasks: the driver serves it (we answer for ourselves only)."""
        address, name = self.lookup(env.sender)
        if not address:                          # we cannot answer a node we have no address for
            self.stats["unanswerable"] += 1
            return
        self.stats["served"] += 1
        self.out.emit(ServeQuery, asker=(env.sender, address), asker_name=name or env.sender, query=env.message)

    def on_output(self, env: Envelope, current: tuple[int, str] | None) -> None:
        """Output of an attempt of one of our tasks; `current` is (attempt, node) of the task's live
        attempt, if any. Kept only when it is that attempt, from that node."""
        out: Output = env.message
        if current != (out.attempt, env.sender):
            self.stats["stale_output"] += 1
            return
        self.out.emit(LiveOutput, task_id=out.task_id, attempt=out.attempt, stream=out.stream,
                      offset=out.offset, data=out.data)

    def validate_state(self) -> None:
        for rid, p in self.pending.items():
            if rid != p.request_id or p.mode not in (ONE, ANY, ALL):
                raise LocalProtocolError(f"query {rid}: bad record {p.request_id} {p.mode}")
            if not p.waiting or not p.waiting <= set(p.asked) or not set(p.parts) <= p.waiting:
                raise LocalProtocolError(f"query {rid}: waits for {p.waiting} of {p.asked}, parts of {set(p.parts)}")
