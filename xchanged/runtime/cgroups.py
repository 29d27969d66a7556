"""A cgroup v2 per task, where the daemon's own cgroup is delegated to it (systemd `Delegate=yes`).

    tree, why = detect("auto")              # (None, why not) when it cannot
    group = tree.create("T-...", 1, limits) # memory.max, memory.swap.max, cpu.max set
    argv = group.join_prefix() + argv       # the task's launcher joins it before it execs anything
    usage = group.finish()                  # peak memory, CPU seconds, OOM kills; the group removed

Layout under the daemon's cgroup D (from /proc/self/cgroup, on the cgroup2 mount): the daemon moves
itself to D/daemon (a cgroup with controllers enabled for its children may hold no processes), D's
cgroup.subtree_control gets +memory +cpu, and each attempt gets D/task-<task>.<attempt> with
memory.max = the task's memory limit, memory.swap.max = 0 (so the limit is not dodged by swapping),
cpu.max = --cpus worth of a 100 ms period. Its usage is read before it is removed: memory.peak
(kernels from 5.19; else the highest memory.current seen), cpu.stat usage_usec, and memory.events
oom_kill, which tells an OOM kill from any other death. The root cgroup is never used: only a
delegated, non-root cgroup is.

Where this is not available (cgroup v1, no delegation, not Linux) tasks still get their rlimits and
the executor's RSS watch (confine.py, executor.py); `detect` says why, once, in the log.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("xchanged.cgroups")

PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu")


@dataclass
class Usage:
    peak_mem: int | None
    cpu_s: float | None
    oom_killed: bool


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def own_cgroup(proc_self: Path = Path("/proc/self")) -> tuple[Path | None, str]:
    """The directory of this process's cgroup v2, or (None, why not)."""
    line = next((ln for ln in _read(proc_self / "cgroup").splitlines() if ln.startswith("0::")), None)
    if line is None:
        return None, "no cgroup v2 membership (cgroup v1 only)"
    rel = line[3:].strip()
    mount = None
    for entry in _read(proc_self / "mountinfo").splitlines():
        parts = entry.split(" - ")
        if len(parts) == 2 and parts[1].split()[0] == "cgroup2":
            mount = entry.split()[4]
            break
    if mount is None:
        return None, "no cgroup2 file system mounted"
    if rel in ("", "/"):
        return None, "the daemon is in the root cgroup (not delegated: run it with systemd Delegate=yes)"
    return Path(mount) / rel.lstrip("/"), ""


def detect(mode: str = "auto", proc_self: Path = Path("/proc/self")) -> tuple["CgroupTree | None", str]:
    """The daemon's delegated cgroup tree, set up for tasks; or (None, why not)."""
    if mode == "off":
        return None, "disabled (executor.cgroup = off)"
    root, why = own_cgroup(proc_self)
    if root is None:
        return None, why
    tree = CgroupTree(root)
    why = tree.setup()
    return (None, why) if why else (tree, "")


class CgroupTree:
    def __init__(self, root: Path):
        self.root = root

    def setup(self) -> str:
        """Move the daemon into root/daemon and enable the controllers for the tasks; why not ("": done)."""
        available = _read(self.root / "cgroup.controllers").split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            return f"controllers {', '.join(missing)} not delegated to {self.root}"
        if not os.access(self.root / "cgroup.subtree_control", os.W_OK):
            return f"{self.root} is not writable by the daemon (not delegated)"
        try:
            leaf = self.root / "daemon"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (self.root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        except OSError as exc:
            return f"cannot set up task cgroups under {self.root}: {exc}"
        return ""

    def create(self, task_id: str, attempt: int, mem: int | None, cpus: float) -> "TaskCgroup":
        """A new cgroup for one attempt, limits set; OSError if it cannot be made."""
        path = self.root / ("task-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{task_id}.{attempt}"))
        if path.exists():
            TaskCgroup(path).remove()
        path.mkdir()
        group = TaskCgroup(path)
        try:
            if mem:
                (path / "memory.max").write_text(str(mem))
                if (path / "memory.swap.max").exists():
                    (path / "memory.swap.max").write_text("0")
            if cpus > 0:
                (path / "cpu.max").write_text(f"{max(1000, int(cpus * PERIOD_US))} {PERIOD_US}")
        except OSError:
            group.remove()
            raise
        return group


class TaskCgroup:
    def __init__(self, path: Path):
        self.path = path
        self.peak_seen = 0

    def join_prefix(self) -> list[str]:
        """argv prefix: a shell that moves itself into this cgroup, then execs the rest of argv (so
        everything the task starts is in it from its first instruction)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def sample(self) -> int:
        """Current memory use (bytes); remembered as the peak where the kernel has no memory.peak."""
        current = _read(self.path / "memory.current").strip()
        if current.isdigit():
            self.peak_seen = max(self.peak_seen, int(current))
            return int(current)
        return 0

    def usage(self) -> Usage:
        peak = _read(self.path / "memory.peak").strip()
        cpu = _keyed(_read(self.path / "cpu.stat")).get("usage_usec")
        events = _keyed(_read(self.path / "memory.events"))
        self.sample()
        return Usage(int(peak) if peak.isdigit() else (self.peak_seen or None),
                     None if cpu is None else cpu / 1e6, events.get("oom_kill", 0) > 0)

    def kill(self) -> None:
        """Kill everything in the group (cgroup.kill, kernels from 5.14)."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            pass

    def remove(self) -> bool:
        """Kill what is left in it and remove it; False when it is still busy (killed processes take
        a moment to go: try again later)."""
        self.kill()
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.debug("cgroup %s not removed yet: %s", self.path, exc)
            return False
        return True

    def finish(self) -> tuple[Usage, bool]:
        """Its usage, read before it goes; and whether it is gone."""
        usage = self.usage()
        return usage, self.remove()
