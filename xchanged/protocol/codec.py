"""Envelope bytes <-> messages: verify first, decode second, with strict limits.

Frame layout (all of it covered by the signature except the signature itself):

    b"XC" | version (1 byte) | sender public key (32) | payload (msgpack) | Ed25519 signature (64)
    payload = msgpack([type, incarnation, seq, ts_ms, body])

The sender's key sits at a fixed offset so the receiver can check trust and the signature before it
parses a single byte of attacker-controlled msgpack. Only then is the payload unpacked, with limits
on every length and no ext types. A frame that fails any check raises `DecodeError` whose `reason`
is a stable label, used by the daemon to count drops.

Replay protection and the clock-skew check need state and time, so they live in `replay.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import messages
from .errors import RemoteProtocolError
from .signing import PUBLIC_KEY_LEN, SIGNATURE_LEN, TrustStore, node_id, sign, verify

MAGIC = b"XC"
VERSION = 1
HEADER_LEN = len(MAGIC) + 1 + PUBLIC_KEY_LEN
MAX_FRAME = 4 << 20            # bytes; also the ZeroMQ socket's MAXMSGSIZE
MIN_FRAME = HEADER_LEN + 1 + SIGNATURE_LEN

# Stable drop reasons (metric labels).
TRUNCATED = "truncated"
OVERSIZED = "oversized"
BAD_MAGIC = "bad_magic"
BAD_VERSION = "bad_version"
UNTRUSTED = "untrusted"
BAD_SIGNATURE = "bad_signature"
MALFORMED = "malformed"
UNKNOWN_TYPE = "unknown_type"
INVALID_BODY = "invalid_body"
STALE = "stale"
REPLAYED = "replayed"
DROP_REASONS = (TRUNCATED, OVERSIZED, BAD_MAGIC, BAD_VERSION, UNTRUSTED, BAD_SIGNATURE, MALFORMED,
                UNKNOWN_TYPE, INVALID_BODY, STALE, REPLAYED)


class DecodeError(RemoteProtocolError):
    """A frame was rejected; `reason` is one of DROP_REASONS."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified, decoded frame. `raw` is the exact signed bytes (for relaying and audit)."""

    sender_key: bytes
    sender: str                # node id derived from sender_key
    incarnation: int
    seq: int
    ts_ms: int
    message: Any               # one of messages.MESSAGE_TYPES
    raw: bytes

    @property
    def type(self) -> str:
        return str(self.message.TYPE)


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(
        payload,
        raw=False,
        strict_map_key=True,
        use_list=True,
        max_str_len=messages.MAX_OUTPUT_BYTES,
        max_bin_len=messages.MAX_OUTPUT_BYTES,
        max_array_len=messages.MAX_PARTS,        # the longest list a message may hold (a composite's items);
                                                 # each field's own bound is checked when its body is built
        max_map_len=messages.MAX_ITEMS,
        max_ext_len=0,
    )


Signer = Callable[[Ed25519PrivateKey, bytes], bytes]
Verifier = Callable[[bytes, bytes, bytes], bool]


class Encoder:
    """Signs outgoing messages for one node incarnation; owns the sequence counter. `signer` is
    Ed25519 (signing.sign) everywhere but in the simulator, which may pass a cheap stand-in."""

    def __init__(self, private_key: Ed25519PrivateKey, public_key: bytes, incarnation: int, signer: Signer = sign):
        self._key = private_key
        self._header = MAGIC + bytes([VERSION]) + public_key
        self._sign = signer
        self.incarnation = incarnation
        self.seq = 0

    def encode(self, message: Any, ts_ms: int) -> bytes:
        self.seq += 1
        payload: bytes = msgpack.packb([message.TYPE, self.incarnation, self.seq, ts_ms, messages.to_body(message)],
                                       use_bin_type=True)
        signed = self._header + payload
        frame = signed + self._sign(self._key, signed)
        if len(frame) > MAX_FRAME:
            raise ValueError(f"frame of {len(frame)} bytes exceeds MAX_FRAME")
        return frame


def decode(frame: bytes, trust: TrustStore, verifier: Verifier = verify) -> Envelope:
    """Check and decode one frame; raises DecodeError. Verification precedes any parsing. `verifier`
    is Ed25519 (signing.verify) everywhere but in the simulator (see Encoder)."""
    return _decode(frame, trust, verifier)


def decode_self_signed(frame: bytes, verifier: Verifier = verify) -> Envelope:
    """Check and decode a frame whatever its sender's key, signature included; for a frame from a key
    not (yet) trusted that may carry a certificate vouching for it (inbound.py). The caller decides
    whether to believe the sender: nothing here says it is trusted."""
    return _decode(frame, None, verifier)


def _decode(frame: bytes, trust: TrustStore | None, verifier: Verifier) -> Envelope:
    if len(frame) < MIN_FRAME:
        raise DecodeError(TRUNCATED, f"{len(frame)} bytes")
    if len(frame) > MAX_FRAME:
        raise DecodeError(OVERSIZED, f"{len(frame)} bytes")
    if frame[:2] != MAGIC:
        raise DecodeError(BAD_MAGIC)
    if frame[2] != VERSION:
        raise DecodeError(BAD_VERSION, str(frame[2]))
    key = bytes(frame[3:HEADER_LEN])
    if trust is not None and key not in trust:
        raise DecodeError(UNTRUSTED, node_id(key))
    signed, signature = frame[:-SIGNATURE_LEN], frame[-SIGNATURE_LEN:]
    if not verifier(key, signature, signed):
        raise DecodeError(BAD_SIGNATURE, node_id(key))
    try:
        decoded = _unpack(signed[HEADER_LEN:])
    except Exception as exc:  # msgpack raises a zoo of types on hostile input
        raise DecodeError(MALFORMED, type(exc).__name__) from None
    if not isinstance(decoded, list) or len(decoded) != 5:
        raise DecodeError(MALFORMED, "payload must be [type, incarnation, seq, ts_ms, body]")
    mtype, incarnation, seq, ts_ms, body = decoded
    for name, value in (("incarnation", incarnation), ("seq", seq), ("ts_ms", ts_ms)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 63):
            raise DecodeError(MALFORMED, f"{name} must be a non-negative int")
    cls = messages.MESSAGE_TYPES.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise DecodeError(UNKNOWN_TYPE, repr(mtype)[:40])
    try:
        message = messages.from_body(cls, body)
    except RemoteProtocolError as exc:
        raise DecodeError(INVALID_BODY, exc.detail) from None
    return Envelope(key, node_id(key), incarnation, seq, ts_ms, message, bytes(frame))
