"""The web dashboard in a real browser: three daemons with [http] on, Debian's chromium driven by
Playwright's playwright-core (integration/web/dashboard_e2e.cjs, installed by .ci/run), tasks
submitted through the CLI, and the page seen showing them appear, run and finish by itself.

Skips, with the reason, where node, chromium or playwright-core is missing. With
XCHANGED_DASHBOARD_SCREENSHOT=PATH it also saves a screenshot of the page under load there
(docs/dashboard.png was made so).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xchanged.localcluster import LocalCluster, free_port

HERE = Path(__file__).parent / "web"
DRIVER = HERE / "dashboard_e2e.cjs"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (.ci/run installs nodejs)"
    if CHROMIUM is None:
        return "chromium is not installed (.ci/run installs Debian's chromium)"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed in integration/web (.ci/run: npm install --prefix integration/web)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


class Browser:
    """The driver process (node + chromium): one JSON line per command, read with a deadline."""

    def __init__(self, url: str, user_data_dir: Path, log: Path):
        self.log = log.open("wb")
        self.proc = subprocess.Popen(["node", str(DRIVER), url, CHROMIUM, str(user_data_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     start_new_session=True)
        self.buffer = b""

    def read(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"the browser driver said nothing for {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the browser driver exited ({self.proc.wait()})")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        if answer["event"] == "error":
            raise AssertionError(f"in the browser: {answer['error']}")
        assert answer["console"] == [], f"the page logged errors: {answer['console']}"
        return answer

    def ask(self, command: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(b'{"quit": true}\n')
                self.proc.stdin.flush()
                self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        try:
            os.killpg(self.proc.pid, 9)            # chromium's helpers, if any outlived it
        except ProcessLookupError:
            pass
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.log.close()


def submit(cluster: LocalCluster, node: int, *args: str) -> str:
    """Submit through the CLI (`xchanged submit`): the task id it prints."""
    done = subprocess.run([sys.executable, "-m", "xchanged", "submit", "-c", str(cluster.nodes[node].files.config),
                           *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_page_shows_tasks_appear_run_and_finish(tmp_path):
    ports = [free_port() for _ in range(3)]
    cluster = LocalCluster([2, 3, 2], base_dir=tmp_path / "cluster",
                           labels=[{"zone": "lab-1"}, {"zone": "lab-2", "cuda": "12"}, {}],
                           node_settings={i: {"http": {"listen": f"127.0.0.1:{port}"}} for i, port in enumerate(ports)})
    with cluster:
        browser = Browser(f"http://127.0.0.1:{ports[0]}/", tmp_path / "chromium-profile", tmp_path / "driver.log")
        try:
            ready = browser.read(120)
            assert sorted(ready["peers"]) == [["node1", "alive"], ["node2", "alive"], ["node3", "alive"]]
            assert ready["foreign"] == []                   # nothing fetched from another host

            spec = tmp_path / "squares.toml"
            spec.write_text('name = "squares"\ncommand = ["sh", "-c", "sleep 1; echo $(( {item} * {item} ))"]\n'
                            "range = [1, 7]\n")
            tasks = [submit(cluster, 0, "--name", f"job-{i}", "--", "sh", "-c", f"sleep {1 + i % 3}; echo {i}")
                     for i in range(12)]
            composite = submit(cluster, 0, "-f", str(spec))
            failing = submit(cluster, 0, "--retries", "0", "--", "sh", "-c", "exit 3")

            seen = browser.ask({"expect": [*tasks, composite, failing], "until": "present"}, 120)
            assert set(seen["first"]) == {*tasks, composite, failing}
            assert any(state not in ("succeeded", "failed") for state in seen["first"].values()), seen
            if os.environ.get("XCHANGED_DASHBOARD_SCREENSHOT"):
                browser.ask({"detail": composite}, 60)
                browser.ask({"screenshot": os.environ["XCHANGED_DASHBOARD_SCREENSHOT"]}, 60)

            done = browser.ask({"expect": [*tasks, composite, failing], "timeout_s": 180}, 200)
            assert done["final"] == {**{t: "succeeded" for t in tasks}, composite: "succeeded", failing: "failed"}

            detail = browser.ask({"detail": composite}, 60)
            assert detail["state"] == "succeeded" and detail["parts"] == 6 and detail["attempts"] >= 1
            assert "6 of 6 ended" in detail["text"]
            detail = browser.ask({"detail": failing}, 60)
            # one attempt ran and failed (--retries 0); under load an award may go unanswered first,
            # which adds a rejected attempt, never a second run
            assert detail["state"] == "failed" and detail["attempts"] >= 1 and "exit code\n3" in detail["text"]

            other = submit(cluster, 1, "--", "sh", "-c", "echo from node2")   # managed by node2
            cluster_wide = browser.ask({"cluster": True, "expect": [other], "timeout_s": 60}, 80)
            assert cluster_wide["final"] == {other: "succeeded"}
            shot = browser.ask({"screenshot": str(tmp_path / "page.png")}, 60)
            assert shot["foreign"] == [] and (tmp_path / "page.png").stat().st_size > 10_000
        finally:
            browser.close()
