"""py-spy on a running daemon, and a per-task cost breakdown of what it sampled (bench/throughput.py --profile).

`py-spy record --nonblocking --format raw` attaches with ptrace and samples every thread's Python stack
without pausing the daemon; samples of idle threads (the event loop waiting in epoll, a pool thread
waiting for work) are left out by py-spy, so the samples are busy time summed over threads (a thread
that is runnable but waiting for a CPU counts as busy). Not the default blocking mode: pausing the
process wakes blocked threads, and here that counted idle pool and child-watcher threads as busy. Each sample is
put in one group by its innermost frames: walking from the leaf towards the root up to and including the
innermost xchanged frame, the first frame that matches a rule decides; if none does, that xchanged
frame's own file decides (daemon.py glue and views: other). A leaf line that calls msgpack (a C
function, so without a frame of its own) counts as msgpack.
"""

from __future__ import annotations

import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

GROUPS = ["signing/verify", "msgpack/codec", "sqlite/store", "audit", "zmq/asyncio", "spawn/executor",
          "protocol core", "other"]

# (group, test on a frame's path with '/' separators); within xchanged the path is relative to the package
RULES = [
    ("signing/verify", lambda p: p == "xchanged/protocol/signing.py" or "/cryptography/" in p),
    ("msgpack/codec", lambda p: "msgpack" in p or p in (
        "xchanged/protocol/codec.py", "xchanged/protocol/messages.py", "xchanged/protocol/contract_messages.py",
        "xchanged/protocol/membership_messages.py", "xchanged/protocol/query_messages.py")),
    ("sqlite/store", lambda p: "/sqlite3/" in p or p == "xchanged/runtime/store.py"),
    ("audit", lambda p: p in ("xchanged/runtime/audit.py", "xchanged/runtime/audit_open.py",
                              "xchanged/runtime/audit_verify.py", "xchanged/protocol/audit_format.py",
                              "xchanged/protocol/merkle.py", "xchanged/protocol/audit_watch.py")),
    ("spawn/executor", lambda p: p == "xchanged/runtime/executor.py" or p.endswith("/subprocess.py")
     or p.endswith(("/asyncio/base_subprocess.py", "/asyncio/unix_events.py"))),
    ("zmq/asyncio", lambda p: "/zmq/" in p or "/asyncio/" in p or p.endswith("/selectors.py")
     or p == "xchanged/runtime/transport.py"),
    ("protocol core", lambda p: p.startswith("xchanged/protocol/")),
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")


def find_pyspy() -> str | None:
    return shutil.which("py-spy") or next(
        (p for p in [os.path.join(os.path.dirname(sys.executable), "py-spy")] if os.access(p, os.X_OK)), None)


class Recorder:
    """py-spy record on one pid until stop(); raises RuntimeError with py-spy's own words if it can't attach."""

    def __init__(self, pid: int, out_dir: str, rate: int = 200):
        exe = find_pyspy()
        if exe is None:
            raise RuntimeError("py-spy not found (pip install -r bench/requirements.txt)")
        self.pid, self.rate = pid, rate
        self.raw = os.path.join(out_dir, f"pyspy-{pid}.txt")
        self.log = os.path.join(out_dir, f"pyspy-{pid}.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                          "--full-filenames", "--nonblocking", "--output", self.raw],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        end = time.monotonic() + 15
        while "Sampling process" not in self._log():          # py-spy says so once it is attached
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"py-spy could not attach to pid {pid}: {self._log().strip()[-600:]}")
            time.sleep(0.02)
        self.started = time.monotonic()

    def _log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self) -> float:
        """Stop sampling (py-spy writes its file on SIGINT); returns the seconds it sampled."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - getattr(self, "started", time.monotonic())

    def samples(self) -> list[tuple[list[tuple[str, str, int]], int]]:
        if not os.path.exists(self.raw):
            raise RuntimeError(f"py-spy wrote no samples: {self._log().strip()[-600:]}")
        out = []
        with open(self.raw) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                frames = []
                for text in stack.split(";"):
                    m = FRAME.match(text)
                    frames.append((m["func"], m["path"], int(m["line"] or 0)) if m else (text, "", 0))
                out.append((frames, int(count)))
        return out


def short(path: str) -> str:
    """xchanged/... for the package under test, else the path after site-packages or the stdlib dir."""
    path = path.replace(os.sep, "/")
    if "/xchanged/" in path and "site-packages" not in path:
        return "xchanged/" + path.rsplit("/xchanged/", 1)[1]
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker.startswith("/lib/") and "/" in rest else rest
    return path


def classify(frames: list[tuple[str, str, int]]) -> str:
    """frames root first, as py-spy writes them."""
    func, path, line = frames[-1]
    if "msgpack." in linecache.getline(path, line):
        return "msgpack/codec"
    for func, path, line in reversed(frames):
        p = short(path)
        p_rule = "/" + p if not p.startswith("xchanged/") else p      # stdlib/site paths: match on "/name/"
        for group, test in RULES:
            if test(p_rule):
                return group
        if p.startswith("xchanged/"):
            return "other"
    return "other"


def breakdown(rec: Recorder, seconds: float, tasks: int, top: int = 15) -> dict:
    samples = rec.samples()
    total = sum(c for _, c in samples)
    groups: Counter = Counter()
    funcs: Counter = Counter()
    lines: dict = defaultdict(Counter)
    func_group: dict = defaultdict(Counter)
    for frames, count in samples:
        g = classify(frames)
        groups[g] += count
        func, path, line = frames[-1]
        key = (func, short(path))
        funcs[key] += count
        lines[key][(path, line)] += count
        func_group[key][g] += count
    per_task = lambda n: n / rec.rate / max(1, tasks) * 1000      # noqa: E731  ms of busy time per task
    top_rows = []
    for (func, path), n in funcs.most_common(top):
        (full, line), _ = lines[(func, path)].most_common(1)[0]
        top_rows.append({"function": func, "file": f"{path}:{line}", "samples": n, "share": n / max(1, total),
                         "ms_per_task": per_task(n), "group": func_group[(func, path)].most_common(1)[0][0],
                         "code": linecache.getline(full, line).strip()[:60]})
    errors = re.search(r"Errors: (\d+)", rec._log())
    return {"pid": rec.pid, "rate_hz": rec.rate, "seconds": seconds, "samples": total, "tasks": tasks,
            "pyspy_errors": int(errors[1]) if errors else None,
            "busy_share": total / rec.rate / max(seconds, 1e-9),
            "groups": {g: {"samples": groups[g], "share": groups[g] / max(1, total), "ms_per_task": per_task(groups[g])}
                       for g in GROUPS},
            "top": top_rows}


def report(title: str, b: dict) -> str:
    out = [f"{title} (pid {b['pid']}): {b['tasks']} tasks in {b['seconds']:.2f} s; {b['samples']} busy samples at "
           f"{b['rate_hz']} Hz = {b['samples'] / b['rate_hz']:.2f} s busy ({b['busy_share']:.0%} of the run, "
           f"all threads), {b['samples'] / b['rate_hz'] / max(1, b['tasks']) * 1000:.2f} ms busy per task; "
           f"py-spy errors {b['pyspy_errors']}",
           f"  {'group':<16} {'share':>6} {'ms/task':>8}"]
    for g, v in sorted(b["groups"].items(), key=lambda kv: -kv[1]["samples"]):
        out.append(f"  {g:<16} {v['share']:>6.1%} {v['ms_per_task']:>8.3f}")
    out.append(f"  top {len(b['top'])} functions by own samples "
               "(leaf frame; a C call is charged to its caller's line):")
    out.append(f"  {'share':>6} {'ms/task':>8}  {'group':<15} function (file:hottest line)  code")
    for r in b["top"]:
        out.append(f"  {r['share']:>6.1%} {r['ms_per_task']:>8.3f}  {r['group']:<15} {r['function']} ({r['file']})"
                   f"  {r['code']}")
    return "\n".join(out)
