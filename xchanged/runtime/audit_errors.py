"""What can go wrong with an audit log (runtime/audit.py), each error saying whose fault it is: the
caller's entry, another process holding the file, the disk, or damage and tampering.

Why a module of its own: the writer (audit.py), opening and recovery (audit_open.py) and the offline
checks (audit_verify.py) all raise them; runtime/audit.py re-exports them, where callers import them.
"""

from __future__ import annotations


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
