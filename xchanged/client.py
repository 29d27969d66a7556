"""Python client of a daemon's control socket. The CLI is built on it, so there is one code path.

    from xchanged import Client
    with Client(config="/etc/xchanged/xchanged.toml") as c:
        tid = c.submit(["python", "train.py"], cpus=2, mem="4G", priority="high", timeout=3600)
        doc = c.wait(tid)

Every task operation (status, wait, logs, cancel, audit_task) works on any node of the cluster: the
local daemon asks the task's manager. `ManagerUnreachable` says when that manager does not answer
(with what was last known); `tasks(cluster=True)` lists every manager's tasks; `logs(id,
follow=True)` yields the output of a running task as it is written.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .config import ConfigError, default_config_path, load_config, parse_duration, parse_size
from .protocol.errors import XchangedError
from .protocol.lifecycle import TERMINAL
from .protocol.messages import PRIORITIES

DEFAULT_SOCKET = Path("/run/xchanged/control.sock")


class DaemonUnreachable(XchangedError):
    """No daemon answers on the control socket (the CLI exits 3)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"cannot reach the xchanged daemon at {path}: {why}")
        self.path = path


class RequestFailed(XchangedError):
    """The daemon answered with an error (bad spec, unknown task, ...); `code` is stable where the
    daemon gives one (`no_such_task`, `manager_unreachable`, ...), `details` a JSON object or None."""

    def __init__(self, message: str, code: str = "", details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.details = details


class ManagerUnreachable(RequestFailed):
    """The task's manager did not answer (down, or cut off): `details["last_known"]` is the task's
    last document this node saw (or None), `details["manager"]` the manager and when it was last heard."""


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):          # no name for this uid
        return ""


def socket_path(config: str | os.PathLike | None = None, socket: str | os.PathLike | None = None) -> Path:
    """The control socket to use: explicit, else from the config file, else the default."""
    if socket:
        return Path(socket)
    path = Path(config) if config else default_config_path()
    if config or path.exists():
        return load_config(path, check_files=False).network.control
    return DEFAULT_SOCKET


def build_spec(argv: list[str], *, cpus: float = 1.0, mem: str | int = 0, gpus: int = 0,
               gpu_mem: str | int = 0, labels: dict[str, str] | None = None,
               prefer: dict[str, str] | None = None, priority: str = "normal", timeout: float | None = None,
               retries: int = 3, deadline: str | datetime | None = None, env: dict[str, str] | None = None,
               cwd: str | None = None, name: str = "", est_runtime: float | None = None) -> dict:
    """A task spec as the daemon expects it; sizes accept '4G'-style strings. Raises ValueError."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
    if not argv:
        raise ValueError("a task needs a command")
    deadline_ms = None
    if deadline is not None:
        when = deadline if isinstance(deadline, datetime) else datetime.fromisoformat(str(deadline))
        if when.tzinfo is None:
            when = when.astimezone()
        deadline_ms = int(when.astimezone(timezone.utc).timestamp() * 1000)
    return {
        "argv": [str(a) for a in argv], "env": dict(env or {}), "cwd": cwd, "timeout": timeout,
        "requirements": {"cpus": float(cpus), "mem": _size(mem), "gpus": int(gpus), "gpu_mem": _size(gpu_mem),
                         "labels": dict(labels or {}), "prefer": dict(prefer or {})},
        "priority": priority, "retries": int(retries), "deadline_ms": deadline_ms, "name": name,
        "est_runtime": est_runtime,
    }


def since_ms(since: str | float | datetime) -> int:
    """Epoch ms of `since`: a datetime, epoch seconds, an ISO 8601 time, or a duration back from now
    ("90s", "1h", "7d"). Raises ValueError."""
    if isinstance(since, datetime):
        when = since if since.tzinfo else since.astimezone()
        return int(when.timestamp() * 1000)
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        return int(since * 1000)
    text = str(since).strip()
    try:
        return int((time.time() - parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        return since_ms(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(f"--since: expected a duration like '1h' or an ISO 8601 time, got {text!r}") from None


def _size(value: str | int) -> int:
    return value if isinstance(value, int) else parse_size(value)


class Client:
    def __init__(self, config: str | os.PathLike | None = None, socket: str | os.PathLike | None = None,
                 timeout: float = 60.0):
        self.path = socket_path(config, socket)
        self.timeout = timeout
        self._sock = None
        self._file = None
        self._next_id = 0

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise DaemonUnreachable(self.path, "no such socket (is the daemon running?)") from None
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(self.path, exc.strerror or str(exc)) from None
        self._sock, self._file = sock, sock.makefile("rb")

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        if self._sock is None:
            self._connect()
        self._next_id += 1
        request = json.dumps({"id": self._next_id, "op": op, "args": args}).encode() + b"\n"
        try:
            self._sock.settimeout(timeout or self.timeout)
            self._sock.sendall(request)
            line = self._file.readline()
        except OSError as exc:
            self.close()
            raise DaemonUnreachable(self.path, f"connection failed: {exc}") from None
        if not line:
            self.close()
            raise DaemonUnreachable(self.path, "the daemon closed the connection")
        response = json.loads(line)
        if not response.get("ok"):
            code = response.get("code", "")
            kind = ManagerUnreachable if code == "manager_unreachable" else RequestFailed
            raise kind(response.get("error", "request failed"), code, response.get("details"))
        return response.get("result")

    # -- the API --------------------------------------------------------------------------------

    def ping(self) -> dict:
        return self.call("ping", timeout=5.0)

    def submit(self, argv: list[str], **options: Any) -> str:
        """Submit one command task; returns its id once the daemon has stored it."""
        return self.submit_specs([build_spec(list(argv), **options)])[0]["id"]

    def submit_many(self, argvs: Iterable[list[str]], **options: Any) -> list[str]:
        """Submit many command tasks with the same options in one round trip."""
        return [doc["id"] for doc in self.submit_specs([build_spec(list(a), **options) for a in argvs])]

    def submit_specs(self, specs: list[dict]) -> list[dict]:
        return self.call("submit", specs=specs)

    def submit_spec(self, spec: dict | str | os.PathLike, base_dir: str | os.PathLike | None = None) -> str:
        """Submit one task spec, given as a spec file's path or as a dict of the same shape (a single
        task, an array, or a DAG; see specfile.py); returns its id. Raises specfile.SpecFileError."""
        from . import specfile

        if isinstance(spec, dict):
            bodies = specfile.from_dict(spec, "<spec>", Path(base_dir) if base_dir else None)
        else:
            bodies = specfile.load(spec)
        if len(bodies) != 1:
            raise ValueError(f"the spec describes {len(bodies)} independent tasks: use submit_specs")
        return self.submit_specs(bodies)[0]["id"]

    def submit_array(self, argv: list[str], items: Iterable[Any], *, chunk: int = 1,
                     reduce: list[str] | None = None, fail_fast: bool = False, max_parallel: int | None = None,
                     name: str = "", **options: Any) -> str:
        """Submit one composite: `argv` (a template with {item}, {index}, {items}) for each item, in
        parts of `chunk` items, then `reduce` with their results; returns the composite's id."""
        spec: dict[str, Any] = {"command": list(argv), "items": [str(i) for i in items], "chunk": chunk,
                                "fail_fast": fail_fast, **options}
        if name:
            spec["name"] = name
        if reduce is not None:
            spec["reduce"] = list(reduce)
        if max_parallel is not None:
            spec["max_parallel"] = max_parallel
        return self.submit_spec(spec)

    def resubmit(self, task_id: str) -> dict:
        """Run an ended composite again as a new task; only its parts that did not succeed run."""
        return self.call("resubmit", id=task_id)

    def status(self, task_id: str) -> dict:
        return self.call("status", id=task_id)

    def tasks(self, state: str | None = None, cluster: bool = False, limit: int | None = None, *,
              since: str | float | datetime | None = None) -> list[dict] | dict:
        """The newest `limit` tasks this node manages (the daemon's default: 100; at most 10,000), in
        submission order; only those in `state`, or submitted at or after `since` (a datetime, epoch
        seconds, an ISO 8601 time, or a duration back from now like "1h"; raises ValueError). With
        `cluster`, every manager's (at most `limit` each, the newest; default 100): {"tasks": [... each
        with "manager"], "managers": [{"id", "name", "status": "ok" | "unreachable" | "error", "error"?,
        "total", "truncated", "listed"}]}."""
        if cluster:
            return self.call("tasks", state=state, cluster=True, limit=limit or 100)
        args: dict[str, Any] = {"state": state}
        if since is not None:
            args["since_ms"] = since_ms(since)
        if limit is not None:
            args["limit"] = int(limit)
        return self.call("tasks", **args)

    def logs(self, task_id: str, attempt: int | None = None, part: str | None = None, follow: bool = False,
             wait: float = 5.0) -> Any:
        """Captured output of a task's attempt (default: the last; of a running one: what it wrote so
        far), or of one part of a composite (`part`: its key, like "3" or "build[2]", or the part's
        own id); with `follow`, an iterator over the output as it is written (`follow_logs`)."""
        if follow:
            return self.follow_logs(task_id, wait=wait)
        return self.call("logs", id=task_id, attempt=attempt, part=part)

    def follow_logs(self, task_id: str, wait: float = 5.0) -> Iterator[dict]:
        """Yields {"stream": "stdout" | "stderr", "data": str, "attempt": n} as the task writes, and
        {"stream": "note", "data": str} when bytes were dropped or a new attempt started over; ends
        when the task has ended and everything it wrote was yielded. Each poll waits up to `wait`
        seconds for new output."""
        attempt, offsets = None, [0, 0]
        while True:
            doc = self.call("logs", timeout=wait + 60.0, id=task_id, follow=True, attempt=attempt,
                            offsets=offsets, wait_s=wait)
            if doc.get("restarted"):
                yield {"stream": "note", "data": f"attempt {doc['attempt']} started over: its output from the start",
                       "attempt": doc["attempt"]}
            for stream, missed in zip(("stdout", "stderr"), doc.get("missed") or (0, 0)):
                if missed:
                    yield {"stream": "note", "data": f"{missed} bytes of {stream} dropped (max_output)",
                           "attempt": doc["attempt"]}
            for stream in ("stdout", "stderr"):
                if doc.get(stream):
                    yield {"stream": stream, "data": doc[stream], "attempt": doc["attempt"]}
            attempt, offsets = doc.get("attempt"), doc["offsets"]
            if doc["done"]:
                return

    def cancel(self, task_id: str) -> dict:
        """Cancel a task from any node; the manager's audit log records who asked (this user, and
        this node when it is not the manager)."""
        return self.call("cancel", id=task_id, user=_local_user())

    def audit_task(self, task_id: str) -> dict:
        """The task's manager's audit records of it: {"node", "node_id", "task", "records"}."""
        return self.call("audit", id=task_id)

    def peers(self, all: bool = False) -> list[dict]:
        """Peers with health and age of their last signal; `all`: also untrusted mDNS services."""
        return self.call("peers", all=True) if all else self.call("peers")

    def stats(self) -> dict:
        return self.call("stats")

    # -- operating a node (docs/operations.md) ---------------------------------------------------

    def reload(self) -> dict:
        """Make the daemon re-read its config file: {"changed", "restart_needed", "notes"}. A config
        that fails validation raises RequestFailed with `config check`'s one-line error."""
        return self.call("reload", timeout=30.0)

    def drain(self, wait: bool = False, timeout: float | None = None, poll: float = 5.0,
              on_update: Callable[[dict], None] | None = None) -> dict:
        """Stop this node taking work (attempts queued here go back to their managers; running ones
        finish). With `wait`, block until nothing runs here (or `timeout` passes). Returns
        {"draining", "running", "queued", "idle"}."""
        if not wait:
            return self.call("drain")
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if end is None else max(0.0, min(poll, end - time.monotonic()))
            doc = self.call("drain", timeout=left + 30.0, wait=True, timeout_s=left)
            if on_update:
                on_update(doc)
            if doc["idle"] or (end is not None and time.monotonic() >= end):
                return doc

    def undrain(self) -> dict:
        """Take work again after a drain."""
        return self.call("undrain")

    def audit_evidence(self, node: str = "") -> list[dict]:
        """What this daemon knows of other nodes' audit heads (one node by id or name, or all),
        with the evidence of any fork it found."""
        return self.call("audit_evidence", node=node)

    def audit_head(self) -> dict:
        """This node's signed audit head: {"node", "node_id", "head" (or None), "records", "peers" (as
        audit_evidence)}."""
        return self.call("audit_head")

    def history(self) -> dict:
        """The last minutes of cluster load as the daemon sampled it: {"interval_s", "capacity",
        "samples": [{"t", "utilization_percent", "running", "slots", "queued", "queued_here", "alive",
        "nodes"}]}, oldest first."""
        return self.call("history")

    def wait_all(self, task_ids: list[str], timeout: float | None = None, poll: float = 30.0) -> list[dict]:
        """Block until every task is terminal (or `timeout` passes); their status documents, in order.
        One request for all of them, asked again every `poll` seconds (the daemon answers as soon as
        the last one ends)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if end is None else max(0.0, min(poll, end - time.monotonic()))
            docs = self.call("wait_all", timeout=left + 30.0, ids=list(task_ids), timeout_s=left)
            if all(d["state"] in TERMINAL for d in docs) or (end is not None and time.monotonic() >= end):
                return docs

    def wait(self, task_id: str, timeout: float | None = None,
             on_update: Callable[[dict], None] | None = None, poll: float = 1.0) -> dict:
        """Block until the task is terminal (or `timeout` passes); returns its status document."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if end is None else max(0.0, min(poll, end - time.monotonic()))
            doc = self.call("wait", timeout=left + 30.0, id=task_id, timeout_s=left)
            if on_update:
                on_update(doc)
            if doc["state"] in TERMINAL or (end is not None and time.monotonic() >= end):
                return doc


__all__ = ["Client", "DaemonUnreachable", "ManagerUnreachable", "RequestFailed", "build_spec", "since_ms",
           "socket_path", "ConfigError"]
