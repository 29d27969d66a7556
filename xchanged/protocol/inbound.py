"""The gate every peer frame passes before the protocol core sees it; one for each driver.

Order: byte-identical duplicates are skipped first (cheap, and gossip delivers relays by several
paths); then the codec verifies the signature and decodes; then freshness and replay. A relayable
frame (a load, a suspicion, a death verdict: messages.RELAYABLE) gets only the freshness check,
because relays deliver them late and out of order (the membership table orders them by their
node's life and version); every other frame also passes the replay window. A frame that carries
relayed frames (a `gossip` batch, a probe's piggyback) proves its sender alive, then each frame in
it is admitted on its own, exactly as if it had come alone (`relayed=True`), and must be relayable.

A frame from a key we do not trust is dropped (`untrusted`), unless the driver gave a `vouch` (it
trusts a cluster CA) and the frame is a load carrying a certificate: then, after its signature is
verified and it is decoded, `vouch(key, certificate, wall_ms)` decides. On success the key is trusted
from then on (vouch adds it to the trust store) and the frame goes on as any other; otherwise it is
dropped with the certificate's reason (certs.CERT_REASONS). This is how a new host joins by
presenting a certificate, directly or in a load relayed by others, without any other host's files
changing.
"""

from __future__ import annotations

from typing import Callable

from . import codec
from .events import FrameDropped, MessageReceived
from .messages import RELAYABLE, carried_frames
from .replay import DuplicateFilter, ReplayGuard
from .signing import TrustStore

Decode = Callable[[bytes, TrustStore], codec.Envelope]


class FrameGate:
    def __init__(self, trust: TrustStore, vouch: Callable[[bytes, bytes, int], str | None] | None = None,
                 decode: Decode = codec.decode, duplicates: DuplicateFilter | None = None):
        self.trust = trust
        self.vouch = vouch                   # (key, certificate, wall_ms) -> None (now trusted) | drop reason
        self.decode = decode                 # codec.decode, but in the simulator (cheap signatures, a cache)
        self.guard = ReplayGuard()
        self.duplicates = duplicates or DuplicateFilter()
        self.duplicate_frames = 0            # gossip redundancy, not an error: not counted as a drop

    def admit(self, frame: bytes, wall_ms: int) -> list[MessageReceived | FrameDropped]:
        """The events one received frame gives the core: MessageReceived and/or FrameDropped."""
        events: list[MessageReceived | FrameDropped] = []
        self._admit(frame, wall_ms, False, events)
        return events

    def _admit(self, frame: bytes, wall_ms: int, batched: bool, events: list[MessageReceived | FrameDropped]) -> None:
        if self.duplicates.seen_before(frame):
            self.duplicate_frames += 1
            return
        try:
            env = self._decode(frame, wall_ms)
            if env.type in RELAYABLE:
                self.guard.check_fresh(env, wall_ms)
            elif batched:
                raise codec.DecodeError(codec.INVALID_BODY, f"{env.type} in a gossip batch")
            else:
                self.guard.check(env, wall_ms)
        except codec.DecodeError as exc:
            events.append(FrameDropped(exc.reason))
            return
        events.append(MessageReceived(env, relayed=batched))
        if not batched:
            for inner in carried_frames(env.message):
                self._admit(inner, wall_ms, True, events)

    def _decode(self, frame: bytes, wall_ms: int) -> codec.Envelope:
        try:
            return self.decode(frame, self.trust)
        except codec.DecodeError as exc:
            if exc.reason != codec.UNTRUSTED or self.vouch is None:
                raise
        env = codec.decode_self_signed(frame)
        cert = getattr(env.message, "cert", b"") if env.type == "load" else b""
        if not cert:
            raise codec.DecodeError(codec.UNTRUSTED, env.sender)
        refused = self.vouch(env.sender_key, cert, wall_ms)
        if refused is not None:
            raise codec.DecodeError(refused, env.sender)
        return env
