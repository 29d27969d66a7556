"""The audit log's record format, pure: framing, canonical encoding, entry checks, scanning.

The runtime's audit module does the file I/O (appending, fsync, locking, recovery, the head file);
everything here works on bytes already in memory, so the protocol core, the CLI and tests can
check records and signed tree heads without touching a file. See runtime/audit.py for why.

File format of an audit log: frames back to back, nothing else::

    frame   = length:u32 big-endian | crc32(payload):u32 big-endian | payload
    payload = msgpack map with exactly these keys, in this order:
        "i"      index of the record: 0, 1, 2, ...
        "prev"   SHA-256 of the previous record's payload (32 zero bytes for record 0)
        "entry"  the entry dict given to append()
        "sig"    Ed25519 signature by the node over
                 msgpack([b"xchanged-audit-v1", node_id, i, prev, entry])

Payloads must be msgpack's canonical encoding of that map (re-encoding must give the same bytes),
so no byte can change without changing what is signed. The leaves of the Merkle tree (RFC 9162,
see xchanged.protocol.merkle) are the payloads. A signed tree head is JSON:
{"version": 1, "node_id", "size", "root" (hex), "time_ms", "signature" (hex)}, the signature over
msgpack([b"xchanged-sth-v1", node_id, size, root, time_ms]); the same dict (without "version")
travels in the gossiped load signal as `Load.audit_head`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .merkle import leaf_hash

__all__ = [
    "EVENTS", "HEAD_VERSION", "MAX_PAYLOAD_BYTES", "AuditRecord", "BadRecord", "Problem", "Scan",
    "SignedTreeHead", "decode_record", "encode_frame", "entry_problem", "head_text", "parse_head",
    "verify_head_dict",
]

Buffer = Any
"""What Scan reads: bytes, or a read-only mmap of a log file (anything indexable and find-able)."""

EVENTS = frozenset({"award", "accept", "reject", "result", "reassign", "cancel"})
"""The values an entry's "event" may take."""

RECORD_DOMAIN = b"xchanged-audit-v1"
"""First element of what a record signature covers, so it can't pass for another signature."""
HEAD_DOMAIN = b"xchanged-sth-v1"
"""First element of what a tree head signature covers."""
HEAD_VERSION = 1

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
"""Longer length fields are damage: an entry holds a task spec and a signed frame, not bulk data."""
MAX_ENTRY_DEPTH = 32
"""Nesting limit for entries, so a hostile log can't exhaust the stack of a verifier."""

FRAME_HEADER = struct.Struct(">II")
ZERO_HASH = bytes(32)
SIGNATURE_SIZE = 64
PAYLOAD_KEYS = ["i", "prev", "entry", "sig"]
# Every canonical payload starts with fixmap(4), fixstr(1) "i": where to look for valid frames.
PAYLOAD_START = b"\x84\xa1i"
_INT_RANGE = range(-(2**63), 2**64)




@dataclass(frozen=True)
class SignedTreeHead:
    """The node's signed statement "my log's first `size` records have Merkle root `root`"."""

    node_id: str
    size: int
    root: bytes
    time_ms: int
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str):
            raise ValueError("node_id must be a str")
        for name in ("size", "time_ms"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative int")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise ValueError("root must be 32 bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_SIZE:
            raise ValueError(f"signature must be {SIGNATURE_SIZE} bytes")

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, node_id: str, size: int, root: bytes, time_ms: int
    ) -> SignedTreeHead:
        """Sign (size, root, time_ms) as `node_id`."""
        signature = key.sign(head_message(node_id, size, root, time_ms))
        return cls(node_id, size, root, time_ms, signature)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """True if `public_key` signed this head."""
        message = head_message(self.node_id, self.size, self.root, self.time_ms)
        return signature_ok(public_key, self.signature, message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, bytes as hex (the head file's content, and the gossiped audit head)."""
        return {
            "node_id": self.node_id,
            "size": self.size,
            "root": self.root.hex(),
            "time_ms": self.time_ms,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SignedTreeHead:
        """Inverse of to_dict; ValueError on anything else (a "version" key of 1 is allowed)."""
        if not isinstance(d, dict):
            raise ValueError("a signed tree head is a JSON object")
        fields = {"node_id", "size", "root", "time_ms", "signature"}
        extra = set(d) - fields - {"version"}
        if extra or fields - set(d):
            raise ValueError(f"head keys must be {sorted(fields)}, got {sorted(d)}")
        if d.get("version", HEAD_VERSION) != HEAD_VERSION:
            raise ValueError(f"unknown head version {d['version']!r}")
        try:
            root = bytes.fromhex(d["root"])
            signature = bytes.fromhex(d["signature"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"root and signature must be hex strings: {exc}") from None
        return cls(d["node_id"], d["size"], root, d["time_ms"], signature)


@dataclass(frozen=True)
class AuditRecord:
    """One record as read back from the log; `offset` is where its frame starts in the file."""

    index: int
    entry: dict[str, Any]
    prev: bytes
    signature: bytes
    offset: int

    def payload(self) -> bytes:
        """The record's payload bytes (canonical, so identical to those in the file)."""
        return pack_payload(self.index, self.prev, self.entry, self.signature)

    def leaf_hash(self) -> bytes:
        """The record's Merkle leaf hash, for verifying an inclusion proof."""
        return leaf_hash(self.payload())

    def verify(self, public_key: Ed25519PublicKey, node_id: str) -> bool:
        """True if `node_id`'s `public_key` signed this record."""
        message = record_message(node_id, self.index, self.prev, self.entry)
        return signature_ok(public_key, self.signature, message)


# --- encoding ------------------------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def pack_payload(index: int, prev: bytes, entry: dict[str, Any], signature: bytes) -> bytes:
    return _pack({"i": index, "prev": prev, "entry": entry, "sig": signature})


def record_message(node_id: str, index: int, prev: bytes, entry: dict[str, Any]) -> bytes:
    return _pack([RECORD_DOMAIN, node_id, index, prev, entry])


def head_message(node_id: str, size: int, root: bytes, time_ms: int) -> bytes:
    return _pack([HEAD_DOMAIN, node_id, size, root, time_ms])


def signature_ok(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def entry_problem(entry: object) -> str | None:
    """Why `entry` can't be logged, or None if it can."""
    if not isinstance(entry, dict):
        return f"an entry is a dict, not {type(entry).__name__}"
    event = entry.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        return f"entry['event'] is {event!r}, not one of {', '.join(sorted(EVENTS))}"
    return _value_problem(entry, "entry", 0)


def _value_problem(value: object, where: str, depth: int) -> str | None:
    if depth > MAX_ENTRY_DEPTH:
        return f"{where}: nested deeper than {MAX_ENTRY_DEPTH}"
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    if isinstance(value, int):
        return None if value in _INT_RANGE else f"{where}: int {value} does not fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: float {value} is not finite"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _value_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} is not a str"
            problem = _value_problem(item, f"{where}[{key!r}]", depth + 1)
            if problem:
                return problem
        return None
    return (
        f"{where}: {type(value).__name__} is not msgpack-able"
        " (use str, int, float, bool, None, bytes, list or dict)"
    )


def encode_frame(payload: bytes) -> bytes:
    """length | crc32 | payload: one record as it goes into the file."""
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def head_text(head: SignedTreeHead) -> str:
    """The content of a head file."""
    return json.dumps({"version": HEAD_VERSION, **head.to_dict()}, indent=1) + "\n"


def parse_head(data: bytes | str) -> SignedTreeHead:
    """Parse a head file's content; ValueError if it is not a signed tree head."""
    try:
        return SignedTreeHead.from_dict(json.loads(data))
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"not a signed tree head ({exc})") from None


def verify_head_dict(d: object, public_key: bytes, node_id: str) -> tuple[SignedTreeHead | None, str]:
    """Check a gossiped head (SignedTreeHead.to_dict form) of `node_id`, signed by raw `public_key`.

    Returns (head, "") when it is well formed, names `node_id` and its signature verifies, else
    (head or None, why not). Pure: the protocol core uses it on heads from load signals.
    """
    try:
        head = SignedTreeHead.from_dict(d)  # type: ignore[arg-type]
    except ValueError as exc:
        return None, f"malformed head: {exc}"
    if head.node_id != node_id:
        return head, f"head names node {head.node_id!r}, not its sender {node_id!r}"
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return head, "sender key is not an Ed25519 key"
    if not head.verify(key):
        return head, "head signature does not verify"
    return head, ""


# --- reading and checking frames -------------------------------------------------------------


class BadRecord(Exception):
    """Why a frame or record at some offset is not valid (internal)."""


@dataclass(frozen=True)
class Problem:
    index: int
    offset: int
    reason: str
    torn: bool  # no valid record after it: may be a write cut short, not tampering
    framing: bool = False  # the frame itself is bad (short, zero or implausible length, CRC), as a
    # crash can leave it; False: a whole frame holding a wrong record, which no crash writes

    def describe(self) -> str:
        text = f"record {self.index} at byte {self.offset}: {self.reason}"
        if self.torn:
            text += " (the final record is incomplete: a torn write, or the end was damaged)"
        return text


class Scan:
    """Walks a log's frames in order, checking each; stops at the first problem.

    Iterating yields (record, payload) for each good record; afterwards `problem`, `count`,
    `end` (offset after the last good record) and `last_digest` describe where it stopped.
    """

    def __init__(
        self, buf: Buffer, public_key: Ed25519PublicKey | None = None,
        node_id: str | None = None, verify_from: int = 0,
    ) -> None:
        self._buf = buf
        self._public_key = public_key
        self._node_id = node_id
        self._verify_from = verify_from  # signatures are checked from this index on
        self.problem: Problem | None = None
        self.count = 0
        self.end = 0
        self.last_digest = ZERO_HASH

    def __iter__(self) -> Iterator[tuple[AuditRecord, bytes]]:
        buf = self._buf
        while self.end < len(buf):
            offset, index = self.end, self.count
            try:
                payload = frame_payload(buf, offset)
            except BadRecord as bad:
                torn = not valid_record_after(buf, offset + 1, index)
                self.problem = Problem(index, offset, str(bad), torn, framing=True)
                return
            try:
                record = decode_record(payload, offset)
                self._check(record, index)
            except BadRecord as bad:
                self.problem = Problem(index, offset, str(bad), torn=False)
                return
            yield record, payload
            self.count = index + 1
            self.end = offset + FRAME_HEADER.size + len(payload)
            self.last_digest = hashlib.sha256(payload).digest()

    def _check(self, record: AuditRecord, index: int) -> None:
        if record.index != index:
            raise BadRecord(
                f"holds record {record.index} where {index} belongs (deleted, moved or inserted)"
            )
        if record.prev != self.last_digest:
            raise BadRecord("its link to the previous record is broken (prev hash mismatch)")
        if (
            self._public_key is not None
            and self._node_id is not None
            and index >= self._verify_from
            and not record.verify(self._public_key, self._node_id)
        ):
            raise BadRecord(f"signature does not verify for node {self._node_id!r}")


def frame_payload(buf: Buffer, offset: int) -> bytes:
    available = len(buf) - offset
    if available < FRAME_HEADER.size:
        raise BadRecord(f"short frame header ({available} of {FRAME_HEADER.size} bytes)")
    length, crc = FRAME_HEADER.unpack_from(buf, offset)
    if not 0 < length <= MAX_PAYLOAD_BYTES:
        raise BadRecord(f"implausible length {length}")
    start = offset + FRAME_HEADER.size
    if start + length > len(buf):
        raise BadRecord(f"short payload ({len(buf) - start} of {length} bytes)")
    payload = bytes(buf[start : start + length])
    if zlib.crc32(payload) != crc:
        raise BadRecord("CRC mismatch")
    return payload


def decode_record(payload: bytes, offset: int) -> AuditRecord:
    """Decode a payload, insisting on the exact canonical layout."""
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadRecord(f"payload is not valid msgpack ({exc})") from None
    if type(obj) is not dict or list(obj) != PAYLOAD_KEYS:
        raise BadRecord("payload is not an audit record")
    index, prev, entry, signature = obj["i"], obj["prev"], obj["entry"], obj["sig"]
    if type(index) is not int or index < 0:
        raise BadRecord("record index is not a non-negative int")
    if type(prev) is not bytes or len(prev) != 32:
        raise BadRecord("prev is not a 32-byte hash")
    if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        raise BadRecord("sig is not a 64-byte signature")
    problem = entry_problem(entry)
    if problem:
        raise BadRecord(problem)
    if pack_payload(index, prev, entry, signature) != payload:
        raise BadRecord("payload is not canonically encoded")
    return AuditRecord(index, entry, prev, signature, offset)


def valid_record_after(buf: Buffer, start: int, min_index: int) -> bool:
    """Is there a valid frame holding a record >= min_index anywhere from `start` on?"""
    position = buf.find(PAYLOAD_START, start + FRAME_HEADER.size)
    while position != -1:
        try:
            record = decode_record(frame_payload(buf, position - FRAME_HEADER.size), 0)
        except BadRecord:
            pass
        else:
            if record.index >= min_index:
                return True
        position = buf.find(PAYLOAD_START, position + 1)
    return False
