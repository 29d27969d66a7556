"""Checking the arguments of control requests (the control socket, the HTTP API, peers' queries).

Rule: a client may send any JSON value for any argument; each helper returns the value a request
means or raises a ControlError (code `bad_request`) naming the argument and what it must be, so a
mistaken or hostile client gets a clear answer, never an internal error (tests/security/test_fuzz.py
fuzzes every operation). Absent or null means "the default"; a duration of 0 means "do not wait".
"""

from __future__ import annotations

import math
from typing import Any

from .transport import ControlError

INT64 = 1 << 63                 # SQLite integers and msgpack ints: anything beyond is refused


def _bad(message: str) -> ControlError:
    return ControlError(message, "bad_request")


def seconds(args: dict, key: str, default: float) -> float:
    """A duration in seconds: a finite number, not negative (0: answer at once); absent or null is
    `default`."""
    value = args.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise _bad(f"'{key}' must be a number of seconds (0 or more)")
    return float(value)


def optional_int(args: dict, key: str, lowest: int = 0, highest: int = INT64 - 1) -> int | None:
    """An integer from `lowest` to `highest`, or None when absent or null."""
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= highest:
        raise _bad(f"'{key}' must be an integer from {lowest} to {highest}")
    return value


def optional_str(args: dict, key: str) -> str | None:
    """A string, or None when absent or null."""
    value: Any = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a string")
    return value
