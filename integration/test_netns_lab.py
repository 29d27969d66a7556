"""Proves the network-namespace harness with plain Python sockets (no daemons).

Synchronisation is by events (a "READY" line from a helper, an answer to a datagram) or by polling
with a deadline; there are no fixed sleeps.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from integration.netns import MDNS_GROUP, NetnsLab, netns_available

PY = sys.executable
MC_PORT = 25353  # mDNS-style group 224.0.0.251, but not the real mDNS port

UDP_RECEIVER = r"""
import socket, struct, sys, time
group, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
if group != "-":
    mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("READY", flush=True)
end = time.monotonic() + timeout
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data, src = s.recvfrom(4096)
    except socket.timeout:
        break
    print("GOT", src[0], data.decode(), flush=True)
    if data == b"QUIT":
        break
"""

UDP_SENDER = r"""
import socket, sys
dst, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# TTL 255 like mDNS: even so, link-local multicast must not cross the router.
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
s.sendto(payload.encode(), (dst, port))
"""

TCP_ECHO_SERVER = r"""
import socket, sys
port = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("", port))
srv.listen(16)
print("READY", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        conn.settimeout(5)
        data = conn.recv(4096)
        print("CONN", peer[0], data.decode(), flush=True)
        conn.sendall(data.upper())
"""

TCP_CLIENT = r"""
import socket, sys
host, port, msg, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    with socket.create_connection((host, port), timeout=timeout) as c:
        c.sendall(msg.encode())
        c.shutdown(socket.SHUT_WR)
        reply = c.recv(4096).decode()
except OSError as e:
    print("ERR", e)
    sys.exit(1)
print("REPLY", reply)
sys.exit(0 if reply == msg.upper() else 2)
"""

SLEEPER_WITH_CHILD = r"""
import signal, subprocess, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
print("READY", child.pid, flush=True)
while True:
    time.sleep(1)
"""


# --------------------------------------------------------------------------- helpers
class Lines:
    """Collects a popen'ed process's stdout lines in a background thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        try:
            for line in self.proc.stdout:
                self._q.put(line.rstrip("\n"))
        except (ValueError, OSError):
            pass
        self._q.put(None)

    def _drain(self, timeout: float) -> bool:
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return True
        if item is None:
            self._q.put(None)  # keep the EOF marker for later callers
            return False
        self.lines.append(item)
        return True

    def expect(self, pred, timeout: float = 10.0) -> str:
        """Wait for a line satisfying ``pred`` (already seen lines count)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if pred(line):
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting; lines so far: {self.lines}")
            # EOF is queued after every line, so at EOF all lines have been checked above.
            if not self._drain(min(left, 0.2)):
                raise AssertionError(f"output ended (rc={self.proc.poll()}); lines: {self.lines}")


def wait_until(fn, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def start(lab: NetnsLab, host: str, code: str, *args) -> Lines:
    p = lab.popen(host, [PY, "-u", "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True)
    lines = Lines(p)
    lines.expect(lambda l: l.startswith("READY"))
    return lines


def send_udp(lab: NetnsLab, host: str, dst: str, port: int, payload: str) -> None:
    lab.run(host, [PY, "-c", UDP_SENDER, dst, str(port), payload], check=True, capture_output=True)


def tcp_try(lab: NetnsLab, host: str, dst: str, port: int, msg: str, timeout=0.5) -> bool:
    cp = lab.run(host, [PY, "-c", TCP_CLIENT, dst, str(port), msg, str(timeout)],
                 capture_output=True, text=True)
    return cp.returncode == 0


def got(payload: str, src: str | None = None):
    def pred(line: str) -> bool:
        parts = line.split(" ", 2)
        return (len(parts) == 3 and parts[0] == "GOT" and parts[2] == payload
                and (src is None or parts[1] == src))
    return pred


def pid_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a reaper that is not us."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def netns_list() -> list[str]:
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [l.split()[0] for l in cp.stdout.splitlines() if l.strip()]


@pytest.fixture
def two_subnets(lab):
    """a: h1 h2 h3, b: h4, router r between them."""
    lab.add_subnet("a", "10.201.1.0/24")
    lab.add_subnet("b", "10.201.2.0/24")
    hosts = {n: lab.add_host(n, "a") for n in ("h1", "h2", "h3")}
    lab.add_router("r", ["a", "b"])  # after the hosts on purpose: they still get a default route
    hosts["h4"] = lab.add_host("h4", "b")
    return lab, hosts


# --------------------------------------------------------------------------- tests
def test_addresses_and_routes(two_subnets):
    lab, h = two_subnets
    assert [h[n].address for n in ("h1", "h2", "h3")] == ["10.201.1.2", "10.201.1.3", "10.201.1.4"]
    assert h["h4"].address == "10.201.2.2"
    r = lab.hosts["r"]
    assert r.legs == {"a": ("eth0", "10.201.1.1"), "b": ("eth1", "10.201.2.1")}
    for name in ("h1", "h4"):
        routes = lab.run(name, ["ip", "route"], capture_output=True, text=True, check=True).stdout
        assert "224.0.0.0/4 dev eth0" in routes
        assert "default via 10.201." in routes
    assert all(len(ns) < 64 for ns in lab.namespaces())


def test_udp_unicast_same_subnet(two_subnets):
    lab, h = two_subnets
    rx = start(lab, "h2", UDP_RECEIVER, "-", 25000, 20)

    def delivered():
        send_udp(lab, "h1", h["h2"].address, 25000, "hello-h2")
        try:
            return rx.expect(got("hello-h2", h["h1"].address), timeout=0.3)
        except AssertionError:
            return None

    wait_until(delivered, timeout=10, what="unicast datagram h1 -> h2")


def test_multicast_stays_on_its_subnet(two_subnets):
    lab, h = two_subnets
    rx = {n: start(lab, n, UDP_RECEIVER, MDNS_GROUP, MC_PORT, 30) for n in ("h2", "h3", "h4")}

    # Send the multicast from h1 until both same-subnet receivers have it.
    def both_got():
        send_udp(lab, "h1", MDNS_GROUP, MC_PORT, "mc-1")
        try:
            for n in ("h2", "h3"):
                rx[n].expect(got("mc-1", h["h1"].address), timeout=0.3)
        except AssertionError:
            return False
        return True

    wait_until(both_got, timeout=10, what="multicast on subnet a")

    # h4 (behind the router) must not see it. Instead of waiting a fixed time for "nothing", send
    # h4 a unicast marker over the same router path: when the marker arrives, any forwarded
    # multicast (all sent before it) would have arrived too.
    def marker():
        send_udp(lab, "h1", h["h4"].address, MC_PORT, "marker")
        try:
            return rx["h4"].expect(got("marker", h["h1"].address), timeout=0.3)
        except AssertionError:
            return None

    wait_until(marker, timeout=10, what="unicast marker h1 -> h4 across the router")
    assert not any("mc-1" in l for l in rx["h4"].lines), rx["h4"].lines

    # Control: h4's receiver does get multicast that originates on its own subnet.
    lab.add_host("h5", "b")

    def h4_got_local():
        send_udp(lab, "h5", MDNS_GROUP, MC_PORT, "mc-b")
        try:
            return rx["h4"].expect(got("mc-b"), timeout=0.3)
        except AssertionError:
            return None

    wait_until(h4_got_local, timeout=10, what="multicast on subnet b")
    # ...and that one did not leak to subnet a either (marker again, the other way).
    rx["h2"].lines.clear()

    def marker_a():
        send_udp(lab, "h5", h["h2"].address, MC_PORT, "marker-a")
        try:
            return rx["h2"].expect(got("marker-a"), timeout=0.3)
        except AssertionError:
            return None

    wait_until(marker_a, timeout=10, what="unicast marker h5 -> h2")
    assert not any("mc-b" in l for l in rx["h2"].lines), rx["h2"].lines


def test_tcp_crosses_router(two_subnets):
    lab, h = two_subnets
    srv = start(lab, "h4", TCP_ECHO_SERVER, 26000)
    wait_until(lambda: tcp_try(lab, "h1", h["h4"].address, 26000, "ping-h4"),
               timeout=10, what="tcp h1 -> h4")
    # no NAT: the server sees h1's own address
    srv.expect(lambda l: l == f"CONN {h['h1'].address} ping-h4")


def test_set_link_partitions_and_heals(two_subnets):
    lab, h = two_subnets
    start(lab, "h2", TCP_ECHO_SERVER, 26001)
    wait_until(lambda: tcp_try(lab, "h1", h["h2"].address, 26001, "a"), what="h2 reachable")

    lab.set_link("h2", False)
    state = lab.run("h2", ["ip", "-br", "link", "show", "eth0"], capture_output=True, text=True)
    assert " DOWN " in state.stdout + " "
    assert not tcp_try(lab, "h1", h["h2"].address, 26001, "b", timeout=0.5)
    assert not tcp_try(lab, "h4", h["h2"].address, 26001, "b", timeout=0.5)

    lab.set_link("h2", True)
    wait_until(lambda: tcp_try(lab, "h1", h["h2"].address, 26001, "c"), what="h2 reachable again")
    wait_until(lambda: tcp_try(lab, "h4", h["h2"].address, 26001, "d"),
               what="h2 reachable across router again")
    routes = lab.run("h2", ["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "224.0.0.0/4 dev eth0" in routes and "default via 10.201.1.1" in routes


def test_kill9_kills_group_and_reaps(lab):
    lab.add_subnet("a")
    lab.add_host("h1", "a")
    p = start(lab, "h1", SLEEPER_WITH_CHILD, "ignore-term")
    child = int(p.lines[0].split()[1])
    lab.kill9(p.proc)
    assert p.proc.returncode == -signal.SIGKILL
    wait_until(lambda: pid_gone(child), timeout=5, what="grandchild to die")


def test_stop_escalates_to_sigkill(lab):
    lab.add_subnet("a")
    lab.add_host("h1", "a")
    polite = start(lab, "h1", SLEEPER_WITH_CHILD, "default")
    stubborn = start(lab, "h1", SLEEPER_WITH_CHILD, "ignore-term")
    lab.stop(polite.proc, timeout=5)
    assert polite.proc.returncode == -signal.SIGTERM
    t0 = time.monotonic()
    lab.stop(stubborn.proc, timeout=0.5)
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    for p in (polite, stubborn):
        child = int(p.lines[0].split()[1])
        wait_until(lambda: pid_gone(child), timeout=5, what="grandchild to die")


def test_close_leaves_nothing_behind():
    ok, reason = netns_available()
    if not ok:
        pytest.skip(f"network-namespace lab unavailable: {reason}")
    with NetnsLab(stop_timeout=0.5) as lab:
        lab.add_subnet("a")
        lab.add_subnet("b")
        lab.add_router("r", ["a", "b"])
        lab.add_host("h1", "a")
        lab.add_host("h2", "b")
        names = lab.namespaces()
        assert len(names) == 4 and all(n.startswith(lab.prefix + "-") for n in names)
        assert set(names) <= set(netns_list())
        procs = [start(lab, "h1", SLEEPER_WITH_CHILD, "ignore-term"),
                 start(lab, "h2", SLEEPER_WITH_CHILD, "default")]
    assert not lab.teardown_errors, lab.teardown_errors
    left = [n for n in netns_list() if n.startswith(lab.prefix + "-")]
    assert left == []
    for p in procs:
        assert p.proc.returncode is not None
        wait_until(lambda: pid_gone(int(p.lines[0].split()[1])), timeout=5, what="grandchild")
    lab.close()  # idempotent
    with pytest.raises(RuntimeError):
        lab.add_host("h3", "a")


def test_stale_namespaces_only_of_dead_pids_are_removed():
    ok, reason = netns_available()
    if not ok:
        pytest.skip(f"network-namespace lab unavailable: {reason}")
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    if not pid_gone(dead.pid):  # pid reused already; cannot build the scenario
        pytest.skip("pid reused")
    stale = f"xc{dead.pid}n0-stale"
    alive = f"xc{os.getpid()}n9999-keep"  # our own pid: alive, must be kept
    other = f"xcx{dead.pid}n0-other"  # not our exact pattern: must be kept
    for n in (stale, alive, other):
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        with NetnsLab():
            names = netns_list()
            assert stale not in names
            assert alive in names and other in names
    finally:
        for n in (stale, alive, other):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
    names = netns_list()
    assert stale not in names and alive not in names and other not in names
