"""A cluster of real daemons on loopback: for `xchanged demo`, the integration tests and benchmarks.

Each node gets its own directory (key, config, state, control socket, log file) under one base
directory, a fixed loopback port, and every other node as a seed; all keys are trusted by all.
Readiness is an answer on each control socket, never a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .client import Client, DaemonUnreachable
from .provision import NodeFiles, init_node


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalNode:
    name: str
    slots: int
    files: NodeFiles
    port: int
    labels: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.files.directory / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.files.directory / "daemon.log"

    def client(self, timeout: float = 60.0) -> Client:
        return Client(socket=self.socket, timeout=timeout)

    @property
    def key_b64(self) -> str:
        return self.files.public_line.split()[1]

    @property
    def seed(self) -> str:
        """How others name this node in [network] seeds: its key and loopback address."""
        return f"{self.key_b64}@127.0.0.1:{self.port}"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f'{k} = {_toml_value(v)}' for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def wait_answering(name: str, process: subprocess.Popen | None, client: Callable[..., Client],
                   log_tail: Callable[[], str], timeout: float) -> None:
    """Until a daemon answers a ping on its control socket (its readiness signal); an error with its
    log's tail if it exits first or stays silent past `timeout`."""
    end = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_tail()}")
        try:
            with client(timeout=2.0) as c:
                c.ping()
            return
        except DaemonUnreachable:
            if time.monotonic() > end:
                raise TimeoutError(f"{name} not ready after {timeout}s:\n{log_tail()}")
            time.sleep(0.02)   # polling a socket that is not there yet; nothing to wait on


class LocalCluster:
    def __init__(self, slots: list[int] | int = 3, base_dir: Path | None = None,
                 labels: list[dict[str, str]] | None = None, settings: dict[str, dict] | None = None,
                 node_settings: dict[int, dict[str, dict]] | None = None, ca: bool = False):
        """`settings`: config sections for every node; `node_settings`: more for one node, by index.
        `ca`: trust by a cluster CA (a certificate per node, authorized_keys holding only each node's
        own key) instead of every key in every authorized_keys."""
        slot_list = [2] * slots if isinstance(slots, int) else list(slots)
        self._own_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="xchanged-"))
        self.settings = settings or {}
        self.node_settings = node_settings or {}
        self.launch_prefix: list[str] = []      # argv put before each daemon's command (a test's cgroup, say)
        self.nodes: list[LocalNode] = []
        for i, n in enumerate(slot_list):
            name = f"node{i + 1}"
            directory = self.base / name
            files = init_node(directory, name, config_text="", force=True)
            self.nodes.append(LocalNode(name, n, files, free_port(), (labels or [{}] * len(slot_list))[i]))
        self.ca_dir: Path | None = None
        if ca:
            from .ca import init_ca
            self.ca_dir = self.base / "ca"
            init_ca(self.ca_dir, "test-ca", force=True)
        trusted = "".join(node.files.public_line + "\n" for node in self.nodes)
        for node in self.nodes:
            self._write_files(node, node.files.public_line + "\n" if ca else trusted)

    def _write_files(self, node: LocalNode, authorized: str, cert_validity: int = 86400,
                     cert_start: int | None = None, ca_dir: Path | None = None) -> None:
        node.files.authorized_keys.write_text(authorized)
        if self.ca_dir is not None:
            from .ca import sign_node
            sign_node(ca_dir or self.ca_dir, node.files.directory / "node.pub", node.name, cert_validity,
                      node.files.directory / "node.cert", not_before=cert_start)
            self.settings.setdefault("trust", {})["ca"] = [str(self.ca_dir / "ca.pub")]
        node.files.config.write_text(self._config(node))

    def add_node(self, name: str, slots: int = 2, labels: dict[str, str] | None = None, cert_validity: int = 86400,
                 cert_start: int | None = None, start: bool = True, ca_dir: Path | None = None) -> LocalNode:
        """A new host joining the running cluster: its own files only (its key, its certificate when the
        cluster has a CA (`ca_dir`: signed by another CA), its config with the others as seeds); nothing
        of the others is touched."""
        directory = self.base / name
        files = init_node(directory, name, config_text="", force=True)
        node = LocalNode(name, slots, files, free_port(), labels or {})
        self.nodes.append(node)
        self._write_files(node, node.files.public_line + "\n", cert_validity, cert_start, ca_dir)
        if start:
            self.start_node(node)
        return node

    def _config(self, node: LocalNode) -> str:
        seeds = [other.seed for other in self.nodes if other is not node]
        sections = {
            "node": {"name": node.name, "state_dir": str(node.files.directory / "state"), "slots": node.slots,
                     "labels": node.labels, "stop_grace": "2s"},       # a stop need not wait 10 s here
            "network": {"listen": f"127.0.0.1:{node.port}", "control": str(node.socket), "mdns": False,
                        "seeds": seeds},
            "metrics": {"listen": ""},
            # every node reads the same host's CPU: one node's busy tasks must not make all refuse
            "bidding": {"overload_cpu_percent": 100},
        }
        for extra in (self.settings, self.node_settings.get(self.nodes.index(node), {})):
            for section, values in extra.items():
                sections.setdefault(section, {}).update(values)
        if self.ca_dir is not None:
            sections.setdefault("trust", {})["certificate"] = str(node.files.directory / "node.cert")
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)

    # -- processes ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            self.wait_ready(node, timeout)
        self.wait_connected(timeout)
        return self

    def start_node(self, node: LocalNode) -> None:
        log = open(node.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        node.process = subprocess.Popen([*self.launch_prefix, sys.executable, "-m", "xchanged", "run", "-c",
                                         str(node.files.config)],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
        log.close()

    def wait_ready(self, node: LocalNode, timeout: float = 30.0) -> None:
        wait_answering(node.name, node.process, node.client, lambda: self.tail_log(node), timeout)

    def wait_connected(self, timeout: float = 30.0, nodes: list[LocalNode] | None = None) -> None:
        """Until every running node sees every other running node alive."""
        nodes = nodes or [n for n in self.nodes if n.process and n.process.poll() is None]
        names = {n.name for n in nodes}

        def sees_the_others(node: LocalNode) -> bool:
            with self.client(node) as client:
                alive = {p["name"] for p in client.peers() if p["health"] == "alive"}
            return names - {node.name} <= alive

        self.wait_for(lambda: all(sees_the_others(node) for node in nodes), timeout, "nodes to see each other")

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.05) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def client(self, node: LocalNode | int = 0) -> Client:
        """A client of `node`'s control socket; use it in a `with` block, which closes it."""
        node = self.nodes[node] if isinstance(node, int) else node
        return node.client()

    def kill9(self, node: LocalNode) -> None:
        if node.process and node.process.poll() is None:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()

    def stop_node(self, node: LocalNode, timeout: float = 15.0) -> None:
        proc = node.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:                                   # the task processes it started, if any survived
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for node in self.nodes:
            self.stop_node(node)

    def tail_log(self, node: LocalNode, lines: int = 30) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()
