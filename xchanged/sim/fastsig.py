"""A cheap stand-in for Ed25519, for the simulator only (the daemon never imports this module).

Signing and verifying every frame costs a simulated cluster of thousands of nodes more than the
protocol itself (an Ed25519 verification is ~100 us, most of an event). Here each node signs with
a keyed BLAKE2b MAC of the same length as an Ed25519 signature, under a secret only the simulator
holds, so a frame altered on the way is still rejected (`bad_signature`) and a node still cannot
sign as another; what is lost is only public verifiability, which a simulation does not need.

Decoding is also cached by the frame's bytes: the same signed frame reaches many nodes (gossip),
and the codec's answer for given bytes is always the same, so each distinct frame is checked and
parsed once per process. Nodes share the decoded envelope (frozen; nothing in the core mutates a
message).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from ..protocol import codec
from ..protocol.signing import SIGNATURE_LEN, TrustStore

CACHE_LIMIT = 200_000          # decoded frames kept (then the cache starts over)


class CheapSignatures:
    def __init__(self, seed: bytes = b"") -> None:
        self._secrets: dict[bytes, bytes] = {}
        self._seed = seed or os.urandom(16)
        self._cache: dict[bytes, codec.Envelope] = {}
        self.decoded = 0

    def signer(self, public_key: bytes) -> codec.Signer:
        secret = self._secrets.setdefault(public_key, hashlib.blake2b(self._seed + public_key, digest_size=32).digest())

        def sign(_key: Any, data: bytes) -> bytes:
            return hashlib.blake2b(data, key=secret, digest_size=SIGNATURE_LEN).digest()
        return sign

    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        secret = self._secrets.get(public_key)
        return secret is not None and hmac.compare_digest(
            signature, hashlib.blake2b(data, key=secret, digest_size=SIGNATURE_LEN).digest())

    def decode(self, frame: bytes, trust: TrustStore) -> codec.Envelope:
        env = self._cache.get(frame)
        if env is None:
            env = codec.decode(frame, trust, self.verify)       # raises DecodeError: never cached
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[frame] = env
            self.decoded += 1
        return env
