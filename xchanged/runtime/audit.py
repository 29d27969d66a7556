"""Append-only, tamper-evident log of awards and their outcomes (issue 6).

Why: an award, its acceptance and its result are evidence when two nodes disagree about who ran
what. The log lets a node show what it agreed to, and lets anyone holding its public key check
that nothing was altered, removed, reordered or inserted afterwards.

The record format (frames, canonical msgpack payloads, signatures, Merkle leaves, signed tree
heads) is defined in xchanged.protocol.audit_format, which is pure; this module does the I/O. The
signed tree head of ``<path>`` lives in ``<path>.head``.

What each layer catches:

- crc32: torn writes and bit rot, cheaply, before anything is decoded;
- "i" and "prev": records deleted, swapped or inserted (a hash chain);
- "sig": records forged or altered by anyone without the node's key;
- the signed head: the end cut off, and history rewritten later even by the key's holder.

Recovery at open (rules in runtime/audit_tail.py): a tail lost in a crash after the records the
signed head covers (a torn record, zero-filled blocks, even with whole records after them) is cut,
the cut bytes kept in a side file `<path>.cut-<time_ms>`, and a warning logged; `repair()` does the
same offline (`xchanged audit repair`). Damage among the records the head covers, or a whole frame
holding a wrong record anywhere, is damage or tampering: AuditCorrupted, naming the record's index
and byte offset, and nothing is changed. Nothing before the tail is ever rewritten.

Durability: append() hands the frame to the kernel at once (it survives the process dying);
flush() fsyncs (it survives power loss), once for any number of appends (group commit). A failed
fsync poisons the log for good: the kernel may already have dropped the dirty pages and reported
the error once, so a retry could "succeed" with the data lost. The daemon must stop.

An AuditLog is not thread-safe in general. The daemon shares it in one way only: its loop appends,
while a worker thread calls flush() and sign_head(time, size) over records already durable; a record
counts in `size` only once its bytes are written, and the tree is append-only, so both are safe.
verify_log and read_records only read, so they work on a copy or on a log another process appends to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import time
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xchanged.protocol import signing
from xchanged.protocol.audit_format import (
    EVENTS,
    FRAME_HEADER,
    MAX_PAYLOAD_BYTES,
    ZERO_HASH,
    AuditRecord,
    Scan,
    SignedTreeHead,
    decode_record,
    encode_frame,
    entry_problem,
    head_text,
    pack_payload,
    parse_head,
    record_message,
)
from xchanged.protocol.merkle import MerkleAccumulator, leaf_hash

from . import audit_tail
from .audit_tail import TailCut, write_all

__all__ = [
    "EVENTS", "AuditCorrupted", "AuditEntryError", "AuditError", "AuditFsyncError", "AuditLocked",
    "AuditLog", "AuditRecord", "AuditWriteError", "SignedTreeHead", "TailCut", "VerifyReport",
    "read_records", "repair", "verify_log",
]

HEAD_SUFFIX = ".head"
"""The signed head of ``<path>`` is ``<path>.head``."""


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
        self._last_digest = ZERO_HASH  # SHA-256 of the last payload: the next record's "prev"
        self._durable_size = 0
        self._head: SignedTreeHead | None = None
        self._failure: AuditError | None = None  # set once an I/O error poisoned the log
        self.cut: TailCut | None = None  # what recovery cut from a crash-damaged tail, if anything
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
        opened = _recover_fd(self._fd, self._path, self._public_key, self._node_id, self._logger)
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


@dataclass
class _Opened:
    """What recovery found in a log file (see _recover_fd)."""

    head: SignedTreeHead | None
    tree: MerkleAccumulator
    offsets: array
    end: int
    last_digest: bytes
    cut: TailCut | None


def _recover_fd(fd: int, path: str, public_key: Ed25519PublicKey, node_id: str,
                logger: logging.Logger) -> _Opened:
    """Scan the log open (and locked) on `fd`, check it against its signed head, and cut a lost tail
    (runtime/audit_tail.py); AuditCorrupted when it must not be used."""
    head = _read_own_head(path + HEAD_SUFFIX, public_key, node_id)
    covered = head.size if head else 0
    tree, offsets = MerkleAccumulator(), array("Q")
    # Records the head covers are vouched for by its one signature over their Merkle root
    # (checked below), so only later records need their own signature checked: a long log
    # opens in seconds, not minutes. verify_log still checks every signature.
    file_size = os.fstat(fd).st_size
    with _mapped(fd, file_size) as buf:
        scan = Scan(buf, public_key, node_id, covered)
        for record, payload in scan:
            offsets.append(record.offset)
            tree.append(leaf_hash(payload))
    problem = scan.problem
    if problem is not None:
        why = audit_tail.refusal(problem, covered)
        if why is not None:
            raise AuditCorrupted(path, problem.index, problem.offset, why)
    elif head is not None and head.size > scan.count:
        raise AuditCorrupted(path, scan.count, scan.end,
                             f"the signed head covers {head.size} records but only {scan.count} are whole"
                             " (records were removed from the end)")
    if head is not None and tree.root(head.size) != head.root:
        raise AuditCorrupted(path + HEAD_SUFFIX, None, None,
                             f"head root does not match the log's first {head.size} records")
    cut = None
    if problem is not None:
        try:
            side = audit_tail.keep_and_cut(fd, path, scan.end, file_size, time.time_ns() // 1_000_000)
        except OSError as exc:
            raise AuditWriteError(f"cutting the damaged tail of {path} failed: {exc}") from exc
        cut = TailCut(scan.end, file_size - scan.end, problem.index, scan.count, problem.reason, side)
        logger.warning("audit log %s: recovered from a crash: %s", path, cut.describe())
    return _Opened(head, tree, offsets, scan.end, scan.last_digest, cut)


def _read_own_head(head_path: str, public_key: Ed25519PublicKey, node_id: str) -> SignedTreeHead | None:
    try:
        os.unlink(head_path + ".tmp")  # a head write cut short by a crash
    except FileNotFoundError:
        pass
    try:
        head = _read_head_file(head_path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise AuditCorrupted(head_path, None, None, str(exc)) from None
    if head.node_id != node_id:
        raise AuditCorrupted(head_path, None, None, f"head is for node {head.node_id!r}, this node is {node_id!r}")
    if not head.verify(public_key):
        raise AuditCorrupted(head_path, None, None, "head signature does not verify")
    return head


def repair(path: str | os.PathLike[str], public_key: Ed25519PublicKey, node_id: str | None = None,
           *, logger: logging.Logger | None = None) -> TailCut | None:
    """Offline, what the daemon does when it opens its log: cut a tail lost in a crash (kept in a
    side file) and return what was cut (None: the log was whole). AuditCorrupted when it must not be
    used (tampering, or damage a signed head covers): nothing is changed then. AuditLocked while a
    daemon has it open; FileNotFoundError when there is no log. `node_id` defaults to the head's,
    and without a head to the one derived from the key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no audit log at {path}")
    if node_id is None:
        try:
            node_id = _read_head_file(path + HEAD_SUFFIX).node_id
        except (OSError, ValueError):
            node_id = signing.node_id(signing.public_bytes(public_key))
    fd = _open_locked(path)
    try:
        return _recover_fd(fd, path, public_key, node_id, logger or logging.getLogger(__name__)).cut
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
    head's, and without a head to the id derived from the key (xchanged.protocol.signing.node_id).
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
        node_id = head.node_id if head else signing.node_id(signing.public_bytes(public_key))

    tree = MerkleAccumulator()
    with open(path, "rb") as file:
        with _mapped(file.fileno(), os.fstat(file.fileno()).st_size) as buf:
            scan = Scan(buf, public_key, node_id)
            for _record, payload in scan:
                tree.append(leaf_hash(payload))
    first_bad = None
    if scan.problem is not None:
        first_bad = scan.problem.index
        problems.insert(0, scan.problem.describe())
        if head is not None and audit_tail.refusal(scan.problem, head.size) is None:
            problems.insert(1, "this is a tail lost in a crash, after the signed head: the daemon cuts it"
                               " when it starts (or `xchanged audit repair`), keeping the bytes aside")

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
            scan = Scan(buf)
            for record, _payload in scan:
                yield record
    if scan.problem is not None and not scan.problem.torn:
        raise AuditCorrupted(path, scan.problem.index, scan.problem.offset, scan.problem.reason)



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
    return parse_head(data)

