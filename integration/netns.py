"""Virtual hosts as Linux network namespaces, for multi-host integration tests.

A :class:`NetnsLab` builds a small network out of namespaces it creates itself::

    with NetnsLab() as lab:
        lab.add_subnet("a", "10.201.1.0/24")
        lab.add_subnet("b", "10.201.2.0/24")
        lab.add_router("r", ["a", "b"])          # takes 10.201.1.1 and 10.201.2.1
        h1 = lab.add_host("h1", "a")             # 10.201.1.2, default route via 10.201.1.1
        h2 = lab.add_host("h2", "b")
        p = lab.popen("h1", [sys.executable, "-m", "xchanged", "run", ...])
        ...
        lab.set_link("h1", False)                # partition h1
        lab.kill9(p)                             # crash simulation

Rules this module keeps (they are rules of the workplace, not just of the tests):

* Nothing is created in, or changed in, the root network namespace: every ``ip`` command that
  creates or changes a link, address or route runs with ``ip -n <our namespace>``. Veth pairs are
  created *inside* the switch namespace with their peer placed directly into the host's namespace,
  so no interface ever exists, even for a moment, in the root namespace.
* Test traffic only flows between namespaces of the lab (addresses from 10.201.0.0/16 upward).
* Teardown is by pid/process group of the processes the lab started and by the exact names of the
  namespaces/links it created; never by pattern-matching process names.
* Stale namespaces of an earlier crashed run are removed only when they carry this module's exact
  naming pattern ``xc<pid>n<counter>-...`` and ``<pid>`` is no longer alive.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

__all__ = [
    "NetnsUnavailable",
    "NetnsError",
    "netns_available",
    "Host",
    "NetnsLab",
    "MDNS_GROUP",
]

MDNS_GROUP = "224.0.0.251"

# Address space the lab may hand out: 10.201.0.0/16 and above, within 10/8. These addresses only
# ever exist inside namespaces created by a lab.
_LAB_SPACE_MIN = ipaddress.ip_address("10.201.0.0")
_LAB_SPACE_MAX = ipaddress.ip_address("10.255.255.255")

# Default real-name prefix: "xc" + creating pid + "n" + per-process counter. The pid is encoded so
# that a later run can tell whether the creator of a leftover namespace is still alive.
_STALE_RE = re.compile(r"^xc(\d+)n(\d+)-")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

_counter = itertools.count()
_counter_lock = threading.Lock()


def _next_counter() -> int:
    with _counter_lock:
        return next(_counter)


class NetnsUnavailable(Exception):
    """The lab cannot be built here (not root, no ``ip``, namespace creation fails)."""


class NetnsError(RuntimeError):
    """An ``ip`` command of the lab failed."""


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    cmd = ["ip", *args]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - a hung `ip` is an environment bug
        raise NetnsError(f"{' '.join(cmd)}: timed out after {timeout}s") from e
    if check and cp.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {cp.returncode}: {cp.stderr.strip()}")
    return cp


def _netns_names() -> list[str]:
    cp = _ip("netns", "list", check=False)
    if cp.returncode != 0:
        return []
    # lines look like "name" or "name (id: 3)"
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_available_cache: tuple[bool, str] | None = None


def netns_available() -> tuple[bool, str]:
    """(ok, reason): whether namespaces, veth pairs and bridges can be created here.

    Tries once (result cached per process) to create a throwaway namespace with a bridge and a
    veth pair *inside* it, then deletes it by name.
    """
    global _available_cache
    if _available_cache is not None:
        return _available_cache
    _available_cache = _probe()
    return _available_cache


def _probe() -> tuple[bool, str]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "network namespaces need root (euid 0)"
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is not installed"
    name = f"xc{os.getpid()}n{_next_counter()}-probe"
    try:
        cp = _ip("netns", "add", name, check=False)
        if cp.returncode != 0:
            return False, f"`ip netns add` failed: {cp.stderr.strip()}"
        try:
            for args in (
                ("-n", name, "link", "set", "lo", "up"),
                ("-n", name, "link", "add", "br0", "type", "bridge"),
                ("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"),
                ("-n", name, "link", "set", "v0", "master", "br0"),
            ):
                cp = _ip(*args, check=False)
                if cp.returncode != 0:
                    return False, f"`ip {' '.join(args)}` failed: {cp.stderr.strip()}"
            cp = subprocess.run(
                ["ip", "netns", "exec", name, "true"], capture_output=True, text=True, timeout=20
            )
            if cp.returncode != 0:
                return False, f"`ip netns exec` failed: {cp.stderr.strip()}"
        finally:
            _ip("netns", "del", name, check=False)
    except (OSError, subprocess.SubprocessError, NetnsError) as e:
        return False, f"network namespaces unusable: {e}"
    return True, "ok"


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by crashed earlier runs; returns the names removed.

    Only names matching exactly ``xc<pid>n<counter>-...`` whose ``<pid>`` is not a live process
    (and is not this process) are touched.
    """
    removed = []
    me = os.getpid()
    for ns in _netns_names():
        m = _STALE_RE.match(ns)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == me or _pid_alive(pid):
            continue
        # Processes still running inside a stale namespace belong to the dead run; they are
        # identified by the namespace itself (ip netns pids), not by any name pattern.
        _kill_pids_in_netns(ns)
        if _ip("netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    return removed


def _kill_pids_in_netns(ns: str) -> None:
    cp = _ip("netns", "pids", ns, check=False)
    if cp.returncode != 0:
        return
    for tok in cp.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


@dataclass
class Host:
    name: str  # logical name, e.g. "h1"
    netns: str  # real namespace name, e.g. "xc1234n0-h1"
    address: str  # IPv4 address of the (first) interface
    subnet: str  # logical subnet name of the (first) interface
    iface: str  # interface name inside the namespace, e.g. "eth0"
    # every leg: subnet name -> (iface, address); routers have one per subnet
    legs: dict[str, tuple[str, str]] = field(default_factory=dict)
    is_router: bool = False


@dataclass
class _Subnet:
    name: str
    network: ipaddress.IPv4Network
    bridge: str  # bridge name inside the switch namespace
    router: str | None = None  # logical name of the router host, if any
    used: set = field(default_factory=set)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def allocate(self) -> str:
        # .1 is always reserved for a router
        for i, addr in enumerate(self.network.hosts()):
            if i == 0:
                continue
            if str(addr) not in self.used:
                self.used.add(str(addr))
                return str(addr)
        raise NetnsError(f"subnet {self.name} ({self.network}) has no free address")


@dataclass
class _Port:
    host: str
    subnet: str
    iface: str  # name inside the host namespace
    port: str  # name of the other veth end, inside the switch namespace


class NetnsLab:
    """A set of virtual hosts (network namespaces) joined by bridges. Use as a context manager."""

    def __init__(self, prefix: str | None = None, *, stop_timeout: float = 5.0):
        ok, reason = netns_available()
        if not ok:
            raise NetnsUnavailable(reason)
        if prefix is None:
            remove_stale_namespaces()
            prefix = f"xc{os.getpid()}n{_next_counter()}"
        elif not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$", prefix):
            raise ValueError(f"bad prefix {prefix!r}")
        self.prefix = prefix
        self.stop_timeout = stop_timeout  # SIGTERM -> SIGKILL grace used by close()
        self.hosts: dict[str, Host] = {}
        self.subnets: dict[str, _Subnet] = {}
        self._ports: list[_Port] = []
        self._procs: list[subprocess.Popen] = []
        self._namespaces: list[str] = []  # real names, in creation order
        self._closed = False
        self._lock = threading.RLock()
        self._link_counter = itertools.count()
        self.teardown_errors: list[str] = []
        atexit.register(self.close)
        # Why a "switch" namespace: the bridges that connect the hosts must live somewhere. Putting
        # them in the root namespace would add interfaces to (and risk leaking traffic into) the
        # real machine's network, which this workplace forbids. A dedicated namespace holding only
        # the bridges keeps the whole lab isolated and is deleted, bridges and all, in one step.
        self.switch_ns = f"{prefix}-sw"
        try:
            self._add_netns(self.switch_ns)
        except NetnsError as e:
            atexit.unregister(self.close)
            raise NetnsUnavailable(str(e)) from e

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "NetnsLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ building
    def _add_netns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        # /proc/sys/net is per network namespace for the process that opens it.
        path = "/proc/sys/" + key.replace(".", "/")
        cp = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"],
            capture_output=True, text=True, timeout=20,
        )
        if cp.returncode != 0:
            raise NetnsError(f"sysctl {key}={value} in {ns}: {cp.stderr.strip()}")

    def add_subnet(self, name: str, cidr: str | None = None) -> None:
        """A bridge inside the switch namespace. ``cidr`` like "10.201.1.0/24" (default: the next
        free 10.201.N.0/24)."""
        with self._lock:
            self._check_open()
            if not _NAME_RE.match(name):
                raise ValueError(f"bad subnet name {name!r}")
            if name in self.subnets:
                raise ValueError(f"subnet {name!r} exists")
            if cidr is None:
                taken = {s.network for s in self.subnets.values()}
                cidr = next(
                    f"10.201.{i}.0/24" for i in range(1, 256)
                    if ipaddress.ip_network(f"10.201.{i}.0/24") not in taken
                )
            net = ipaddress.ip_network(cidr, strict=True)
            if not isinstance(net, ipaddress.IPv4Network):
                raise ValueError(f"{cidr}: IPv4 only")
            if not (_LAB_SPACE_MIN <= net.network_address and net.broadcast_address <= _LAB_SPACE_MAX):
                raise ValueError(f"{cidr}: lab subnets must lie within 10.201.0.0 .. 10.255.255.255")
            if net.num_addresses < 4:
                raise ValueError(f"{cidr}: too small")
            for other in self.subnets.values():
                if net.overlaps(other.network):
                    raise ValueError(f"{cidr} overlaps subnet {other.name} ({other.network})")
            bridge = f"br{len(self.subnets)}"
            sw = self.switch_ns
            # mcast_snooping 0: flood all multicast to every port (no IGMP querier exists here, and
            # we want plain hub behaviour for mDNS). forward_delay 0 + no STP: ports forward at once.
            _ip("-n", sw, "link", "add", bridge, "type", "bridge",
                "mcast_snooping", "0", "stp_state", "0", "forward_delay", "0")
            _ip("-n", sw, "link", "set", bridge, "up")
            self.subnets[name] = _Subnet(name, net, bridge)

    def _add_leg(self, host: Host, subnet: _Subnet, address: str) -> _Port:
        iface = f"eth{len(host.legs)}"
        port = f"p{next(self._link_counter)}"  # names are per-namespace, so short names suffice
        sw = self.switch_ns
        # Created in the switch namespace, peer placed straight into the host namespace.
        _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", iface, "netns", host.netns)
        rec = _Port(host.name, subnet.name, iface, port)
        self._ports.append(rec)
        _ip("-n", sw, "link", "set", port, "master", subnet.bridge)
        _ip("-n", sw, "link", "set", port, "up")
        _ip("-n", host.netns, "addr", "add", f"{address}/{subnet.network.prefixlen}", "dev", iface)
        _ip("-n", host.netns, "link", "set", iface, "multicast", "on", "up")
        host.legs[subnet.name] = (iface, address)
        return rec

    def _new_host(self, name: str) -> Host:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad host name {name!r}")
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        ns = f"{self.prefix}-{name}"
        self._add_netns(ns)
        return Host(name=name, netns=ns, address="", subnet="", iface="")

    def _host_routes(self, host: Host) -> None:
        """(Re)install the static routes of an ordinary host (they vanish when its link goes down)."""
        if host.is_router:
            return
        iface, _ = host.legs[host.subnet]
        sub = self.subnets[host.subnet]
        _ip("-n", host.netns, "route", "replace", "224.0.0.0/4", "dev", iface)
        if sub.router is not None:
            _ip("-n", host.netns, "route", "replace", "default", "via", sub.gateway, "dev", iface)

    def add_host(self, name: str, subnet: str) -> Host:
        """A namespace with one interface (eth0) on ``subnet``, next free address (.2 upward)."""
        with self._lock:
            self._check_open()
            sub = self._subnet(subnet)
            host = self._new_host(name)
            address = sub.allocate()
            self._add_leg(host, sub, address)
            host.address, host.subnet, host.iface = address, subnet, host.legs[subnet][0]
            self.hosts[name] = host
            self._host_routes(host)
            return host

    def add_router(self, name: str, subnets: list[str]) -> Host:
        """A namespace with a leg (the .1 address) on every subnet and ip_forward=1.

        It forwards unicast between the subnets; with no multicast routing, link-local multicast
        (224.0.0.0/24, which includes mDNS 224.0.0.251) never crosses it. Hosts of those subnets get
        a default route via it (also hosts added before it).
        """
        with self._lock:
            self._check_open()
            if not subnets:
                raise ValueError("a router needs at least one subnet")
            subs = [self._subnet(s) for s in subnets]
            for s in subs:
                if s.router is not None:
                    raise ValueError(f"subnet {s.name} already has router {s.router}")
            host = self._new_host(name)
            host.is_router = True
            for s in subs:
                s.used.add(s.gateway)
                self._add_leg(host, s, s.gateway)
                s.router = name
            first = subnets[0]
            host.iface, host.address = host.legs[first]
            host.subnet = first
            self.hosts[name] = host
            self._sysctl(host.netns, "net.ipv4.ip_forward", "1")
            for h in self.hosts.values():
                if not h.is_router and h.subnet in subnets:
                    self._host_routes(h)
            return host

    # ------------------------------------------------------------------ processes
    def _host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in lab {self.prefix}") from None

    def _subnet(self, name: str) -> _Subnet:
        try:
            return self.subnets[name]
        except KeyError:
            raise KeyError(f"no subnet {name!r} in lab {self.prefix}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"lab {self.prefix} is closed")

    def popen(self, host: str, argv: list[str], *, env=None, stdout=None, stderr=None,
              cwd=None, stdin=subprocess.DEVNULL, text=None) -> subprocess.Popen:
        """Start ``argv`` in the host's namespace in its own process group (session); remembered
        for teardown. ``ip netns exec`` execs the command, so ``proc.pid`` is the command itself."""
        with self._lock:
            self._check_open()
            ns = self._host(host).netns
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                env=env, stdout=stdout, stderr=stderr, stdin=stdin, cwd=cwd, text=text,
                start_new_session=True,
            )
            self._procs.append(proc)
            return proc

    def run(self, host: str, argv, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` to completion in the host's namespace (kwargs go to subprocess.run;
        default timeout 60 s)."""
        self._check_open()
        ns = self._host(host).netns
        kw.setdefault("timeout", 60)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kw)

    @staticmethod
    def _exited_unreaped(proc: subprocess.Popen) -> bool:
        """True when the leader has exited; it is left a zombie so its pid (= the pgid) cannot be
        reused before we have signalled the rest of its group."""
        if proc.returncode is not None:
            return True
        try:
            res = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return res is not None

    @staticmethod
    def _killpg(proc: subprocess.Popen, sig: int) -> None:
        if proc.returncode is not None:
            return  # reaped: its pid may belong to someone else now
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, proc: subprocess.Popen, timeout: float = 10) -> None:
        """SIGTERM the process group, wait up to ``timeout`` for the leader, then SIGKILL the group;
        finally reap the leader."""
        self._killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self._exited_unreaped(proc) and time.monotonic() < deadline:
            time.sleep(0.02)
        # leader exited (still a zombie, so the pgid is ours) or timed out: kill what is left
        self._killpg(proc, signal.SIGKILL)
        proc.wait()
        self._forget(proc)

    def kill9(self, proc: subprocess.Popen) -> None:
        """SIGKILL the whole process group (crash simulation) and reap the leader."""
        self._killpg(proc, signal.SIGKILL)
        proc.wait()
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    # ------------------------------------------------------------------ links
    def set_link(self, host: str, up: bool) -> None:
        """Partition (``up=False``) or heal a host: both veth ends of every leg go down/up. Static
        routes that the kernel dropped with the link are put back on heal."""
        with self._lock:
            self._check_open()
            h = self._host(host)
            state = "up" if up else "down"
            for p in self._ports:
                if p.host != host:
                    continue
                _ip("-n", self.switch_ns, "link", "set", p.port, state)
                _ip("-n", h.netns, "link", "set", p.iface, state)
            if up:
                self._host_routes(h)

    def readdress(self, host: str) -> str:
        """Give an ordinary host a new address on its subnet, as a new DHCP lease would (its processes
        should be stopped first: their sockets keep the old address). Returns the new address."""
        with self._lock:
            self._check_open()
            h = self._host(host)
            sub = self.subnets[h.subnet]
            new = sub.allocate()                    # the old one stays allocated: nobody else gets it
            prefix = sub.network.prefixlen
            _ip("-n", h.netns, "addr", "del", f"{h.address}/{prefix}", "dev", h.iface)
            _ip("-n", h.netns, "addr", "add", f"{new}/{prefix}", "dev", h.iface)
            h.address, h.legs[h.subnet] = new, (h.iface, new)
            self._host_routes(h)
            return new

    # ------------------------------------------------------------------ teardown
    def namespaces(self) -> list[str]:
        """Real names of the namespaces this lab created (and has not yet deleted)."""
        return list(self._namespaces)

    def close(self) -> None:
        """Stop every remembered process, then delete every link and namespace the lab created,
        by name. Idempotent; also runs at interpreter exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                atexit.unregister(self.close)
            except Exception:  # pragma: no cover
                pass
            for proc in reversed(list(self._procs)):
                try:
                    self.stop(proc, timeout=self.stop_timeout)
                except Exception as e:  # keep tearing down
                    self.teardown_errors.append(f"stop pid {proc.pid}: {e}")
            # Anything still running inside our namespaces (e.g. a daemon that left its process
            # group) is ours by construction: identified by namespace, killed by pid.
            for ns in self._namespaces:
                if ns != self.switch_ns:
                    _kill_pids_in_netns(ns)
            for p in self._ports:
                _ip("-n", self.switch_ns, "link", "del", p.port, check=False)
            self._ports.clear()
            for ns in reversed(self._namespaces):
                cp = _ip("netns", "del", ns, check=False)
                if cp.returncode != 0 and ns in _netns_names():
                    self.teardown_errors.append(f"netns del {ns}: {cp.stderr.strip()}")
            left = set(_netns_names()) & set(self._namespaces)
            self._namespaces = sorted(left)
            if left:
                self.teardown_errors.append(f"namespaces left behind: {sorted(left)}")

    def __repr__(self) -> str:
        return f"NetnsLab(prefix={self.prefix!r}, hosts={list(self.hosts)}, closed={self._closed})"
