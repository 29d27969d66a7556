"""Append-only, tamper-evident log of awards and their outcomes (issue 6): the writer, AuditLog.

Why: an award, its acceptance and its result are evidence when two nodes disagree about who ran
what. The log lets a node show what it agreed to, and lets anyone holding its public key check
that nothing was altered, removed, reordered or inserted afterwards.

The record format (frames, canonical msgpack payloads, signatures, Merkle leaves, signed tree
heads) is defined in xchanged.protocol.audit_format, which is pure; this module does the I/O. The
signed tree head of ``<path>`` lives in ``<path>.head``. Around it: opening a log and recovering it
after a crash (audit_open.py, rules in audit_tail.py; `repair`), the offline checks (audit_verify.py:
`verify_log`, `read_records`) and the errors (audit_errors.py), all importable from here.

What each layer catches:

- crc32: torn writes and bit rot, cheaply, before anything is decoded;
- "i" and "prev": records deleted, swapped or inserted (a hash chain);
- "sig": records forged or altered by anyone without the node's key;
- the signed head: the end cut off, and history rewritten later even by the key's holder.

Durability: append() hands the frame to the kernel at once (it survives the process dying);
flush() fsyncs (it survives power loss), once for any number of appends (group commit). A failed
fsync poisons the log for good: the kernel may already have dropped the dirty pages and reported
the error once, so a retry could "succeed" with the data lost. The daemon must stop.

An AuditLog is not thread-safe in general. The daemon shares it in one way only: its loop appends,
while a worker thread calls flush() and sign_head(time, size) over records already durable; a record
counts in `size` only once its bytes are written, and the tree is append-only, so both are safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from array import array
from collections.abc import Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xchanged.protocol.audit_format import (
    EVENTS,
    FRAME_HEADER,
    MAX_PAYLOAD_BYTES,
    ZERO_HASH,
    AuditRecord,
    SignedTreeHead,
    decode_record,
    encode_frame,
    entry_problem,
    head_text,
    pack_payload,
    record_message,
)
from xchanged.protocol.merkle import MerkleAccumulator, leaf_hash

from .audit_errors import (
    AuditCorrupted,
    AuditEntryError,
    AuditError,
    AuditFsyncError,
    AuditLocked,
    AuditWriteError,
)
from .audit_open import HEAD_SUFFIX, open_locked, recover, repair
from .audit_tail import TailCut, write_all
from .audit_verify import VerifyReport, read_records, verify_log

__all__ = [
    "EVENTS", "HEAD_SUFFIX", "AuditCorrupted", "AuditEntryError", "AuditError", "AuditFsyncError", "AuditLocked",
    "AuditLog", "AuditRecord", "AuditWriteError", "SignedTreeHead", "TailCut", "VerifyReport",
    "read_records", "repair", "verify_log",
]


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
        self._last_digest = ZERO_HASH  # SHA-256 of the last payload: the next record's "prev"
        self._durable_size = 0
        self._head: SignedTreeHead | None = None
        self._failure: AuditError | None = None  # set once an I/O error poisoned the log
        self.cut: TailCut | None = None  # what recovery cut from a crash-damaged tail, if anything
        self._fd = open_locked(self._path)
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
        problem = entry_problem(entry)
        if problem:
            raise AuditEntryError(f"audit entry rejected: {problem}")
        index = self.size
        prev = self._last_digest
        signature = self._key.sign(record_message(self._node_id, index, prev, entry))
        payload = pack_payload(index, prev, entry, signature)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise AuditEntryError(f"audit entry rejected: {len(payload)} bytes, over the limit")
        self._write(encode_frame(payload))
        self._offsets.append(self._end)
        self._end += FRAME_HEADER.size + len(payload)
        self._tree.append(leaf_hash(payload))
        self._last_digest = hashlib.sha256(payload).digest()
        return index

    def flush(self) -> None:
        """Make every record appended so far durable with one fsync (group commit). Safe from a
        worker thread while the loop appends: records appended meanwhile wait for the next flush."""
        self._check_usable()
        if self._durable_size == self.size:
            return
        size = self.size
        self._fsync(self._fd, "the log")
        self._durable_size = size

    def sign_head(self, time_ms: int, size: int | None = None) -> SignedTreeHead:
        """Sign (size, root, time_ms) and replace the head file atomically. Without `size`: flush,
        then sign every record. With it: sign that many records, which must already be durable (so a
        worker thread can sign what it fsynced while the loop appends more)."""
        if size is None:
            self.flush()
            size = self.size
        elif size > self._durable_size:
            raise ValueError(f"cannot sign {size} records: only {self._durable_size} are durable")
        head = SignedTreeHead.sign(self._key, self._node_id, size, self._tree.root(size), time_ms)
        text = head_text(head)
        temp_path = self._head_path + ".tmp"
        try:
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, text.encode())
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
            header = os.pread(self._fd, FRAME_HEADER.size, offset)
            length, crc = FRAME_HEADER.unpack(header)
            payload = os.pread(self._fd, length, offset + FRAME_HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise AuditCorrupted(self._path, index, offset, "changed on disk while open")
            yield decode_record(payload, offset)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Merkle audit path of record `index` in the tree of the first `size` records."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Merkle proof that the first `old_size` records are a prefix of the first `new_size`."""
        return self._tree.consistency_proof(old_size, new_size)

    # --- internals ---------------------------------------------------------------------------

    def _recover(self) -> None:
        opened = recover(self._fd, self._path, self._public_key, self._node_id, self._logger)
        self._head, self._tree, self._offsets = opened.head, opened.tree, opened.offsets
        self._end = opened.end
        self._last_digest = opened.last_digest
        self._durable_size = self.size
        self.cut = opened.cut

    def _check_usable(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise type(failure)(f"audit log unusable after an earlier error: {failure}")
        if self._fd < 0:
            raise AuditError("the audit log is closed")

    def _write(self, frame: bytes) -> None:
        try:
            write_all(self._fd, frame)
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

