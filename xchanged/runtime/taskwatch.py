"""What the tasks' processes use, read from /proc: memory (RSS) and CPU time per process group.

Each attempt runs in a process group of its own (executor.py), so one pass over /proc gives every
attempt's resident memory (the sum over its group's processes) and CPU seconds (user + system of
each process, plus those of its children already reaped). The executor samples every running
attempt this way a few times a second: the highest memory seen is the attempt's peak (without a
cgroup), a memory limit is enforced on it, and the last CPU figure is what the attempt used (to
within one sampling interval). A process that leaves its process group (setsid) is not counted; a
cgroup, where there is one, counts it (cgroups.py).

Linux only; elsewhere `sample` returns nothing and the figures stay unknown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"
try:
    _TICK = os.sysconf("SC_CLK_TCK")
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _TICK, _PAGE = 100, 4096


@dataclass
class GroupUse:
    rss: int = 0           # bytes resident, all processes of the group
    cpu_s: float = 0.0     # CPU seconds, all processes of the group (and their reaped children)


def sample(groups: set[int], proc: str = PROC) -> dict[int, GroupUse]:
    """Use of each process group in `groups` (those with no process left are absent)."""
    found: dict[int, GroupUse] = {}
    if not groups:
        return found
    try:
        names = os.listdir(proc)
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        try:
            rest = data[data.rindex(b")") + 2:].split()
            pgrp = int(rest[2])
            if pgrp not in groups:
                continue
            ticks = sum(int(x) for x in rest[11:15])       # utime, stime, cutime, cstime
            rss = int(rest[21]) * _PAGE
        except (ValueError, IndexError):
            continue
        use = found.setdefault(pgrp, GroupUse())
        use.rss += rss
        use.cpu_s += ticks / _TICK
    return found


def start_ticks(pid: int, proc: str = PROC) -> int | None:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def ticks_to_seconds(ticks: int) -> float:
    return ticks / _TICK
