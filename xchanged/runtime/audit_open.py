"""Opening an audit log file: lock it, scan it, check it against its signed head, and cut a tail lost
in a crash; `repair()` does the same offline (`xchanged audit repair`).

Rules (the tail's in runtime/audit_tail.py): a tail lost in a crash after the records the signed
head covers (a torn record, zero-filled blocks, even with whole records after them) is cut, the cut
bytes kept in a side file `<path>.cut-<time_ms>`, and a warning logged. Damage among the records the
head covers, or a whole frame holding a wrong record anywhere, is damage or tampering:
AuditCorrupted, naming the record's index and byte offset, and nothing is changed. Nothing before the
tail is ever rewritten.

One writer at a time: the file is locked (flock) while open; a second opener gets AuditLocked. The
signed tree head of ``<path>`` lives in ``<path>.head``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xchanged.protocol import signing
from xchanged.protocol.audit_format import Scan, SignedTreeHead, parse_head
from xchanged.protocol.merkle import MerkleAccumulator, leaf_hash

from . import audit_tail
from .audit_errors import AuditCorrupted, AuditFsyncError, AuditLocked, AuditWriteError
from .audit_tail import TailCut

HEAD_SUFFIX = ".head"
"""The signed head of ``<path>`` is ``<path>.head``."""

AUDIT_LOGGER = "xchanged.runtime.audit"
"""Recovery's warnings are the audit log's (runtime/audit.py), whichever module says them."""


@dataclass
class Opened:
    """What recovery found in a log file (see recover)."""

    head: SignedTreeHead | None
    tree: MerkleAccumulator
    offsets: array
    end: int
    last_digest: bytes
    cut: TailCut | None


def recover(fd: int, path: str, public_key: Ed25519PublicKey, node_id: str,
            logger: logging.Logger) -> Opened:
    """Scan the log open (and locked) on `fd`, check it against its signed head, and cut a lost tail
    (runtime/audit_tail.py); AuditCorrupted when it must not be used."""
    head = _read_own_head(path + HEAD_SUFFIX, public_key, node_id)
    covered = head.size if head else 0
    tree, offsets = MerkleAccumulator(), array("Q")
    # Records the head covers are vouched for by its one signature over their Merkle root
    # (checked below), so only later records need their own signature checked: a long log
    # opens in seconds, not minutes. verify_log still checks every signature.
    file_size = os.fstat(fd).st_size
    with mapped(fd, file_size) as buf:
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
    return Opened(head, tree, offsets, scan.end, scan.last_digest, cut)


def _read_own_head(head_path: str, public_key: Ed25519PublicKey, node_id: str) -> SignedTreeHead | None:
    try:
        os.unlink(head_path + ".tmp")  # a head write cut short by a crash
    except FileNotFoundError:
        pass
    try:
        head = read_head_file(head_path)
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
            node_id = read_head_file(path + HEAD_SUFFIX).node_id
        except (OSError, ValueError):
            node_id = signing.node_id(signing.public_bytes(public_key))
    fd = open_locked(path)
    try:
        return recover(fd, path, public_key, node_id, logger or logging.getLogger(AUDIT_LOGGER)).cut
    finally:
        os.close(fd)


# --- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def mapped(fd: int, size: int) -> Iterator[bytes | mmap.mmap]:
    """Read-only map of the first `size` bytes of fd (b"" for an empty file: mmap refuses those)."""
    if not size:
        yield b""
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
        yield buf


def open_locked(path: str) -> int:
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


def read_head_file(head_path: str) -> SignedTreeHead:
    """Parse a head file; FileNotFoundError if absent, ValueError if unreadable."""
    with open(head_path, "rb") as file:
        data = file.read(64 * 1024)
    return parse_head(data)
