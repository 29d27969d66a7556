"""Append-only, tamper-evident log of awards and their outcomes (issue 6).

Why: an award, its acceptance and its result are evidence when two nodes disagree about who ran
what. The log lets a node show what it agreed to, and lets anyone holding its public key check
that nothing was altered, removed, reordered or inserted afterwards.

File format of ``<path>``: frames back to back, nothing else::

    frame   = length:u32 big-endian | crc32(payload):u32 big-endian | payload
    payload = msgpack map with exactly these keys, in this order:
        "i"      index of the record: 0, 1, 2, ...
        "prev"   SHA-256 of the previous record's payload (32 zero bytes for record 0)
        "entry"  the entry dict given to append()
        "sig"    Ed25519 signature by the node over
                 msgpack([b"xchanged-audit-v1", node_id, i, prev, entry])

Payloads must be msgpack's canonical encoding of that map (re-encoding must give the same bytes),
so no byte can change without changing what is signed. The leaves of the Merkle tree (RFC 9162,
see xchanged.protocol.merkle) are the payloads. The signed tree head lives in ``<path>.head`` as
JSON: {"version": 1, "node_id", "size", "root" (hex), "time_ms", "signature" (hex)}, the signature
over msgpack([b"xchanged-sth-v1", node_id, size, root, time_ms]).

What each layer catches:

- crc32: torn writes and bit rot, cheaply, before anything is decoded;
- "i" and "prev": records deleted, swapped or inserted (a hash chain);
- "sig": records forged or altered by anyone without the node's key;
- the signed head: the end cut off, and history rewritten later even by the key's holder.

Recovery at open: a short or CRC-bad record at the very end, with no valid record after it, is a
torn write; it is truncated away and a warning logged. A bad record followed by any valid record
is damage or tampering: AuditCorrupted, naming the record's index and byte offset. Nothing before
the tail is ever rewritten, and a tail the signed head covers is never dropped (AuditCorrupted).

Durability: append() hands the frame to the kernel at once (it survives the process dying);
flush() fsyncs (it survives power loss), once for any number of appends (group commit). A failed
fsync poisons the log for good: the kernel may already have dropped the dirty pages and reported
the error once, so a retry could "succeed" with the data lost. The daemon must stop.

An AuditLog is not thread-safe: the daemon's one loop owns it. verify_log and read_records only
read, so they work on a copy or on a log another process is appending to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import mmap
import os
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xchanged.protocol.merkle import MerkleAccumulator, leaf_hash

__all__ = [
    "EVENTS", "AuditCorrupted", "AuditEntryError", "AuditError", "AuditFsyncError", "AuditLocked",
    "AuditLog", "AuditRecord", "AuditWriteError", "SignedTreeHead", "VerifyReport",
    "read_records", "verify_log",
]

EVENTS = frozenset({"award", "accept", "reject", "result", "reassign", "cancel"})
"""The values an entry's "event" may take."""

RECORD_DOMAIN = b"xchanged-audit-v1"
"""First element of what a record signature covers, so it can't pass for another signature."""
HEAD_DOMAIN = b"xchanged-sth-v1"
"""First element of what a tree head signature covers."""
HEAD_SUFFIX = ".head"
"""The signed head of ``<path>`` is ``<path>.head``."""
HEAD_VERSION = 1

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
"""Longer length fields are damage: an entry holds a task spec and a signed frame, not bulk data."""
MAX_ENTRY_DEPTH = 32
"""Nesting limit for entries, so a hostile log can't exhaust the stack of a verifier."""

_FRAME_HEADER = struct.Struct(">II")
_ZERO_HASH = bytes(32)
_SIGNATURE_SIZE = 64
_PAYLOAD_KEYS = ["i", "prev", "entry", "sig"]
# Every canonical payload starts with fixmap(4), fixstr(1) "i": where to look for valid frames.
_PAYLOAD_START = b"\x84\xa1i"
_INT_RANGE = range(-(2**63), 2**64)


class AuditError(Exception):
    """Base of the audit log's errors."""


class AuditEntryError(AuditError, ValueError):
    """The caller's entry can't be logged (bad event, not msgpack-able, too large)."""


class AuditLocked(AuditError):
    """Another process has the log open: two writers would interleave their records."""


class AuditWriteError(AuditError):
    """Writing to the log failed (disk full, I/O error); the log refuses further use."""


class AuditFsyncError(AuditError):
    """An fsync failed: what was appended may be lost. Stop the daemon; never retry."""


class AuditCorrupted(AuditError):
    """The log or its head is damaged or was tampered with; the daemon must refuse to start."""

    def __init__(self, path: str, index: int | None, offset: int | None, reason: str) -> None:
        self.path = path
        self.index = index
        self.offset = offset
        self.reason = reason
        where = "" if index is None else f" at record {index}"
        where += "" if offset is None else f" (byte {offset})"
        super().__init__(f"audit log {path} is corrupted{where}: {reason}")


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
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIGNATURE_SIZE:
            raise ValueError(f"signature must be {_SIGNATURE_SIZE} bytes")

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, node_id: str, size: int, root: bytes, time_ms: int
    ) -> SignedTreeHead:
        """Sign (size, root, time_ms) as `node_id`."""
        signature = key.sign(_head_message(node_id, size, root, time_ms))
        return cls(node_id, size, root, time_ms, signature)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """True if `public_key` signed this head."""
        message = _head_message(self.node_id, self.size, self.root, self.time_ms)
        return _signature_ok(public_key, self.signature, message)

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
    entry: dict
    prev: bytes
    signature: bytes
    offset: int

    def payload(self) -> bytes:
        """The record's payload bytes (canonical, so identical to those in the file)."""
        return _pack_payload(self.index, self.prev, self.entry, self.signature)

    def leaf_hash(self) -> bytes:
        """The record's Merkle leaf hash, for verifying an inclusion proof."""
        return leaf_hash(self.payload())

    def verify(self, public_key: Ed25519PublicKey, node_id: str) -> bool:
        """True if `node_id`'s `public_key` signed this record."""
        message = _record_message(node_id, self.index, self.prev, self.entry)
        return _signature_ok(public_key, self.signature, message)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of verify_log. `size`: records that passed, in order, before any problem."""

    ok: bool
    size: int
    first_bad_index: int | None
    message: str
    head: SignedTreeHead | None = None


class AuditLog:
    """The node's audit log file, open for appending; see the module docstring for the format."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        signing_key: Ed25519PrivateKey,
        node_id: str,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self._path = os.fspath(path)
        self._head_path = self._path + HEAD_SUFFIX
        self._key = signing_key
        self._public_key = signing_key.public_key()
        self._node_id = node_id
        self._logger = logger or logging.getLogger(__name__)
        self._tree = MerkleAccumulator()
        self._offsets = array("Q")  # frame offset of each record, for records() and proofs
        self._end = 0  # file offset after the last whole record
        self._last_digest = _ZERO_HASH  # SHA-256 of the last payload: the next record's "prev"
        self._durable_size = 0
        self._head: SignedTreeHead | None = None
        self._failure: AuditError | None = None  # set once an I/O error poisoned the log
        self._fd = _open_locked(self._path)
        try:
            self._recover()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    # --- state -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def size(self) -> int:
        """Records appended, durable or not."""
        return len(self._tree)

    @property
    def durable_size(self) -> int:
        """Records known to be on disk (fsynced)."""
        return self._durable_size

    @property
    def head(self) -> SignedTreeHead | None:
        """The last signed tree head, or None before the first sign_head()."""
        return self._head

    @property
    def root(self) -> bytes:
        """Merkle root over all records appended."""
        return self._tree.root()

    # --- writing -----------------------------------------------------------------------------

    def append(self, entry: dict) -> int:
        """Sign and write one record (not yet durable: see flush); returns its index."""
        self._check_usable()
        problem = _entry_problem(entry)
        if problem:
            raise AuditEntryError(f"audit entry rejected: {problem}")
        index = self.size
        prev = self._last_digest
        signature = self._key.sign(_record_message(self._node_id, index, prev, entry))
        payload = _pack_payload(index, prev, entry, signature)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise AuditEntryError(f"audit entry rejected: {len(payload)} bytes, over the limit")
        self._write(_FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        self._offsets.append(self._end)
        self._end += _FRAME_HEADER.size + len(payload)
        self._tree.append(leaf_hash(payload))
        self._last_digest = hashlib.sha256(payload).digest()
        return index

    def flush(self) -> None:
        """Make every record appended so far durable with one fsync (group commit)."""
        self._check_usable()
        if self._durable_size == self.size:
            return
        size = self.size
        self._fsync(self._fd, "the log")
        self._durable_size = size

    def sign_head(self, time_ms: int) -> SignedTreeHead:
        """Flush, then sign (size, root, time_ms) and replace the head file atomically."""
        self.flush()
        head = SignedTreeHead.sign(self._key, self._node_id, self.size, self.root, time_ms)
        text = json.dumps({"version": HEAD_VERSION, **head.to_dict()}, indent=1) + "\n"
        temp_path = self._head_path + ".tmp"
        try:
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, text.encode())
                self._fsync(fd, "the new head")
            finally:
                os.close(fd)
            os.replace(temp_path, self._head_path)
        except OSError as exc:
            raise AuditWriteError(f"writing {self._head_path} failed: {exc}") from exc
        self._fsync_dir()
        self._head = head
        return head

    def close(self) -> None:
        """Flush what is pending (unless the log is poisoned) and release the file."""
        if self._fd < 0:
            return
        try:
            if self._failure is None:
                self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------------

    def records(self, start: int = 0) -> Iterator[AuditRecord]:
        """Records from `start` up to the size at the time of the call."""
        if self._fd < 0:
            raise AuditError("the audit log is closed")
        for index in range(max(start, 0), self.size):
            offset = self._offsets[index]
            header = os.pread(self._fd, _FRAME_HEADER.size, offset)
            length, crc = _FRAME_HEADER.unpack(header)
            payload = os.pread(self._fd, length, offset + _FRAME_HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise AuditCorrupted(self._path, index, offset, "changed on disk while open")
            yield _decode_record(payload, offset)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Merkle audit path of record `index` in the tree of the first `size` records."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Merkle proof that the first `old_size` records are a prefix of the first `new_size`."""
        return self._tree.consistency_proof(old_size, new_size)

    # --- internals ---------------------------------------------------------------------------

    def _recover(self) -> None:
        head = self._read_own_head()
        # Records the head covers are vouched for by its one signature over their Merkle root
        # (checked below), so only later records need their own signature checked: a long log
        # opens in seconds, not minutes. verify_log still checks every signature.
        file_size = os.fstat(self._fd).st_size
        with _mapped(self._fd, file_size) as buf:
            scan = _Scan(buf, self._public_key, self._node_id, head.size if head else 0)
            for record, payload in scan:
                self._offsets.append(record.offset)
                self._tree.append(leaf_hash(payload))
        problem = scan.problem
        if problem is not None and not problem.torn:
            raise AuditCorrupted(self._path, problem.index, problem.offset, problem.reason)
        if head is not None:
            self._check_head_covers_log(head, scan, problem)
        self._head = head
        if problem is not None:
            self._logger.warning(
                "audit log %s: dropped an incomplete final record %d at byte %d (%s); "
                "keeping %d records",
                self._path, problem.index, problem.offset, problem.reason, scan.count,
            )
            try:
                os.ftruncate(self._fd, scan.end)
            except OSError as exc:
                raise AuditWriteError(f"truncating {self._path} failed: {exc}") from exc
            self._fsync(self._fd, "the truncated log")
        self._end = scan.end
        self._last_digest = scan.last_digest
        self._durable_size = self.size

    def _read_own_head(self) -> SignedTreeHead | None:
        try:
            os.unlink(self._head_path + ".tmp")  # a head write cut short by a crash
        except FileNotFoundError:
            pass
        try:
            head = _read_head_file(self._head_path)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise AuditCorrupted(self._head_path, None, None, str(exc)) from None
        if head.node_id != self._node_id:
            raise AuditCorrupted(
                self._head_path, None, None,
                f"head is for node {head.node_id!r}, this node is {self._node_id!r}",
            )
        if not head.verify(self._public_key):
            raise AuditCorrupted(self._head_path, None, None, "head signature does not verify")
        return head

    def _check_head_covers_log(
        self, head: SignedTreeHead, scan: _Scan, torn: _Problem | None
    ) -> None:
        if head.size > scan.count:
            offset = torn.offset if torn else scan.end
            raise AuditCorrupted(
                self._path, scan.count, offset,
                f"the signed head covers {head.size} records but only {scan.count} are whole"
                + (f" ({torn.reason})" if torn else " (records were removed from the end)"),
            )
        if self._tree.root(head.size) != head.root:
            raise AuditCorrupted(
                self._head_path, None, None,
                f"head root does not match the log's first {head.size} records",
            )

    def _check_usable(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise type(failure)(f"audit log unusable after an earlier error: {failure}")
        if self._fd < 0:
            raise AuditError("the audit log is closed")

    def _write(self, frame: bytes) -> None:
        try:
            _write_all(self._fd, frame)
        except OSError as exc:
            try:  # keep the file a whole number of records for the next start
                os.ftruncate(self._fd, self._end)
            except OSError:
                pass  # the next open treats the partial frame as a torn write
            self._failure = AuditWriteError(f"writing {self._path} failed: {exc}")
            raise self._failure from exc

    def _fsync(self, fd: int, what: str) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failure = AuditFsyncError(f"fsync of {what} ({self._path}) failed: {exc}")
            raise self._failure from exc

    def _fsync_dir(self) -> None:
        fd = os.open(os.path.dirname(os.path.abspath(self._path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._fsync(fd, "the log's directory")
        finally:
            os.close(fd)


def verify_log(
    path: str | os.PathLike[str],
    public_key: Ed25519PublicKey,
    *,
    head_path: str | os.PathLike[str] | None = None,
    node_id: str | None = None,
) -> VerifyReport:
    """Check a (copied) log offline: every frame, link and signature, and the signed head.

    head_path defaults to ``<path>.head`` (a missing default head is reported in the message but
    is not an error: then entries cut from the end can't be detected). node_id defaults to the
    head's; without either the record signatures can't be checked: ValueError.
    """
    path = os.fspath(path)
    explicit_head = head_path is not None
    head_path = os.fspath(head_path) if explicit_head else path + HEAD_SUFFIX
    head: SignedTreeHead | None = None
    problems: list[str] = []
    try:
        head = _read_head_file(head_path)
    except FileNotFoundError:
        if explicit_head:
            problems.append(f"head file {head_path} is missing")
    except ValueError as exc:
        problems.append(f"head file {head_path} is unreadable: {exc}")
    if node_id is None:
        if head is None:
            raise ValueError("verify_log needs node_id when there is no readable signed head")
        node_id = head.node_id

    tree = MerkleAccumulator()
    with open(path, "rb") as file:
        with _mapped(file.fileno(), os.fstat(file.fileno()).st_size) as buf:
            scan = _Scan(buf, public_key, node_id)
            for _record, payload in scan:
                tree.append(leaf_hash(payload))
    first_bad = None
    if scan.problem is not None:
        first_bad = scan.problem.index
        problems.insert(0, scan.problem.describe())

    if head is not None:
        if head.node_id != node_id:
            problems.append(f"signed head is for node {head.node_id!r}, not {node_id!r}")
        if not head.verify(public_key):
            problems.append("signed head's signature does not verify")
        if head.size > scan.count:
            if first_bad is None:
                first_bad = scan.count
                problems.insert(
                    0,
                    f"the log has {scan.count} records but its signed head covers {head.size}:"
                    f" records {scan.count}..{head.size - 1} were removed",
                )
        elif tree.root(head.size) != head.root:
            problems.append(f"signed head root does not match the first {head.size} records")

    if problems:
        return VerifyReport(False, scan.count, first_bad, "; ".join(problems), head)
    if head is None:
        summary = "no signed head, so removal from the end is undetectable"
    else:
        summary = f"signed head covers {head.size} at time_ms {head.time_ms}"
    return VerifyReport(True, scan.count, None, f"{scan.count} records OK; {summary}", head)


def read_records(path: str | os.PathLike[str]) -> Iterator[AuditRecord]:
    """Records of a log, without checking signatures (for show and export).

    Stops quietly at a torn final record; raises AuditCorrupted at a bad record with valid
    records after it.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        with _mapped(file.fileno(), os.fstat(file.fileno()).st_size) as buf:
            scan = _Scan(buf)
            for record, _payload in scan:
                yield record
    if scan.problem is not None and not scan.problem.torn:
        raise AuditCorrupted(path, scan.problem.index, scan.problem.offset, scan.problem.reason)


# --- encoding ------------------------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _pack_payload(index: int, prev: bytes, entry: dict, signature: bytes) -> bytes:
    return _pack({"i": index, "prev": prev, "entry": entry, "sig": signature})


def _record_message(node_id: str, index: int, prev: bytes, entry: dict) -> bytes:
    return _pack([RECORD_DOMAIN, node_id, index, prev, entry])


def _head_message(node_id: str, size: int, root: bytes, time_ms: int) -> bytes:
    return _pack([HEAD_DOMAIN, node_id, size, root, time_ms])


def _signature_ok(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _entry_problem(entry: object) -> str | None:
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


# --- reading and checking frames -------------------------------------------------------------


class _BadRecord(Exception):
    """Why a frame or record at some offset is not valid (internal)."""


@dataclass(frozen=True)
class _Problem:
    index: int
    offset: int
    reason: str
    torn: bool  # no valid record after it: may be a write cut short, not tampering

    def describe(self) -> str:
        text = f"record {self.index} at byte {self.offset}: {self.reason}"
        if self.torn:
            text += " (the final record is incomplete: a torn write, or the end was damaged)"
        return text


class _Scan:
    """Walks a log's frames in order, checking each; stops at the first problem.

    Iterating yields (record, payload) for each good record; afterwards `problem`, `count`,
    `end` (offset after the last good record) and `last_digest` describe where it stopped.
    """

    def __init__(
        self, buf: bytes | mmap.mmap, public_key: Ed25519PublicKey | None = None,
        node_id: str | None = None, verify_from: int = 0,
    ) -> None:
        self._buf = buf
        self._public_key = public_key
        self._node_id = node_id
        self._verify_from = verify_from  # signatures are checked from this index on
        self.problem: _Problem | None = None
        self.count = 0
        self.end = 0
        self.last_digest = _ZERO_HASH

    def __iter__(self) -> Iterator[tuple[AuditRecord, bytes]]:
        buf = self._buf
        while self.end < len(buf):
            offset, index = self.end, self.count
            try:
                payload = _frame_payload(buf, offset)
            except _BadRecord as bad:
                torn = not _valid_record_after(buf, offset + 1, index)
                self.problem = _Problem(index, offset, str(bad), torn)
                return
            try:
                record = _decode_record(payload, offset)
                self._check(record, index)
            except _BadRecord as bad:
                self.problem = _Problem(index, offset, str(bad), torn=False)
                return
            yield record, payload
            self.count = index + 1
            self.end = offset + _FRAME_HEADER.size + len(payload)
            self.last_digest = hashlib.sha256(payload).digest()

    def _check(self, record: AuditRecord, index: int) -> None:
        if record.index != index:
            raise _BadRecord(
                f"holds record {record.index} where {index} belongs (deleted, moved or inserted)"
            )
        if record.prev != self.last_digest:
            raise _BadRecord("its link to the previous record is broken (prev hash mismatch)")
        if (
            self._public_key is not None
            and index >= self._verify_from
            and not record.verify(self._public_key, self._node_id)
        ):
            raise _BadRecord(f"signature does not verify for node {self._node_id!r}")


def _frame_payload(buf: bytes | mmap.mmap, offset: int) -> bytes:
    available = len(buf) - offset
    if available < _FRAME_HEADER.size:
        raise _BadRecord(f"short frame header ({available} of {_FRAME_HEADER.size} bytes)")
    length, crc = _FRAME_HEADER.unpack_from(buf, offset)
    if not 0 < length <= MAX_PAYLOAD_BYTES:
        raise _BadRecord(f"implausible length {length}")
    start = offset + _FRAME_HEADER.size
    if start + length > len(buf):
        raise _BadRecord(f"short payload ({len(buf) - start} of {length} bytes)")
    payload = bytes(buf[start : start + length])
    if zlib.crc32(payload) != crc:
        raise _BadRecord("CRC mismatch")
    return payload


def _decode_record(payload: bytes, offset: int) -> AuditRecord:
    """Decode a payload, insisting on the exact canonical layout."""
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _BadRecord(f"payload is not valid msgpack ({exc})") from None
    if type(obj) is not dict or list(obj) != _PAYLOAD_KEYS:
        raise _BadRecord("payload is not an audit record")
    index, prev, entry, signature = obj["i"], obj["prev"], obj["entry"], obj["sig"]
    if type(index) is not int or index < 0:
        raise _BadRecord("record index is not a non-negative int")
    if type(prev) is not bytes or len(prev) != 32:
        raise _BadRecord("prev is not a 32-byte hash")
    if type(signature) is not bytes or len(signature) != _SIGNATURE_SIZE:
        raise _BadRecord("sig is not a 64-byte signature")
    problem = _entry_problem(entry)
    if problem:
        raise _BadRecord(problem)
    if _pack_payload(index, prev, entry, signature) != payload:
        raise _BadRecord("payload is not canonically encoded")
    return AuditRecord(index, entry, prev, signature, offset)


def _valid_record_after(buf: bytes | mmap.mmap, start: int, min_index: int) -> bool:
    """Is there a valid frame holding a record >= min_index anywhere from `start` on?"""
    position = buf.find(_PAYLOAD_START, start + _FRAME_HEADER.size)
    while position != -1:
        try:
            record = _decode_record(_frame_payload(buf, position - _FRAME_HEADER.size), 0)
        except _BadRecord:
            pass
        else:
            if record.index >= min_index:
                return True
        position = buf.find(_PAYLOAD_START, position + 1)
    return False


# --- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _mapped(fd: int, size: int) -> Iterator[bytes | mmap.mmap]:
    """Read-only map of the first `size` bytes of fd (b"" for an empty file: mmap refuses those)."""
    if not size:
        yield b""
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
        yield buf


def _open_locked(path: str) -> int:
    """Open (creating if needed) and lock the log; a new file's directory entry is fsynced."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
    except FileExistsError:
        fd = os.open(path, flags)
        created = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditLocked(f"audit log {path} is open in another process") from None
    if created:
        try:
            os.fsync(fd)
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            os.close(fd)
            raise AuditFsyncError(f"fsync of new audit log {path} failed: {exc}") from exc
    return fd


def _read_head_file(head_path: str) -> SignedTreeHead:
    """Parse a head file; FileNotFoundError if absent, ValueError if unreadable."""
    with open(head_path, "rb") as file:
        data = file.read(64 * 1024)
    try:
        return SignedTreeHead.from_dict(json.loads(data))
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"not a signed tree head ({exc})") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
