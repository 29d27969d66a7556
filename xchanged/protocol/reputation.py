"""Reputation that outlives a restart: the manager's record of each contractor (success rate, bid
accuracy, circuit breaker: policy.ContractorRecord) and how fast each peer ran each command for it
(policy.SpeedTable), as documents for the store, and back.

Rules:
- Not safety-critical, so written LAZY (with the next commit, or within a second) and only what
  changed: a contractor's record when its `version` moved (a result, a timeout), a command's speeds
  when one of its runs was measured. A command the SpeedTable forgot is deleted from the store.
  The node looks after a result (that contractor only) and once per gossip round (every record: a
  timeout changes one without a message), so a restart loses at most a gossip round of timeouts.
- Times in the core are monotonic and mean nothing after a restart: an open breaker is kept as the
  wall time it stays open until, the last award as its wall time; recovery turns them back into
  monotonic times with the clock of that moment.
- Bounded: one record per contractor that ran for us (at most one per trusted key), and the
  SpeedTable's own bounds (SPEED_COMMANDS commands, SPEED_PEERS peers each). Recovery takes at most
  MAX_RECORDS records, the most recently changed, and skips documents that do not make sense (a
  damaged store costs reputation, never a crash).

Documents: {"kind": "contractor", "peer", "successes", "failures", "consecutive_failures", "breaker",
"open_until_ms", "cooldown", "accuracy", "estimates", "last_award_ms", "version", "changed_ms"} and
{"kind": "speed", "command", "runtimes": {peer: ms}, "changed_ms"}.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from . import policy

CONTRACTOR, SPEED = "contractor", "speed"
MAX_RECORDS = 4096               # contractor records recovered at most (one per trusted peer in practice)
_BREAKERS = (policy.CLOSED, policy.OPEN, policy.HALF_OPEN)

Change = tuple[str, str, dict[str, Any] | None]      # (kind, key, document; None: delete it)


class Keeper:
    """Which records changed since they were last handed out for the store."""

    def __init__(self) -> None:
        self.saved: dict[str, int] = {}              # peer -> the record version last handed out

    def changes(self, records: dict[str, policy.ContractorRecord], speeds: policy.SpeedTable,
                now: float, wall_ms: int, peer: str | None = None) -> list[Change]:
        """Documents of what changed: `peer`'s record only, or every record; and the changed commands."""
        out: list[Change] = []
        for p in ([peer] if peer is not None else list(records)):
            r = records.get(p)
            if r is not None and r.version and self.saved.get(p) != r.version:
                self.saved[p] = r.version
                out.append((CONTRACTOR, p, record_doc(p, r, now, wall_ms)))
        for command in sorted(speeds.changed):
            peers = speeds.runtimes.get(command)
            out.append((SPEED, command, None if peers is None else
                        {"kind": SPEED, "command": command, "runtimes": dict(peers), "changed_ms": wall_ms}))
        speeds.changed.clear()
        return out

    def restore(self, docs: list[dict[str, Any]], records: dict[str, policy.ContractorRecord],
                speeds: policy.SpeedTable, now: float, wall_ms: int) -> int:
        """Put recovered documents back; returns how many were skipped as malformed."""
        skipped = 0
        contractors: list[dict[str, Any]] = []
        commands: list[dict[str, Any]] = []
        for doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            (contractors if kind == CONTRACTOR else commands if kind == SPEED else []).append(doc)
            skipped += kind not in (CONTRACTOR, SPEED)
        contractors.sort(key=_changed_ms)
        for doc in contractors[-MAX_RECORDS:]:
            parsed = parse_record(doc, now, wall_ms)
            if parsed is None:
                skipped += 1
                continue
            peer, record = parsed
            records[peer] = record
            self.saved[peer] = record.version
        skipped += max(0, len(contractors) - MAX_RECORDS)
        commands.sort(key=_changed_ms)                  # least recently used first, as the table keeps them
        for doc in commands[-policy.SPEED_COMMANDS:]:
            runtimes = doc.get("runtimes")
            command = doc.get("command")
            if not isinstance(command, str) or not isinstance(runtimes, dict) or not all(
                    isinstance(p, str) and _number(ms) and ms >= 0 for p, ms in runtimes.items()):
                skipped += 1
                continue
            speeds.runtimes.pop(command, None)
            speeds.runtimes[command] = {p: float(ms) for p, ms in list(runtimes.items())[-policy.SPEED_PEERS:]}
        skipped += max(0, len(commands) - policy.SPEED_COMMANDS)
        return skipped


def record_doc(peer: str, r: policy.ContractorRecord, now: float, wall_ms: int) -> dict[str, Any]:
    def wall(t: float | None) -> int | None:
        return None if t is None else wall_ms + int((t - now) * 1000)
    return {"kind": CONTRACTOR, "peer": peer, "successes": r.successes, "failures": r.failures,
            "consecutive_failures": r.consecutive_failures, "breaker": r.breaker,
            "open_until_ms": wall(r.open_until) if r.breaker != policy.CLOSED else None,
            "cooldown": r.cooldown, "accuracy": r.accuracy, "estimates": r.estimates,
            "last_award_ms": wall(r.last_award), "version": r.version, "changed_ms": wall_ms}


def parse_record(doc: dict[str, Any], now: float, wall_ms: int) -> tuple[str, policy.ContractorRecord] | None:
    """(peer, record) from a document, or None when it does not make sense."""
    peer = doc.get("peer")
    raw = [doc.get(k) for k in ("successes", "failures", "consecutive_failures", "estimates", "version")]
    counts = [c for c in raw if type(c) is int and c >= 0]
    accuracy, cooldown, breaker = doc.get("accuracy"), doc.get("cooldown"), doc.get("breaker")
    if not isinstance(peer, str) or not peer or breaker not in _BREAKERS \
            or len(counts) != len(raw) \
            or not (_number(accuracy) and 0.0 <= accuracy <= 1.0) \
            or not (_number(cooldown) and policy.BREAKER_COOLDOWN <= cooldown <= policy.BREAKER_MAX_COOLDOWN):
        return None

    def mono(ms: object) -> float | None:
        return now + (ms - wall_ms) / 1000 if type(ms) is int else None
    successes, failures, consecutive, estimates, version = counts
    record = policy.ContractorRecord(
        successes=successes, failures=failures, consecutive_failures=consecutive, breaker=breaker,
        open_until=mono(doc.get("open_until_ms")) or 0.0, cooldown=float(cooldown), accuracy=float(accuracy),
        estimates=estimates, last_award=mono(doc.get("last_award_ms")), version=max(1, version))
    return peer, record


def _number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _changed_ms(doc: dict[str, Any]) -> int:
    value = doc.get("changed_ms")
    return value if type(value) is int else 0
