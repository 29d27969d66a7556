"""Peer frames into and out of the daemon.

In: frames from the peer socket go into per-peer queues (rate limits and bounds: inflow.py), and the
peers are served in turn, SERVE_FRAMES a round, through the gate (protocol/inbound.py) into the
daemon's input queue while that has room: once it is half full they wait in their queues, where a
flooding peer's frames are the ones dropped. The drops of a round are summed per reason, so a flood
costs the core one input per reason. A connection counts against its own limit if its Curve key is a
trusted node's, against the shared STRANGER one otherwise (insecure mode: its own).

Out: a message is signed once for all its targets. One to ourselves (our own contractor or manager)
takes no socket: it is signed as any other (it may be audit evidence) and not verified again; a
signed frame to ourselves (relayed, or an answer) goes through the gate as a peer's would.

The bytes of load and gossip frames are counted both ways (`stats`: gossip_bytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..protocol import codec
from ..protocol.events import FrameDropped, MessageReceived
from ..protocol.inbound import FrameGate
from .clock import wall_ms
from .inflow import STRANGER, Inflow
from .peer_keys import PeerKeys
from .transport import PeerTransport

log = logging.getLogger("xchanged")
SERVE_FRAMES = 256       # peer frames taken from the per-peer queues (inflow.py) between two yields
GOSSIP_TYPES = ("load", "gossip")


class PeerFrames:
    """The daemon's side of the peer socket, once it listens at `address`; `put` queues an input on
    `inputs`, the daemon's input queue."""

    def __init__(self, transport: PeerTransport, address: str, node_id: str, public_key: bytes,
                 encoder: codec.Encoder, inflow: Inflow, gate: FrameGate, keys: PeerKeys,
                 inputs: asyncio.Queue, put: Callable[[Any], None]) -> None:
        self.transport = transport
        self.address = address
        self.id = node_id
        self.public_key = public_key
        self.encoder = encoder
        self.inflow = inflow
        self.gate = gate
        self.keys = keys
        self.inputs = inputs
        self.put = put
        self.input_room = inputs.maxsize // 2   # peer frames wait in their queues while the input queue is this full
        self.room = asyncio.Event()             # set when the input queue has room for peer frames
        self.gossip_bytes = {"in": 0, "out": 0}   # load and gossip frames, received and sent

    # -- in -------------------------------------------------------------------------------------

    async def receive(self) -> None:
        """Peer frames: from the socket into per-peer queues (rate limits, bounds: inflow.py), then,
        peers served in turn, through the gate into the input queue, while that has room (else they
        wait in their queues, where a flooding peer's frames are the ones dropped)."""
        transport, inflow = self.transport, self.inflow
        while True:
            batch = transport.receive_ready() if len(inflow) else await transport.receive_batch()
            now = time.monotonic()
            for tag, frame in batch:
                inflow.offer(self._peer_of(tag), frame, now)
            if self.inputs.qsize() >= self.input_room:
                self.room.clear()
                await self.room.wait()
                continue
            drops: Counter[str] = Counter()         # summed up: a flood costs the core one input per reason
            for _ in range(SERVE_FRAMES):
                item = inflow.take()
                if item is None:
                    break
                self.accept(item[1], drops)
            for reason, n in drops.items():
                self.put(FrameDropped(reason, count=n))
            await asyncio.sleep(0)          # let the main loop take what was put

    def inputs_taken(self) -> None:
        """After each batch: peer frames may flow again once the input queue has room."""
        if self.inputs.qsize() < self.input_room:
            self.room.set()

    def _peer_of(self, tag: str | None) -> str:
        """The per-peer limit a connection's frames count against: its own if its Curve key is a
        trusted node's; the shared STRANGER one otherwise (insecure mode: the connection's own)."""
        if self.transport.curve is None:
            return tag or STRANGER
        try:
            return tag if tag and self.keys.trusted.is_trusted_curve(bytes.fromhex(tag)) else STRANGER
        except ValueError:
            return STRANGER

    def accept(self, frame: bytes, drops: Counter[str] | None = None) -> None:
        """One frame through the gate into the input queue; its drops counted in `drops` when given
        (the receive loop puts their sums in), else put one by one."""
        events = self.gate.admit(frame, wall_ms())
        if events and isinstance(events[0], MessageReceived) and events[0].envelope.type in GOSSIP_TYPES:
            self.gossip_bytes["in"] += len(frame)
        for event in events:
            if isinstance(event, FrameDropped):
                log.debug("dropped frame: %s", event.reason)
                if drops is not None:
                    drops[event.reason] += 1
                    continue
            elif isinstance(event, MessageReceived) and event.envelope.type == "load":
                self.keys.learn(event.envelope.message.address, event.envelope.sender_key)
            self.put(event)

    # -- out ------------------------------------------------------------------------------------

    def send_message(self, message: Any, targets: Any) -> None:
        """Sign `message` once and send it to each (peer, address) of `targets` (the Send effect)."""
        ts = wall_ms()
        frame = self.encoder.encode(message, ts)
        if message.TYPE in GOSSIP_TYPES:
            self.gossip_bytes["out"] += len(frame) * len(targets)
        for peer, address in targets:
            if peer == self.id or address == self.address:     # our own contractor (or manager): the
                # frame is signed as any other (it may be audit evidence), not verified again
                self.put(MessageReceived(codec.Envelope(self.public_key, self.id, self.encoder.incarnation,
                                                        self.encoder.seq, ts, message, frame)))
            else:
                self.send(peer, address, frame)

    def send(self, peer: str, address: str, frame: bytes) -> None:
        """One signed frame to a peer, dialled with its key (peer_keys.py)."""
        if peer == self.id or address == self.address:
            self.accept(frame)          # our own contractor: same checks, no socket
        elif address:
            self.transport.send(address, frame, self.keys.key_for(peer, address))
