"""A test must leave no thread, child process or file descriptor (socket, pipe, file) behind it.

`no_leaks` (autouse in tests/conftest.py and integration/conftest.py) snapshots all three before a
test and compares after it, once the test's fixtures are torn down. Things that are stopping get
`GRACE` seconds (a thread being joined, a process being reaped, a socket closed by a background
thread); what is still there then fails the test, named (thread names, process command lines, what
each file descriptor points at). Leaked child processes are killed so the next test starts clean.
A test that leaks on purpose can say so with `@pytest.mark.allow_leaks`.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass

import psutil
import pytest

GRACE = 3.0          # seconds for what is stopping to stop
POLL = 0.02          # how often to look again meanwhile (nothing here signals us when a thread ends)


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[threading.Thread]
    children: frozenset[int]
    fds: dict[int, str]

    @classmethod
    def take(cls) -> "Snapshot":
        return cls(frozenset(t for t in threading.enumerate() if t.is_alive()), frozenset(_children()), _fds())


def _children() -> dict[int, psutil.Process]:
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE or proc.ppid() == os.getpid():
                out[proc.pid] = proc      # a zombie of ours is a child nobody waited for
        except psutil.NoSuchProcess:
            pass
    return out


def _fds() -> dict[int, str]:
    """Open file descriptors of this process -> what they point at (the listing's own fd left out)."""
    own = f"/proc/{os.getpid()}/fd"
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:                       # closed meanwhile (or the listing's own descriptor)
            continue
        if target != own:
            out[int(name)] = target
    return out


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline()) or proc.name()}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


def leaks_since(before: Snapshot, grace: float = GRACE) -> list[str]:
    """What is open now that was not before, after up to `grace` seconds for it to close."""
    end = time.monotonic() + grace
    while True:
        gc.collect()                          # unreferenced sockets and files close on collection
        threads = [t for t in threading.enumerate() if t.is_alive() and t not in before.threads]
        children = {pid: p for pid, p in _children().items() if pid not in before.children}
        fds = {fd: target for fd, target in _fds().items() if before.fds.get(fd) != target}
        if not (threads or children or fds) or time.monotonic() >= end:
            break
        for thread in threads:
            thread.join(max(0.0, min(POLL, end - time.monotonic())))
        if not threads:
            time.sleep(POLL)
    found = [f"thread {t.name!r} ({type(t).__name__}, daemon={t.daemon})" for t in threads]
    found += [f"child process {_describe(p)}" for p in children.values()]
    found += [f"file descriptor {fd} -> {target}" for fd, target in sorted(fds.items())]
    for proc in children.values():            # don't let the next test inherit them
        try:
            proc.kill()
            proc.wait(GRACE)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail the test if it leaves a thread, a child process or a file descriptor open."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    before = Snapshot.take()
    yield
    found = leaks_since(before)
    if found:
        pytest.fail(f"{request.node.nodeid} leaked:\n  " + "\n  ".join(found), pytrace=False)
