"""One cluster, one view, the daemon's side: control operations about tasks another node manages go
to that node over the signed peer protocol, and peers' questions about our tasks are answered by the
very same operations, so an answer is the document the manager gives locally.

- Asking (`forward`): `status`, `logs`, `wait`, `cancel` and `audit` of a task this node does not
  have become a `QueryRequested`; the core finds the manager (protocol/cluster_view.py) and replies
  with its document, or with why not (`manager_unreachable` and what was last known, never a hang).
  `tasks --cluster` (`tasks_cluster`) asks every peer and lists each manager, reachable or not.
- Answering (`serve`, for the core's `ServeQuery`): the operation runs here as a local one (never
  forwarded again), at most MAX_SERVING at once (more get `busy`), each in its own asyncio task;
  the JSON document goes back in `answer` frames. One larger than MAX_ANSWER_BYTES is cut: `logs`
  keeps the end of each stream (with a note), `tasks` the newest tasks; anything else is an error.
- Live output (`follow`, `live_doc`): what the running attempts of our tasks wrote so far
  (live_logs.py). `logs -f` is a series of long polls: each returns the bytes after the reader's
  offsets, waiting up to `wait_s` for some, and `done` once the task has ended and all is read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from ..protocol.errors import RemoteProtocolError
from ..protocol.events import QueryRequested
from ..protocol.lifecycle import TERMINAL
from ..protocol.messages import (
    ANSWER_CHUNK,
    MAX_ANSWER_PARTS,
    MAX_QUERY_LIMIT,
    MAX_QUERY_WAIT_MS,
    STREAMS,
    Answer,
    Query,
    answer_parts,
    from_body,
    to_body,
)
from ..protocol.signing import node_id
from .audit import read_records
from .audit_docs import record_doc
from .clock import wall_ms
from .control_args import optional_int, seconds
from .live_logs import LiveLogs
from .transport import ControlError

if TYPE_CHECKING:
    from ..protocol.effects import ServeQuery
    from .control import Control
    from .daemon import Daemon

log = logging.getLogger("xchanged")
FORWARDED = frozenset({"status", "logs", "wait", "cancel", "audit"})   # control ops that follow a task
MAX_SERVING = 256                     # peers' queries served at once
MAX_ANSWER_BYTES = MAX_ANSWER_PARTS * ANSWER_CHUNK
DEFAULT_LIMIT = 100                   # tasks listed per manager by `tasks --cluster`
FOLLOW_WAIT = 5.0                     # seconds a `logs -f` poll waits for new output
DEFAULT_WAIT = 30.0                   # as control.DEFAULT_WAIT: a wait that names no timeout


def complete_utf8(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8 sequence (a
    follower is given whole characters; the rest comes with the next poll)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:                      # ASCII or the lead byte of a sequence
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


def fit_answer(op: str, doc: Any) -> bytes:
    """The document as JSON, cut to MAX_ANSWER_BYTES where it can be: `logs` keeps the end of each
    stream (with a note), `tasks` the newest tasks; anything else too large is a ControlError."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    keep = MAX_ANSWER_BYTES
    while len(body) > MAX_ANSWER_BYTES:
        if op == "logs":
            keep //= 2
            doc = dict(doc, **{s: f"[xchanged: cut to its last {keep} characters to fit one answer]\n"
                                  + doc[s][-keep:] for s in STREAMS if isinstance(doc.get(s), str)
                               and len(doc[s]) > keep})
        elif op == "tasks" and doc["tasks"]:
            doc = dict(doc, tasks=doc["tasks"][len(doc["tasks"]) // 2 + 1:], truncated=True)
        else:
            raise ControlError(f"the answer ({len(body)} bytes) is larger than {MAX_ANSWER_BYTES} bytes")
        body = json.dumps(doc, separators=(",", ":")).encode()
    return body


class ClusterOps:
    def __init__(self, daemon: Daemon, control: Control):
        self.daemon = daemon
        self.control = control
        self.live = LiveLogs(daemon.config.executor.max_output)
        self._serving: set[asyncio.Task] = set()

    # -- asking another node ----------------------------------------------------------------------

    def query(self, request_id: int, op: str, args: dict) -> Query:
        """The peer query for a control request (checked as a peer would check it: ControlError)."""
        task_id = str(args.get("id") or "")
        wait_ms = 0
        if op == "wait":
            wait_ms = int(min(seconds(args, "timeout_s", DEFAULT_WAIT) * 1000, MAX_QUERY_WAIT_MS))
        elif op == "logs" and args.get("follow"):
            wait_ms = int(min(seconds(args, "wait_s", FOLLOW_WAIT) * 1000, MAX_QUERY_WAIT_MS))
        body = {"request_id": request_id, "op": op, "task_id": task_id, "state": str(args.get("state") or ""),
                "limit": args.get("limit") or DEFAULT_LIMIT, "attempt": args.get("attempt"),
                "follow": bool(args.get("follow")), "offsets": args.get("offsets") or [0, 0],
                "wait_ms": max(0, wait_ms), "user": str(args.get("user") or ""), "part": str(args.get("part") or ""),
                "admin": bool(args.get("admin"))}
        try:
            return from_body(Query, to_body(body))
        except RemoteProtocolError as exc:
            raise ControlError(f"bad request: {exc.detail}") from None

    async def forward(self, op: str, args: dict) -> Any:
        """Ask the task's manager (whom the core finds) for what `op` asks of it."""
        self.query(0, op, args)                                  # a bad request fails here, not at the peer
        return await self.control._request(lambda rid: QueryRequested(rid, self.query(rid, op, args)))

    async def tasks_cluster(self, args: dict) -> dict:
        """Every manager's tasks (at most `limit` each, the newest), merged, with each manager listed:
        `ok`, or `unreachable` / `error` with why."""
        state = str(args.get("state") or "")
        limit = args.get("limit") or DEFAULT_LIMIT
        if not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ControlError(f"limit must be an integer between 1 and {MAX_QUERY_LIMIT}")
        d = self.daemon
        own = {"id": d.id, "name": d.config.node.name, "status": "ok", **await self.own_tasks(state, limit)}
        remote = await self.control._request(lambda rid: QueryRequested(rid, Query(rid, "tasks", state=state,
                                                                                    limit=limit)))
        managers, tasks = [], []
        for m in [own, *remote["managers"]]:
            docs = m.pop("tasks", None)
            if m["status"] == "ok" and not isinstance(docs, list):
                m.update(status="error", error="malformed answer")
            for doc in docs if isinstance(docs, list) else ():
                if isinstance(doc, dict):
                    tasks.append(dict(doc, manager=m["name"], manager_id=m["id"]))
            m["listed"] = len(docs) if isinstance(docs, list) else 0
            managers.append(m)
        tasks.sort(key=lambda t: (t.get("submitted") or 0, t.get("manager") or "", t.get("order") or 0))
        return {"tasks": tasks, "managers": managers}

    async def own_tasks(self, state: str, limit: int) -> dict:
        docs = await self.control.tasks({"state": state, "limit": limit})          # the newest `limit`, by index
        counts = self.daemon.store.count_by_state()
        total = counts.get(state, 0) if state else sum(counts.values())
        return {"tasks": docs, "total": total, "truncated": total > limit}

    # -- answering another node -------------------------------------------------------------------

    def serve(self, effect: ServeQuery) -> None:
        if len(self._serving) >= MAX_SERVING:
            self._send(effect, [Answer(effect.query.request_id, False, code="busy",
                                       error=f"{self.daemon.config.node.name} is serving {MAX_SERVING} queries")])
            return
        task = asyncio.get_running_loop().create_task(self._serve(effect))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, effect: ServeQuery) -> None:
        q, control = effect.query, self.control
        args: dict[str, Any] = {"id": q.task_id, "local": True}
        try:
            if q.op == "status":
                doc = await control.status(args)
            elif q.op == "wait":
                doc = await control.wait(dict(args, timeout_s=q.wait_ms / 1000))
            elif q.op == "logs":
                doc = await control.logs(dict(args, attempt=q.attempt, follow=q.follow, offsets=list(q.offsets),
                                              wait_s=q.wait_ms / 1000, part=q.part or None, by_node=effect.asker[0],
                                              user=q.user, admin=q.admin))
            elif q.op == "cancel":
                doc = await control.cancel(dict(args, by_node=effect.asker[0], user=q.user, admin=q.admin))
            elif q.op == "tasks":
                doc = await self.own_tasks(q.state, q.limit)
            else:
                doc = await self.audit_records(args)
            frames = answer_parts(q.request_id, fit_answer(q.op, doc))
        except ControlError as exc:
            frames = [Answer(q.request_id, False, code=exc.code or "error", error=str(exc)[:1000])]
        except Exception as exc:            # a bug must not leave the asker waiting for its timeout
            log.exception("serving %s's %s query failed", effect.asker_name, q.op)
            frames = [Answer(q.request_id, False, code="error", error=f"internal error: {exc}"[:1000])]
        self._send(effect, frames)

    def _send(self, effect: ServeQuery, frames: list[Answer]) -> None:
        d = self.daemon
        for frame in frames:
            d.peers.send(effect.asker[0], effect.asker[1], d.encoder.encode(frame, wall_ms()))

    async def audit_records(self, args: dict) -> dict:
        """This node's audit records of one of its tasks, as `audit show --task --json` shows them."""
        doc = self.control.task_doc(str(args.get("id")))
        d = self.daemon
        names = {node_id(k): n for k, n in d.trust.keys.items()}

        def read() -> list[dict]:
            return [record_doc(r, lambda nid: names.get(nid or "", "") or (nid or ""), d.trust)
                    for r in read_records(d.audit.path) if r.entry.get("task") == doc["id"]]
        records = await asyncio.to_thread(read)
        return {"node": d.config.node.name, "node_id": d.id, "task": doc["id"], "records": records}

    async def close(self) -> None:
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)

    # -- live output ------------------------------------------------------------------------------

    def live_doc(self, doc: dict) -> dict | None:
        """What the task's latest attempt wrote so far (`logs` of a running task), if anything came."""
        buf = self.live.get(doc["id"])
        if buf is None:
            return None
        out = {s: buf.streams[s].read(0)[0].decode(errors="replace") for s in STREAMS}
        return {"id": doc["id"], "attempt": buf.attempt, **out, "live": not buf.finished, "state": doc["state"]}

    async def follow(self, args: dict) -> dict:
        """One poll of `logs -f`: what came after `offsets` (stdout, stderr bytes) of `attempt`."""
        task_id = str(args.get("id"))
        offsets = args.get("offsets") or [0, 0]
        attempt = args.get("attempt")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise ControlError("offsets must be two byte counts [stdout, stderr]")
        optional_int(args, "attempt")
        wait_s = min(seconds(args, "wait_s", FOLLOW_WAIT), MAX_QUERY_WAIT_MS / 1000)
        doc = self.control.task_doc(task_id)
        answer = self._read(doc, attempt, offsets)
        if answer is None:
            await self.live.changed(doc["id"], wait_s)
            doc = self.control.task_doc(task_id)
            answer = self._read(doc, attempt, offsets)
        if answer is None:                                       # nothing new yet: ask again
            answer = {"id": doc["id"], "attempt": attempt, "stdout": "", "stderr": "", "offsets": offsets,
                      "done": False, "state": doc["state"], "live": True}
        return answer

    def _read(self, doc: dict, attempt: int | None, offsets: list[int]) -> dict | None:
        """The poll's answer, or None when there is nothing new and more may come."""
        ended = doc["state"] in TERMINAL
        buf = self.live.get(doc["id"])
        if buf is not None:
            restarted = attempt is not None and attempt != buf.attempt
            if restarted:
                offsets = [0, 0]
            done = ended or buf.finished
            texts, ends, missed = {}, [], []
            for stream, position in zip(STREAMS, offsets):
                data, end, lost = buf.streams[stream].read(position)
                if not done:
                    cut = complete_utf8(data)
                    end -= len(data) - cut
                    data = data[:cut]
                texts[stream] = data.decode(errors="replace")
                ends.append(end)
                missed.append(lost)
            if not done and not restarted and ends == offsets:
                return None
            return {"id": doc["id"], "attempt": buf.attempt, **texts, "offsets": ends, "missed": missed,
                    "done": done, "state": doc["state"], "restarted": restarted, "live": not done}
        if not ended:
            return None
        stored = self.daemon.store.output(doc["id"])
        if stored is None:
            return {"id": doc["id"], "attempt": attempt, "stdout": "", "stderr": "", "offsets": offsets,
                    "done": True, "state": doc["state"], "live": False}
        same = attempt == stored[0]
        data = [stored[1], stored[2]]
        ends = [len(d) for d in data]
        texts = {s: (d[min(o, len(d)):] if same else d).decode(errors="replace")
                 for s, d, o in zip(STREAMS, data, offsets)}
        return {"id": doc["id"], "attempt": stored[0], **texts, "offsets": ends, "done": True,
                "state": doc["state"], "restarted": not same and attempt is not None, "live": False}
