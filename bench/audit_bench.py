"""Audit log throughput and size: fsync per append vs group commit, bytes per 1,000 awards.

Run: python bench/audit_bench.py   (about 10 s; the log lives in a temp dir on the current disk's
tmp, so set TMPDIR to measure the disk the daemon's state_dir is on).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from xchanged.runtime.audit import AuditLog, verify_log  # noqa: E402

NODE = "node-bench"
SECONDS_PER_MODE = 3.0
"""Each throughput mode runs for about this long (or MAX_APPENDS, whichever comes first)."""
MAX_APPENDS = 50_000
GROUP = 32


def award_entry(i: int, blob: bytes) -> dict:
    return {
        "event": "award",
        "task": f"T-{i:016X}",
        "attempt": 1,
        "manager": NODE,
        "contractor": "node-contractor-0042",
        "score": 0.83,
        "time_ms": 1_790_000_000_000 + i,
        "message": blob,  # the counterpart's signed protocol frame
    }


def appends_per_second(directory: str, key: Ed25519PrivateKey, blob: bytes, group: int) -> float:
    path = os.path.join(directory, f"group-{group}.log")
    with AuditLog(path, key, NODE) as log:
        start = time.perf_counter()
        deadline = start + SECONDS_PER_MODE
        n = 0
        while n < MAX_APPENDS:
            log.append(award_entry(n, blob))
            n += 1
            if n % group == 0:
                log.flush()
                if time.perf_counter() > deadline:
                    break
        log.flush()
        elapsed = time.perf_counter() - start
    return n / elapsed


def main() -> None:
    key = Ed25519PrivateKey.generate()
    blob = os.urandom(300)
    with tempfile.TemporaryDirectory(prefix="xchanged-audit-bench-") as directory:
        per_append = appends_per_second(directory, key, blob, group=1)
        grouped = appends_per_second(directory, key, blob, group=GROUP)

        path = os.path.join(directory, "size.log")
        with AuditLog(path, key, NODE) as log:
            for i in range(1000):
                log.append(award_entry(i, blob))
            log.sign_head(time_ms=1_790_000_000_000)
        size = os.path.getsize(path)
        start = time.perf_counter()
        report = verify_log(path, key.public_key())
        verify_s = time.perf_counter() - start
        assert report.ok, report.message

    print(f"appends/s, fsync per append:      {per_append:10.0f}")
    print(f"appends/s, group commit of {GROUP}:    {grouped:10.0f}")
    print(f"log bytes per 1,000 award entries: {size:10d}  ({size / 1000:.0f} B/entry,"
          f" {len(blob)}-byte message blob)")
    print(f"verify_log of 1,000 entries:       {verify_s * 1000:10.1f} ms")


if __name__ == "__main__":
    main()
