"""The ZAP handler (ZeroMQ Authentication Protocol, RFC 27) of the peer socket: who may connect.

libzmq asks it once per incoming CurveZMQ connection, after the Curve handshake has proved that the
client holds the secret key of the Curve public key it presents, and before a single message of the
client is delivered. The answer comes from `decide(curve_key) -> (allowed, why not)` (runtime/trust.py):
a key that belongs to a trusted node is admitted; others are refused with a stable reason, counted
in `denied`. An admitted connection's messages carry the client's Curve key, hex-encoded, as their
"User-Id" property, which the receive path uses to tell peers apart (per-peer limits: inflow.py).

One request at a time, on the daemon's asyncio loop, from an inproc ROUTER socket bound at
ENDPOINT in the peer socket's context (libzmq connects to it there by name); it must be bound
before the peer socket accepts connections. Malformed requests (only libzmq sends here) are answered
with status 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Callable

import zmq
import zmq.asyncio

log = logging.getLogger("xchanged.zap")

ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"xchanged"


class ZapHandler:
    def __init__(self, ctx: zmq.asyncio.Context, decide: Callable[[bytes], tuple[bool, str]]):
        self.decide = decide
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ENDPOINT)
        self.allowed = 0
        self.denied: Counter[str] = Counter()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            request = await self.sock.recv_multipart()
            await self.sock.send_multipart(self.answer(request))

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The reply frames to one request (routing envelope included)."""
        try:
            split = request.index(b"")
        except ValueError:
            return request[:1] + [b"", b"1.0", b"", b"500", b"malformed request", b"", b""]
        envelope, body = request[:split + 1], request[split + 1:]
        if len(body) < 6 or body[0] != b"1.0":
            return envelope + [b"1.0", body[1] if len(body) > 1 else b"", b"500", b"malformed request", b"", b""]
        request_id, mechanism, credentials = body[1], body[5], body[6:]
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self.denied["not_curve"] += 1
            return envelope + [b"1.0", request_id, b"400", b"CURVE required", b"", b""]
        key = credentials[0]
        try:
            allowed, why = self.decide(key)
        except Exception:                      # a bug must not leave the handshake hanging
            log.exception("ZAP decision failed")
            allowed, why = False, "error"
        if not allowed:
            self.denied[why] += 1
            return envelope + [b"1.0", request_id, b"400", why.encode(), b"", b""]
        self.allowed += 1
        return envelope + [b"1.0", request_id, b"200", b"OK", key.hex().encode(), b""]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)
