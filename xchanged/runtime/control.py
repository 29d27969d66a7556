"""The control socket's operations: what `xchanged submit/status/tasks/...` and the Client ask a daemon.

A request that changes the core (submit, cancel) becomes an input event carrying a request id, put in
the daemon's input queue like any other input; the op then awaits a future that the core's `Reply`
effect resolves (`Daemon._carry_out`), after the store has the decision. Everything else is read,
without going through the loop: from the core through `views` (the only reader of its internals) and
from the store, for tasks that finished before a restart or were evicted from memory.

Who may do what (access.py): each request comes with its client's credentials (SO_PEERCRED) as a
`Requester`, or None when it comes from inside the daemon's process (tests, trusted code). A submit
records the client's user name in the task (TaskSpec.user, whatever the client sent); submit, cancel
and logs are refused with a clear error to users `[control]` does not allow.

`wait` parks a future per waiting request; `Daemon._handle_batch` resolves those of a task that
finished. A wait that times out or is cancelled (its client went away) takes its future back out,
so an hour-long `submit --wait`, which asks again every second, leaves nothing behind.

From any host: an op about a task this node does not have (`NoSuchTask`) is asked of the task's
manager over the peer protocol (cluster_ops.py), unless the request says `local`; `tasks` with
`cluster` lists every manager's tasks; `logs` with `follow` is one long poll of live output.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import msgpack

from .. import __version__
from ..config_check import ConfigRejected
from ..protocol import decompose
from ..protocol.effects import Reply
from ..protocol.errors import RemoteProtocolError
from ..protocol.events import CancelRequested, TaskSubmitted
from ..protocol.lifecycle import TERMINAL
from ..protocol.messages import PartResult, TaskSpec, from_body, to_body
from ..protocol.specs import with_user
from ..protocol.task_ids import RANDOM_BYTES, make_task_id
from . import views
from .access import ControlAccess, Requester
from .cluster_ops import FORWARDED, ClusterOps
from .control_args import INT64, optional_int, optional_str, seconds
from .transport import ControlError, NoSuchTask

if TYPE_CHECKING:
    from .daemon import Daemon

#: How long a `wait` op waits when the request names no timeout (seconds).
DEFAULT_WAIT = 30.0
#: Largest composite spec accepted (encoded): it travels in one award frame (codec.MAX_FRAME).
MAX_SPEC_BYTES = 2 << 20
#: Most task ids one `wait_all` waits for.
MAX_WAIT_ALL = 100_000
#: Tasks a `tasks` op returns when the request names no limit, and the most it ever returns: the answer
#: (and the daemon's memory while it builds it) stays bounded however long the history is.
DEFAULT_TASKS_LIMIT = 100
MAX_TASKS_LIMIT = 10_000


def new_task_id(manager_id: str = "") -> str:
    """Cluster-unique task id: 'T-' + base32 of 80 random bits, after a tag naming its manager when
    given (protocol/task_ids.py: any node can then tell whom to ask about it)."""
    if manager_id:
        return make_task_id(manager_id, os.urandom(RANDOM_BYTES))
    return "T-" + base64.b32encode(os.urandom(RANDOM_BYTES)).decode()


class Control:
    """Serves one daemon's control operations (`handle(op, args)`, the ControlServer's handler).

    Reads of the daemon: `node` (through views), `store`, `put` (its input queue), `id`, `address`,
    `config.node.name`, `started`, `discovery`, `gate` and `transport` (their drop counters).
    """

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.requests: dict[int, asyncio.Future] = {}       # request id -> the op awaiting its Reply
        self.waiters: dict[str, list[asyncio.Future]] = {}  # task id -> wait ops parked until it ends
        self._request_ids = 0
        self._held: list[Reply] = []                         # replies of this batch owed an fsync first
        self._syncing: set[asyncio.Task] = set()             # fsyncs in flight, replies waiting on them
        self.cluster = ClusterOps(daemon, self)
        self.access = ControlAccess(daemon.config.control)
        self._ops: dict[str, Callable[[dict], Awaitable[Any]]] = {
            "ping": self.ping, "submit": self.submit, "cancel": self.cancel, "status": self.status,
            "wait": self.wait, "wait_all": self.wait_all, "tasks": self.tasks, "logs": self.logs, "peers": self.peers,
            "audit_evidence": self.audit_evidence, "stats": self.stats, "resubmit": self.resubmit,
            "audit": self.cluster.audit_records, "audit_head": self.audit_head, "history": self.history,
            "reload": self.reload, "drain": self.drain, "undrain": self.undrain,
        }

    async def handle(self, op: str, args: dict, requester: Requester | None = None) -> Any:
        """Serve one request of `requester` (None: from inside the daemon's process, trusted)."""
        serve = self._ops.get(op)
        if serve is None:
            raise ControlError(f"unknown operation {op!r}")
        if op in ("cancel", "logs"):
            if requester is not None:     # a socket client: who asks is what the kernel says (access.py)
                args = {k: v for k, v in args.items() if k not in ("by_node", "user", "admin")}
                args.update(user=requester.name, admin=self.access.is_admin(requester))
            else:                         # from inside this process (the HTTP API names its caller): trusted
                args = dict(args, admin=True)
        try:
            if op in ("submit", "cancel", "logs"):
                return await serve(dict(args, _requester=requester))
            return await serve(args)
        except NoSuchTask:
            if op not in FORWARDED or args.get("local"):
                raise
        return await self.cluster.forward(op, args)          # not ours: ask its manager (who checks `user`)

    # -- replies ----------------------------------------------------------------------------------

    def reply(self, effect: Reply, held: bool = False) -> None:
        """Answer a request; `held`: its batch committed a SYNC write, so wait for sync_then_reply."""
        if held:
            self._held.append(effect)
            return
        future = self.requests.pop(effect.request_id, None)
        if future is not None and not future.done():
            if effect.ok:
                future.set_result(effect.result)
            else:
                details = effect.result if isinstance(effect.result, dict) else None
                future.set_exception(ControlError(effect.error, (details or {}).get("code", ""), details))

    def sync_then_reply(self) -> None:
        """After a batch that committed a SYNC write (a submit, a cancel): its replies are promises to a
        person, so they wait for the fsync; it runs in a worker thread, and the loop goes on meanwhile
        (the award goes out, the task starts) instead of stalling a few ms a submit on the disk."""
        held, self._held = self._held, []
        self.daemon.store.sync_owed = False
        task = asyncio.get_running_loop().create_task(self._reply_when_synced(held))
        self._syncing.add(task)
        task.add_done_callback(self._syncing.discard)

    async def _reply_when_synced(self, held: list[Reply]) -> None:
        try:
            await asyncio.to_thread(self.daemon.store.sync)
        except (OSError, sqlite3.Error) as exc:
            self.daemon._fail(exc)
            held = [Reply(r.request_id, False, error=f"writing to disk failed: {exc}") for r in held]
        for effect in held:
            self.reply(effect)

    async def replies_synced(self) -> None:
        """(At stop.) Wait for the fsyncs that replies are waiting on."""
        await asyncio.gather(*self._syncing, return_exceptions=True)

    def _check(self, why_not: str | None) -> None:
        if why_not is not None:
            raise ControlError(why_not)

    def _may(self, what: str, doc: dict, args: dict) -> None:
        """Refuse (ControlError) a cancel or a read of a task's output by someone who may not: a local
        client (its credentials), or another node's client (the name and admin flag its node sends)."""
        who: Requester | None = args.get("_requester")
        if who is not None:
            self._check(self.access.may_touch(who, submitter_of(doc), what))
        elif args.get("by_node") is not None and not args.get("admin"):
            user, submitter = str(args.get("user") or ""), submitter_of(doc)
            if not user or user != submitter:
                raise ControlError(f"user {user or '?'} of another node may not {what} a task of "
                                   f"{submitter or 'another user'}: only its submitter and admins may")

    # -- requests the core answers ----------------------------------------------------------------

    def _request(self, make_event: Callable[[int], Any]) -> asyncio.Future:
        """Put the event `make_event(request_id)` in the input queue; the future gets its Reply."""
        self._request_ids += 1
        future = asyncio.get_running_loop().create_future()
        self.requests[self._request_ids] = future
        self.daemon.put(make_event(self._request_ids))
        return future

    async def submit(self, args: dict) -> list[dict]:
        specs = args.get("specs")
        if not isinstance(specs, list) or not specs:
            raise ControlError("submit needs a non-empty list 'specs'")
        who: Requester | None = args.get("_requester")
        if who is not None:
            self._check(self.access.may_submit(who))
        parsed = []
        for i, body in enumerate(specs):
            try:
                spec = from_body(TaskSpec, body)
                if spec.composite is not None:
                    decompose.validate(spec.composite)
            except RemoteProtocolError as exc:
                raise ControlError(f"task spec {i}: {exc.detail}") from None
            except decompose.SpecError as exc:
                raise ControlError(f"task spec {i}: {exc}") from None
            if spec.parent or spec.parts_input is not None:    # a part would not be persisted: it could be lost
                raise ControlError(f"task spec {i}: 'parent' and 'parts_input' are set by a composite's "
                                   "coordinator, never by a client")
            if spec.composite is not None and len(msgpack.packb(body, use_bin_type=True)) > MAX_SPEC_BYTES:
                raise ControlError(f"task spec {i}: the composite is larger than {MAX_SPEC_BYTES >> 20} MiB; "
                                   "use range or chunk instead of long item lists")
            parsed.append(with_user(spec, who.name if who is not None else ""))   # never as the client says
        manager = self.daemon.id
        futures = [self._request(lambda rid, s=spec: TaskSubmitted(rid, new_task_id(manager), s)) for spec in parsed]
        return list(await asyncio.gather(*futures))

    async def resubmit(self, args: dict) -> dict:
        """Run an ended composite again as a new task: only the parts that did not succeed run."""
        old = self.task_doc(str(args.get("id")))
        if not old.get("composite"):
            raise ControlError(f"{old['id']} is not a composite task; submit it again instead")
        if old["state"] not in TERMINAL:
            raise ControlError(f"{old['id']} is still {old['state']}; cancel it or wait for it first")
        spec = from_body(TaskSpec, old["spec"])
        done = tuple(p for p in self.part_results(old["id"]) if p.state == "succeeded")
        return await self._request(lambda rid: TaskSubmitted(rid, new_task_id(self.daemon.id), spec, old["id"], done))

    async def cancel(self, args: dict) -> dict:
        """`by_node`: the node a cancel came from (cluster_ops); `user`: who asked (set from the local
        client's credentials, or as that node's daemon says: access.py)."""
        task_id = str(args.get("id"))
        doc = views.task(self.daemon.node, task_id)
        if doc is None:                                      # finished long ago, evicted from memory: a no-op
            doc = self.daemon.store.task(task_id)
            if doc is None:
                raise NoSuchTask(task_id)
            self._may("cancel", doc, args)
            if doc["state"] in TERMINAL:
                return doc
        self._may("cancel", doc, args)
        return await self._request(lambda rid: CancelRequested(rid, task_id, by_node=str(args.get("by_node") or ""),
                                                               by_user=str(args.get("user") or "")))

    # -- waiting for a task to end -----------------------------------------------------------------

    async def wait(self, args: dict) -> dict:
        """The task's document once it is terminal, or as it is after `timeout_s` seconds."""
        timeout = seconds(args, "timeout_s", DEFAULT_WAIT)
        doc = self.task_doc(str(args.get("id")))
        if doc["state"] in TERMINAL:
            return doc
        task_id = doc["id"]
        future = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, []).append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return self.task_doc(task_id)
        finally:
            self._forget_waiter(task_id, future)

    async def wait_all(self, args: dict) -> list[dict]:
        """The documents of `ids` once every one is terminal, or as they are after `timeout_s`."""
        ids = args.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_WAIT_ALL:
            raise ControlError(f"wait_all needs a list 'ids' of at most {MAX_WAIT_ALL} task ids")
        timeout = seconds(args, "timeout_s", DEFAULT_WAIT)
        parked = [(doc["id"], asyncio.get_running_loop().create_future())
                  for doc in map(self.task_doc, ids) if doc["state"] not in TERMINAL]
        for task_id, future in parked:
            self.waiters.setdefault(task_id, []).append(future)
        try:
            if parked:
                await asyncio.wait([f for _, f in parked], timeout=timeout)
        finally:
            for task_id, future in parked:
                self._forget_waiter(task_id, future)
        return [self.task_doc(task_id) for task_id in ids]

    def _forget_waiter(self, task_id: str, future: asyncio.Future) -> None:
        parked = self.waiters.get(task_id)
        if parked is None:                     # already resolved and popped by the daemon
            return
        if future in parked:
            parked.remove(future)
        if not parked:
            del self.waiters[task_id]

    # -- reads ------------------------------------------------------------------------------------

    async def ping(self, args: dict) -> dict:
        d = self.daemon
        return {"id": d.id, "name": d.config.node.name, "address": d.address, "version": __version__}

    async def status(self, args: dict) -> dict:
        doc = self.task_doc(str(args.get("id")))
        if doc.get("composite"):
            doc = dict(doc, parts=[to_body(p) for p in self.part_results(doc["id"], doc)])
        return doc

    def part_results(self, task_id: str, doc: dict | None = None) -> list[PartResult]:
        """A composite's parts that ended, in the order of its steps (memory, else the store)."""
        found = views.parts(self.daemon.node, task_id)
        if found is None:
            found = [from_body(PartResult, p) for p in self.daemon.store.parts(task_id)]
        doc = doc or self.task_doc(task_id)
        order = {key: i for i, key in enumerate(decompose.keys(from_body(TaskSpec, doc["spec"]).composite))}
        return sorted(found, key=lambda p: order.get(p.key, len(order)))

    async def tasks(self, args: dict) -> list[dict] | dict:
        """The newest `limit` tasks (of `state`, submitted at or after `since_ms`), in submission order;
        with `cluster`, every manager's (cluster_ops.py). The store holds every task (as last persisted)
        and picks them by index; a task still in memory is shown as the core has it now (its waiting
        reason is not persisted)."""
        if args.get("cluster"):
            return await self.cluster.tasks_cluster(args)
        state, since, limit = args.get("state"), args.get("since_ms"), args.get("limit")
        if state is not None and not isinstance(state, str):
            raise ControlError("'state' must be a task state")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or not -INT64 <= since < INT64):
            raise ControlError("'since_ms' must be epoch milliseconds")
        if limit is None:
            limit = DEFAULT_TASKS_LIMIT
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TASKS_LIMIT:
            raise ControlError(f"'limit' must be from 1 to {MAX_TASKS_LIMIT}")
        docs = self.daemon.store.list_tasks(state=state or None, since_ms=since, limit=limit)
        return [views.task(self.daemon.node, doc["id"]) or doc for doc in docs]

    async def logs(self, args: dict) -> dict:
        if args.get("follow"):
            self._may("read the output of", self.task_doc(str(args.get("id"))), args)
            return await self.cluster.follow(args)
        task_id, part = str(args.get("id")), optional_str(args, "part")
        optional_int(args, "attempt")
        if part is None and "/" in task_id and views.task(self.daemon.node, task_id) is None:
            out = self.daemon.store.output(task_id)       # a part this node coordinated: its output is here
            if out is not None:
                self._may("read the output of", self.daemon.store.task(task_id) or {}, args)
                return {"id": task_id, "attempt": out[0], "complete": True,
                        "stdout": out[1].decode(errors="replace"), "stderr": out[2].decode(errors="replace")}
            task_id, part = task_id.split("/", 1)[0], task_id          # a part's own id: ask its composite
        self._may("read the output of", self.task_doc(task_id), args)
        if part is not None:
            return await self._part_logs(task_id, str(part), args)
        doc = self.task_doc(task_id)
        out = self.daemon.store.output(doc["id"], args.get("attempt"))
        live = self.cluster.live_doc(doc) if args.get("attempt") is None else None
        if live is not None and (out is None or live["attempt"] > out[0]):
            return live                                    # running: what it has written so far
        if out is None:
            raise ControlError(f"no output recorded for {doc['id']} yet (state {doc['state']})")
        return {"id": doc["id"], "attempt": out[0], "stdout": out[1].decode(errors="replace"),
                "stderr": out[2].decode(errors="replace")}

    async def peers(self, args: dict) -> list[dict]:
        now = time.monotonic()
        docs = views.peers(self.daemon.node, now)
        if args.get("all") and self.daemon.discovery is not None:
            docs += self.daemon.discovery.untrusted_docs(now)
        return docs

    async def audit_evidence(self, args: dict) -> list[dict]:
        return views.audit_evidence(self.daemon.node, str(args.get("node") or ""))

    async def stats(self, args: dict) -> dict:
        d = self.daemon
        now = time.monotonic()
        doc = dict(views.stats(d.node, now, now - d.started, d.store.count_by_state()),
                   duplicate_frames=d.gate.duplicate_frames, send_drops=d.transport.dropped,
                   **d.runtime_figures())
        doc["frames_dropped"] = {**doc["frames_dropped"], **d.inflow.drops}     # dropped before the core
        return doc

    # -- operations (runtime/operations.py) ---------------------------------------------------------

    async def reload(self, args: dict) -> dict:
        """Re-read the config file; a config that fails is refused with `config check`'s one-line error."""
        try:
            return self.daemon.ops.reload()
        except ConfigRejected as exc:
            raise ControlError(f"reload rejected, the daemon keeps its config: {exc}") from None

    async def drain(self, args: dict) -> dict:
        """Stop taking work; with `wait`, until nothing runs or waits here (or `timeout_s`)."""
        ops = self.daemon.ops
        ops.drain()
        if args.get("wait"):
            await ops.wait_idle(seconds(args, "timeout_s", DEFAULT_WAIT))
        return ops.drain_doc()

    async def undrain(self, args: dict) -> dict:
        try:
            self.daemon.ops.undrain()
        except ConfigRejected as exc:
            raise ControlError(str(exc)) from None
        return self.daemon.ops.drain_doc()

    async def audit_head(self, args: dict) -> dict:
        """This node's signed audit head and how many records its log holds (the head covers those
        already on disk; a new one is signed every gossip interval), with what it saw of the others'."""
        d = self.daemon
        head = d.audit.head
        return {"node": d.config.node.name, "node_id": d.id, "head": head.to_dict() if head else None,
                "records": d.audit.size, "peers": views.audit_evidence(d.node, "")}

    async def history(self, args: dict) -> dict:
        """The last minutes of cluster load, sampled by the daemon (samples.py), oldest first."""
        return self.daemon.history.doc()

    async def _part_logs(self, task_id: str, part: str, args: dict) -> dict:
        """A part's output: all of it from the node that coordinated it (asked over the peer protocol
        when that is another node), else the tails its report kept."""
        if not self.task_doc(task_id).get("composite"):
            raise ControlError(f"{task_id} is not a composite task: it has no parts")
        results = self.part_results(task_id)
        found = next((p for p in results if part in (p.key, p.task)), None)
        if found is None:
            raise ControlError(f"no part {part!r} of {task_id} has ended yet")
        out = self.daemon.store.output(found.task) if found.manager == self.daemon.id else None
        if out is not None:
            return {"id": found.task, "part": found.key, "attempt": out[0], "complete": True,
                    "stdout": out[1].decode(errors="replace"), "stderr": out[2].decode(errors="replace")}
        if found.manager != self.daemon.id:
            try:
                doc = await self.cluster.forward("logs", {"id": found.task, "user": args.get("user"),
                                                          "admin": args.get("admin")})
                return dict(doc, part=found.key, complete=True)
            except ControlError:
                pass                                        # gone, or not answering: the tails will do
        return {"id": found.task, "part": found.key, "attempt": None, "complete": False,
                "stdout": found.stdout_tail, "stderr": found.stderr_tail,
                "note": f"the last {decompose.TAIL_CHARS} characters; the whole output is kept by the node "
                        f"that coordinated the part ({found.manager})"}

    def task_doc(self, task_id: str) -> dict:
        """A task's document from memory, else from the store; ControlError if neither has it."""
        doc = views.task(self.daemon.node, task_id)
        if doc is not None:
            return doc
        doc = self.daemon.store.task(task_id)
        if doc is None:
            raise NoSuchTask(task_id)
        return doc


def submitter_of(doc: dict) -> str:
    """The user who submitted a task (its status document's spec), "" if unknown (older tasks)."""
    spec = doc.get("spec") or {}
    return str(spec.get("user") or "")
