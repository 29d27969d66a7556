"""Test doubles for the protocol core, shared by its tests: a fake peer that signs what it says, and
a real Node driven by hand with time passed in. Every test builds its own trust store (the `trust`
fixture), so no test sees another's keys."""

from __future__ import annotations

import random

from xchanged.protocol import codec
from xchanged.protocol.codec import Envelope
from xchanged.protocol.effects import Send
from xchanged.protocol.events import Instant, MessageReceived
from xchanged.protocol.messages import Load
from xchanged.protocol.node import Node, NodeSettings
from xchanged.protocol.signing import TrustStore, generate_key, node_id, public_bytes

WALL = 1_790_000_000_000


class FakePeer:
    """A peer's identity: signs frames as the codec would receive them from it."""

    def __init__(self, name: str, trust: TrustStore, incarnation: int = 1):
        self.name, self.trust = name, trust
        self.key = generate_key()
        self.pub = public_bytes(self.key)
        self.id = node_id(self.pub)
        self.address = f"{name}:1"
        self.encoder = codec.Encoder(self.key, self.pub, incarnation)
        trust.keys[self.pub] = name

    def restart(self) -> None:
        """A new incarnation, as after a restart of its daemon."""
        self.encoder = codec.Encoder(self.key, self.pub, self.encoder.incarnation + 1)

    def env(self, message: object, t: float = 0.0) -> Envelope:
        return codec.decode(self.encoder.encode(message, WALL + int(t * 1000)), self.trust)

    def say(self, message: object, t: float = 0.0) -> MessageReceived:
        return MessageReceived(self.env(message, t))

    def load(self, slots: int = 2, free: int = 2, labels: dict | None = None, cpu: float = 10.0,
             **fields: object) -> Load:
        return Load(name=self.name, address=self.address, slots=slots, slots_free=free, running=slots - free,
                    queued=0, cpus=slots, cpu_percent=cpu, mem_total=1 << 34, mem_available=1 << 33,
                    labels=labels or {}, **fields)


class NodeUnderTest:
    """A real Node with its own key, fed inputs at hand-moved times; its effects are collected."""

    def __init__(self, trust: TrustStore, name: str = "node", slots: int = 1, **settings: object):
        me = FakePeer(name, trust)
        self.id, self.trust = me.id, trust
        self.node = Node(me.id, NodeSettings(name=name, address=me.address, slots=slots, **settings),
                         random.Random(1))
        self.t = 0.0
        self.effects: list = []

    def handle(self, event: object, t: float | None = None) -> list:
        if t is not None:
            self.t = t
        out = self.node.handle(event, Instant(self.t, WALL + int(self.t * 1000)))
        self.node.validate_state()
        self.effects += out
        return out

    def hear(self, peer: FakePeer, message: object, t: float | None = None) -> list:
        if t is not None:
            self.t = t
        return self.handle(peer.say(message, self.t))

    def sent(self, cls: type, to: str | None = None) -> list[tuple]:
        """(targets, message) of every Send of a `cls` message so far (to one peer id, if given)."""
        return [(e.targets, e.message) for e in self.effects if isinstance(e, Send) and isinstance(e.message, cls)
                and (to is None or any(pid == to for pid, _ in e.targets))]
