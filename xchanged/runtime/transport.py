"""Sockets: ZeroMQ for peers (one ROUTER in, one DEALER per peer out) and the local control socket.

Peer frames are one-way: a node sends through its DEALER connected to the peer's ROUTER, and the
receiver answers through its own DEALER to the sender's advertised address. MAXMSGSIZE makes ZeroMQ
drop oversized frames before allocating them; send high-water marks bound memory for slow peers
(frames to a peer that is down are dropped, and the protocol retries what matters).

Outbound sockets are a cache: a DEALER unused for `dealer_idle` seconds is closed (a peer that left,
an address that changed), and at most `max_dealers` are open, the least recently used closed first,
so the file descriptors and connections held stay bounded however many peers come and go. Closing
one costs a reconnect the next time that peer is sent to (and any frame still queued for it, which
the protocol resends where it matters).

The control socket is a unix socket (mode 0660) speaking JSON lines: one request object per line
({"id", "op", "args"}), one response per line ({"id", "ok", "result" | "error" [, "code", "details"]}).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from ..protocol.codec import MAX_FRAME

log = logging.getLogger(__name__)
SEND_HWM = 1000
DEALER_IDLE = 60.0       # seconds an outbound socket may stay unused before it is closed
MAX_DEALERS = 1024       # outbound sockets open at once (least recently used closed first)
MAX_CONTROL_LINE = 64 << 20


def zmq_endpoint(host_port: str) -> str:
    host, _, port = host_port.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return f"tcp://{host}:{'*' if port in ('', '0') else port}"


class PeerTransport:
    def __init__(self, listen: str, *, dealer_idle: float = DEALER_IDLE, max_dealers: int = MAX_DEALERS,
                 clock: Callable[[], float] = time.monotonic):
        self.ctx = zmq.asyncio.Context()
        # Sends never block and never await: plain sockets with NOBLOCK report a full or unconnected
        # peer at once (zmq.Again), where an asyncio socket would hide it in a future.
        self.send_ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME + 1024)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, 10_000)
        if ":" in listen.rpartition(":")[0].strip("[]"):
            self.router.setsockopt(zmq.IPV6, 1)
        self.router.bind(zmq_endpoint(listen))
        endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.dealer_idle, self.max_dealers, self.clock = dealer_idle, max(1, max_dealers), clock
        # address -> (socket, when last used), least recently used first
        self.dealers: OrderedDict[str, tuple[zmq.Socket, float]] = OrderedDict()
        self.dropped = 0
        self.dealers_closed = 0

    def _dealer(self, address: str, now: float) -> zmq.Socket:
        self.close_idle(now)
        entry = self.dealers.get(address)
        if entry is not None:
            self.dealers.move_to_end(address)
            self.dealers[address] = (entry[0], now)
            return entry[0]
        while len(self.dealers) >= self.max_dealers:
            self._close_oldest()
        sock = self.send_ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)       # don't queue for a peer we are not connected to
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if address.startswith("["):             # an IPv6 peer ("[fd00::5]:7946"); names resolve to IPv4
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(zmq_endpoint(address))
        self.dealers[address] = (sock, now)
        return sock

    def close_idle(self, now: float) -> None:
        """Close the outbound sockets unused for `dealer_idle` seconds (they are at the front)."""
        while self.dealers and next(iter(self.dealers.values()))[1] <= now - self.dealer_idle:
            self._close_oldest()

    def _close_oldest(self) -> None:
        _, (sock, _) = self.dealers.popitem(last=False)
        sock.close(linger=0)
        self.dealers_closed += 1

    def send(self, address: str, frame: bytes) -> bool:
        """Queue a frame for a peer without blocking; False if it had to be dropped."""
        try:
            self._dealer(address, self.clock()).send(frame, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as exc:
            log.debug("send to %s failed: %s", address, exc)
            return False

    async def receive(self) -> bytes:
        while True:
            parts = await self.router.recv_multipart(copy=True)
            if len(parts) == 2:
                return parts[1]
            # a peer that sends multipart frames is misbehaving; the daemon counts a drop
            return b""

    def close(self) -> None:
        for sock, _ in self.dealers.values():
            sock.close(linger=0)
        self.dealers.clear()
        self.router.close(linger=0)
        self.send_ctx.term()
        self.ctx.term()


Handler = Callable[[str, dict], Awaitable[object]]


class ControlServer:
    """Serves JSON-lines requests on a unix socket, each handled by `handler(op, args)`."""

    def __init__(self, path: Path, handler: Handler):
        self.path = path
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_CONTROL_LINE)
        os.chmod(self.path, 0o660)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                response = await self._answer(line)
                writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            rid, op, args = request.get("id"), request["op"], request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ValueError("op must be a string and args an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return {"id": None, "ok": False, "error": f"bad request: {exc}"}
        try:
            return {"id": rid, "ok": True, "result": await self.handler(op, args)}
        except ControlError as exc:
            response = {"id": rid, "ok": False, "error": str(exc)}
            if exc.code:
                response["code"] = exc.code
            if exc.details:
                response["details"] = exc.details
            return response
        except Exception as exc:  # a bug must not take the daemon down with one client's request
            log.exception("control request %s failed", op)
            return {"id": rid, "ok": False, "error": f"internal error: {exc}"}

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class ControlError(Exception):
    """A control request that cannot be served; the message goes back to the client, with a stable
    `code` and `details` (a JSON object) when it has them (e.g. `manager_unreachable`, what was last
    known of the task)."""

    def __init__(self, message: str, code: str = "", details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.details = details


class NoSuchTask(ControlError):
    """This node has no such task (and, asked with `local`, does not look for it elsewhere)."""

    def __init__(self, task_id: str, message: str = ""):
        super().__init__(message or f"no such task: {task_id}", "no_such_task")
        self.task_id = task_id
