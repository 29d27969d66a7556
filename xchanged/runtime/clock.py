"""The daemon's wall clock, in milliseconds: what other hosts read (message timestamps, audit record
and head times, certificate checks). Timers and the core's `now` use time.monotonic() instead."""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
