"""Replay and freshness checks for frames addressed to us.

Per sender we keep its newest incarnation and a sliding window over seq (as IPsec's anti-replay
window): a frame from an older incarnation, a seq already seen, or one older than the window is a
replay. A frame whose timestamp is further than `max_skew_ms` from our wall clock is stale, which
bounds how long a captured frame stays usable even across a sender restart.

Relayed load signals are not checked here: they reach us by many paths and out of order, so the
membership table accepts a load only when it is newer than the last one held for its origin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .codec import REPLAYED, STALE, DecodeError, Envelope

WINDOW = 4096                  # seqs remembered per sender
DEFAULT_MAX_SKEW_MS = 120_000


@dataclass(slots=True)
class _SenderWindow:
    incarnation: int
    top: int = 0               # highest seq seen
    seen: int = 0              # bit i set = seq (top - i) seen


class ReplayGuard:
    def __init__(self, max_skew_ms: int = DEFAULT_MAX_SKEW_MS, max_senders: int = 100_000):
        self.max_skew_ms = max_skew_ms
        self.max_senders = max_senders
        self._windows: dict[str, _SenderWindow] = {}

    def check_fresh(self, env: Envelope, wall_ms: int) -> None:
        if abs(env.ts_ms - wall_ms) > self.max_skew_ms:
            raise DecodeError(STALE, f"timestamp {env.ts_ms - wall_ms:+d} ms from our clock")

    def check(self, env: Envelope, wall_ms: int) -> None:
        """Raise DecodeError if `env` is stale or a replay; otherwise record it as seen."""
        self.check_fresh(env, wall_ms)
        win = self._windows.get(env.sender)
        if win is None or env.incarnation > win.incarnation:
            if win is None and len(self._windows) >= self.max_senders:
                self._windows.pop(next(iter(self._windows)))
            self._windows[env.sender] = _SenderWindow(env.incarnation, env.seq, 1)
            return
        if env.incarnation < win.incarnation:
            raise DecodeError(REPLAYED, "older incarnation")
        if env.seq > win.top:
            shift = env.seq - win.top
            win.seen = ((win.seen << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            win.top = env.seq
            return
        offset = win.top - env.seq
        if offset >= WINDOW:
            raise DecodeError(REPLAYED, "seq older than the replay window")
        if win.seen >> offset & 1:
            raise DecodeError(REPLAYED, f"seq {env.seq} already seen")
        win.seen |= 1 << offset


class DuplicateFilter:
    """Recognises byte-identical frames seen recently, before the costly signature check.

    Gossip delivers the same relayed load signal by several paths; every copy after the first would
    be dropped anyway (as not newer, or as a replay), so a cheap hash of the bytes saves verifying it.
    """

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self._seen: dict[bytes, None] = {}

    def seen_before(self, frame: bytes) -> bool:
        digest = hashlib.blake2b(frame, digest_size=16).digest()
        if digest in self._seen:
            return True
        self._seen[digest] = None
        if len(self._seen) > self.capacity:
            self._seen.pop(next(iter(self._seen)))
        return False
