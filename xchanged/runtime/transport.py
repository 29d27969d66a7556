"""Sockets: ZeroMQ for peers (one ROUTER in, one DEALER per peer out) and the local control socket.

Peer frames are one-way: a node sends through its DEALER connected to the peer's ROUTER, and the
receiver answers through its own DEALER to the sender's advertised address. MAXMSGSIZE makes ZeroMQ
drop oversized frames before allocating them (it closes the connection that sent one); high-water
marks bound memory: a slow peer's frames are dropped on our side, and a peer that floods us is
held back by TCP once RCVHWM frames of its connection wait (the protocol retries what matters).

Security (docs/security.md): unless `insecure`, the ROUTER is a CurveZMQ server and every DEALER a
Curve client, each with the Curve key derived from its node's Ed25519 key (curve.py); so a DEALER
needs the Ed25519 key of the node it connects to (`send(address, frame, key)`), and the ZAP handler
(zap.py) decides who may connect before any of their frames is delivered. Each received frame is
returned with the tag of the connection it came on: the client's Curve key in hex (the ZAP User-Id),
or in insecure mode the connection's routing id. A monitor counts what happens to connections
(`connection_events`: handshakes refused, plaintext clients, connections dropped, e.g. for an
oversized frame).

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
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Awaitable, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..protocol.codec import MAX_FRAME
from .access import Requester, peer_credentials
from .curve import CurveError, curve_public
from .zap import DOMAIN, ZapHandler

log = logging.getLogger(__name__)
SEND_HWM = 1000
DEALER_IDLE = 60.0       # seconds an outbound socket may stay unused before it is closed
MAX_DEALERS = 1024       # outbound sockets open at once (least recently used closed first)
MAX_CONTROL_LINE = 64 << 20
RCVHWM = 100             # frames waiting per incoming connection before TCP holds its sender back
MAX_RECEIVE_BATCH = 512  # frames taken from the socket in one go (receive_batch)
# connection events worth counting (monitor), by label
MONITORED = {
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",   # e.g. a plaintext client
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",           # refused by ZAP
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_DISCONNECTED: "disconnected",                             # closed, or dropped (oversized frame)
}


def zmq_endpoint(host_port: str) -> str:
    host, _, port = host_port.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return f"tcp://{host}:{'*' if port in ('', '0') else port}"


class PeerTransport:
    """The peer sockets. `curve`: this node's (public, secret) Curve keys and `zap_decide` the ZAP
    decision (zap.py); both None: insecure, plaintext."""

    def __init__(self, listen: str, *, dealer_idle: float = DEALER_IDLE, max_dealers: int = MAX_DEALERS,
                 clock: Callable[[], float] = time.monotonic, curve: tuple[bytes, bytes] | None = None,
                 zap_decide: Callable[[bytes], tuple[bool, str]] | None = None):
        self.ctx = zmq.asyncio.Context()
        # Sends never block and never await: plain sockets with NOBLOCK report a full or unconnected
        # peer at once (zmq.Again), where an asyncio socket would hide it in a future. Plain sockets of
        # the same libzmq context (a shadow): one I/O thread and one reaper, not two of each.
        self.send_ctx = zmq.Context.shadow(self.ctx)
        self.curve = curve
        self.zap: ZapHandler | None = None
        self.router = self.ctx.socket(zmq.ROUTER)
        if curve is not None:
            if zap_decide is None:
                raise ValueError("a Curve server needs a ZAP decision")
            self.zap = ZapHandler(self.ctx, zap_decide)       # bound before anyone can connect
            self.router.setsockopt(zmq.CURVE_SERVER, 1)
            self.router.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
            self.router.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
            self.router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler answering: nobody gets in
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME + 1024)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, RCVHWM)
        if ":" in listen.rpartition(":")[0].strip("[]"):
            self.router.setsockopt(zmq.IPV6, 1)
        self.monitor = self.router.get_monitor_socket(sum(MONITORED))
        self.router.bind(zmq_endpoint(listen))
        endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.dealer_idle, self.max_dealers, self.clock = dealer_idle, max(1, max_dealers), clock
        # (address, server Curve key) -> (socket, when last used), least recently used first
        self.dealers: OrderedDict[tuple[str, bytes], tuple[zmq.Socket, float]] = OrderedDict()
        self.dropped = 0
        self.dealers_closed = 0
        self.no_key = 0                          # frames not sent: the peer's key is not known (Curve)
        self.connection_events: Counter[str] = Counter()
        self._curve_of: dict[bytes, bytes] = {}  # Ed25519 key -> Curve key (cache)
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Serve ZAP requests and count connection events (on the running loop)."""
        loop = asyncio.get_running_loop()
        if self.zap is not None:
            self.zap.start()
        self._tasks.append(loop.create_task(self._watch()))

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self.monitor.recv_multipart())
            label = MONITORED.get(event["event"])
            if label:
                self.connection_events[label] += 1

    def _server_key(self, key: bytes | None) -> bytes | None:
        """The Curve key to expect of the node with Ed25519 key `key` (b"" when insecure)."""
        if self.curve is None:
            return b""
        if key is None:
            return None
        curve = self._curve_of.get(key)
        if curve is None:
            try:
                curve = curve_public(key)
            except CurveError:
                return None
            if len(self._curve_of) > 4 * self.max_dealers:
                self._curve_of.clear()
            self._curve_of[key] = curve
        return curve

    def _dealer(self, address: str, server_key: bytes, now: float) -> zmq.Socket:
        self.close_idle(now)
        entry = self.dealers.get((address, server_key))
        if entry is not None:
            self.dealers.move_to_end((address, server_key))
            self.dealers[(address, server_key)] = (entry[0], now)
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
        if self.curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve[1])
        sock.connect(zmq_endpoint(address))
        self.dealers[(address, server_key)] = (sock, now)
        return sock

    def close_idle(self, now: float) -> None:
        """Close the outbound sockets unused for `dealer_idle` seconds (they are at the front)."""
        while self.dealers and next(iter(self.dealers.values()))[1] <= now - self.dealer_idle:
            self._close_oldest()

    def _close_oldest(self) -> None:
        _, (sock, _) = self.dealers.popitem(last=False)
        sock.close(linger=0)
        self.dealers_closed += 1

    def send(self, address: str, frame: bytes, key: bytes | None = None) -> bool:
        """Queue a frame for the peer at `address` whose Ed25519 key is `key` (needed with Curve: it
        gives the server key to expect) without blocking; False if it had to be dropped."""
        server_key = self._server_key(key)
        if server_key is None:
            self.no_key += 1
            return False
        try:
            self._dealer(address, server_key, self.clock()).send(frame, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as exc:
            log.debug("send to %s failed: %s", address, exc)
            return False

    async def receive(self) -> tuple[str, bytes]:
        """The next frame and the tag of the connection it came on (see the module docstring). A
        multipart message (misbehaving peer) comes back as b"", which the gate drops and counts."""
        parts = await self.router.recv_multipart(copy=False)
        return self._tagged(parts)

    async def receive_batch(self, limit: int = MAX_RECEIVE_BATCH) -> list[tuple[str, bytes]]:
        """At least one frame (waits for it), then whatever else is waiting, up to `limit`."""
        batch = [await self.receive()]
        return batch + self.receive_ready(limit - 1)

    def receive_ready(self, limit: int = MAX_RECEIVE_BATCH) -> list[tuple[str, bytes]]:
        """The frames waiting now, up to `limit`; never waits."""
        batch = []
        while len(batch) < limit and self.router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            batch.append(self._tagged(self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False).result()))
        return batch

    def _tagged(self, parts: list) -> tuple[str, bytes]:
        last = parts[-1]
        if self.curve is not None:
            tag = last.get("User-Id")
        else:
            tag = parts[0].bytes.hex()
        return tag, (last.bytes if len(parts) == 2 else b"")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.zap is not None:
            await self.zap.close()

    def close(self) -> None:
        for sock, _ in self.dealers.values():
            sock.close(linger=0)
        self.dealers.clear()
        self.router.disable_monitor()
        self.monitor.close(linger=0)
        if self.zap is not None:
            self.zap.sock.close(linger=0)
        self.router.close(linger=0)
        self.ctx.term()             # send_ctx is its shadow: terminated with it


Handler = Callable[[str, dict, "Requester | None"], Awaitable[object]]


class ControlServer:
    """Serves JSON-lines requests on a unix socket, each handled by `handler(op, args, requester)`,
    `requester` being the client as the kernel reports it (SO_PEERCRED: access.py)."""

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
        """Answer each line in turn; a line over MAX_CONTROL_LINE is answered with an error and
        skipped (up to its newline), and the connection goes on serving."""
        requester = peer_credentials(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial         # the last line, without its newline ("" at the end)
                except asyncio.LimitOverrunError:
                    response = bad_request(f"the request line is longer than {MAX_CONTROL_LINE} bytes")
                    writer.write(encode_response(response))
                    await writer.drain()
                    if not await skip_line(reader):
                        break
                    continue
                if not line:
                    break
                writer.write(encode_response(await self._answer(line, requester)))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes, requester: Requester | None = None) -> dict:
        try:
            request = parse_request(line)
            if "op" not in request:
                raise ValueError("the request names no 'op'")
            rid, op, args = request.get("id"), request["op"], request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ValueError("op must be a string and args an object")
            if not isinstance(rid, (str, int, type(None))) or isinstance(rid, bool):
                raise ValueError("id must be a string, an integer or null")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            return bad_request(str(exc) if not isinstance(exc, RecursionError) else "nested too deeply")
        try:
            return {"id": rid, "ok": True, "result": await self.handler(op, args, requester)}
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


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large a number")
    return value


def parse_request(line: bytes) -> dict:
    """One request line as JSON, strictly: NaN, Infinity and numbers that overflow to infinity are
    refused (ValueError), as is nesting deeper than the parser's recursion limit (RecursionError)."""
    request = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object {\"id\", \"op\", \"args\"}")
    return request


def bad_request(why: str) -> dict:
    return {"id": None, "ok": False, "error": f"bad request: {why}", "code": "bad_request"}


def encode_response(response: dict) -> bytes:
    """A response as one JSON line; one that cannot be (a result no JSON can carry) becomes an error
    answer, never a dropped connection."""
    try:
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"
    except (ValueError, TypeError, RecursionError) as exc:
        log.error("control response to %r could not be encoded: %s", response.get("id"), exc)
        error = {"id": response.get("id"), "ok": False, "error": f"internal error: the answer is not JSON ({exc})"}
        return json.dumps(error, separators=(",", ":")).encode() + b"\n"


async def skip_line(reader: asyncio.StreamReader) -> bool:
    """Read past the rest of an over-long line; False if the connection ended first."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return True
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return False


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
