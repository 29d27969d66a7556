"""Offline checks of an audit log file: `verify_log` (every frame, link and signature, and the signed
head) and `read_records` (records without their signatures checked, for show and export).

Both only read, so they work on a copy or on a log another process appends to (no lock is taken).
A tail lost in a crash fails verify_log, which says so: the daemon, or `xchanged audit repair`, cuts
it (runtime/audit_open.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xchanged.protocol import signing
from xchanged.protocol.audit_format import AuditRecord, Scan, SignedTreeHead
from xchanged.protocol.merkle import MerkleAccumulator, leaf_hash

from . import audit_tail
from .audit_errors import AuditCorrupted
from .audit_open import HEAD_SUFFIX, mapped, read_head_file


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of verify_log. `size`: records that passed, in order, before any problem."""

    ok: bool
    size: int
    first_bad_index: int | None
    message: str
    head: SignedTreeHead | None = None


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
        head = read_head_file(head_path)
    except FileNotFoundError:
        if explicit_head:
            problems.append(f"head file {head_path} is missing")
    except ValueError as exc:
        problems.append(f"head file {head_path} is unreadable: {exc}")
    if node_id is None:
        node_id = head.node_id if head else signing.node_id(signing.public_bytes(public_key))

    tree = MerkleAccumulator()
    with open(path, "rb") as file:
        with mapped(file.fileno(), os.fstat(file.fileno()).st_size) as buf:
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
        with mapped(file.fileno(), os.fstat(file.fileno()).st_size) as buf:
            scan = Scan(buf)
            for record, _payload in scan:
                yield record
    if scan.problem is not None and not scan.problem.torn:
        raise AuditCorrupted(path, scan.problem.index, scan.problem.offset, scan.problem.reason)
