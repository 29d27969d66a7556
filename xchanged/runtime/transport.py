"""Sockets: ZeroMQ for peers (one ROUTER in, one DEALER per peer out) and the local control socket.

Peer frames are one-way: a node sends through its DEALER connected to the peer's ROUTER, and the
receiver answers through its own DEALER to the sender's advertised address. MAXMSGSIZE makes ZeroMQ
drop oversized frames before allocating them; send high-water marks bound memory for slow peers
(frames to a peer that is down are dropped, and the protocol retries what matters).

The control socket is a unix socket (mode 0660) speaking JSON lines: one request object per line
({"id", "op", "args"}), one response per line ({"id", "ok", "result" | "error"}).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from ..protocol.codec import MAX_FRAME

log = logging.getLogger(__name__)
SEND_HWM = 1000
MAX_CONTROL_LINE = 64 << 20


def zmq_endpoint(host_port: str) -> str:
    host, _, port = host_port.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return f"tcp://{host}:{'*' if port in ('', '0') else port}"


class PeerTransport:
    def __init__(self, listen: str):
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
        self.dealers: dict[str, zmq.Socket] = {}
        self.dropped = 0

    def _dealer(self, address: str) -> zmq.Socket:
        sock = self.dealers.get(address)
        if sock is None:
            sock = self.send_ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            sock.setsockopt(zmq.IMMEDIATE, 1)       # don't queue for a peer we are not connected to
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.connect(zmq_endpoint(address))
            self.dealers[address] = sock
        return sock

    def send(self, address: str, frame: bytes) -> bool:
        """Queue a frame for a peer without blocking; False if it had to be dropped."""
        try:
            self._dealer(address).send(frame, flags=zmq.NOBLOCK, copy=False)
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
        for sock in self.dealers.values():
            sock.close(linger=0)
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
            return {"id": rid, "ok": False, "error": str(exc)}
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
    """A control request that cannot be served; the message goes back to the client."""
