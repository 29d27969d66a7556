"""The end of an audit log after a crash: which damage is a lost tail (cut it, keep it aside) and
which is tampering (refuse to start).

Why: appends reach the disk within SYNC_INTERVAL, not at once. A crash (power cut, kernel panic)
with appends not yet fsynced can leave the end of the log torn (a record cut short) or, on some
filesystems, blocks of zeros where the file grew but its data never landed, possibly followed by
whole records whose predecessors were lost. None of that was ever covered by a signed head: heads
are signed, and gossiped, over fsynced records only (runtime/audit.py). Rules, for the first problem
the scan meets (protocol/audit_format.py `Scan`):

- at a record the log's signed head covers: TAMPERING (or damage under a head, which is the same to
  a peer): refuse to start, nothing changed. Records a head vouches for are never cut.
- a bad frame (short, zero or implausible length, CRC mismatch) after the records the head covers:
  a LOST TAIL. The log is cut after its last whole valid record; the bytes cut go to a side file
  `<log>.cut-<time_ms>` first (written and fsynced before the log is truncated, so nothing is lost
  even if the cut itself is interrupted), and a warning says what was cut.
- a whole frame (its CRC checks) holding a wrong record (index, link, signature, encoding), wherever
  it is: TAMPERING. No crash writes a whole frame with a wrong record in it.

Without a head file, no record is covered (the daemon writes one at its first start, so that happens
only with a log from before heads existed, or a head someone deleted; verify says so).

`xchanged audit repair` applies the same rules offline (runtime/audit_open.py `repair`; the daemon
applies them in `recover` when it opens its log).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..protocol.audit_format import Problem

CUT_SUFFIX = ".cut-"
"""The bytes cut from ``<path>`` go to ``<path>.cut-<time_ms>`` (``-2``, ``-3``... if that exists)."""


@dataclass(frozen=True)
class TailCut:
    """What recovery cut from the end of a log, and where it kept it."""

    offset: int          # the log now ends here (after its last whole valid record)
    length: int          # bytes cut
    first_lost: int      # index of the first record lost
    records_kept: int
    reason: str          # the problem found at `offset`
    side_file: str       # where the cut bytes are kept

    def describe(self) -> str:
        return (f"cut {self.length} bytes from byte {self.offset} (record {self.first_lost} on: "
                f"{self.reason}); kept {self.records_kept} records; the cut bytes are in {self.side_file}")


def refusal(problem: Problem, covered: int) -> str | None:
    """Why `problem` (the first one found) must refuse to open the log, or None if the tail from it
    on may be cut. `covered`: the records the signed head covers (0 without a head)."""
    if problem.index < covered:
        return (f"the signed head covers {covered} records but only {problem.index} are whole "
                f"({problem.reason})")
    if not problem.framing:
        return f"{problem.reason} (a whole frame with a wrong record: not a crash)"
    return None


def keep_and_cut(fd: int, path: str, end: int, file_size: int, time_ms: int) -> str:
    """Copy bytes [end, file_size) of the log open on `fd` into a new side file, fsync it and its
    directory, then truncate the log to `end` and fsync it. Returns the side file's path; OSError
    if any step fails (the log is then unchanged, or already cut with the side file safe)."""
    side = _new_side_file(path, time_ms)
    try:
        position = end
        while position < file_size:
            chunk = os.pread(fd, min(1 << 20, file_size - position), position)
            if not chunk:
                break
            write_all(side[1], chunk)
            position += len(chunk)
        os.fsync(side[1])
    finally:
        os.close(side[1])
    _fsync_dir(path)
    os.ftruncate(fd, end)
    os.fsync(fd)
    return side[0]


def _new_side_file(path: str, time_ms: int) -> tuple[str, int]:
    base = f"{path}{CUT_SUFFIX}{time_ms}"
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            return name, os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: too many side files")


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
