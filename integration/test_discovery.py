"""Discovery and membership with real daemons on virtual hosts (network namespaces).

Each host runs `python -m xchanged run -c CONF` inside its namespace; the tests talk to the daemons
over their control sockets from the root namespace (unix sockets are filesystem objects). Readiness
is an answer on the control socket; everything else is polled with a deadline, never slept on.

The measured discovery and failure-detection times are written to the terminal (whatever the
capture mode) and recorded as junit properties.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from xchanged.client import Client
from xchanged.config import GossipConfig
from xchanged.localcluster import wait_answering
from xchanged.provision import init_node

PORT = 7946
DEFAULTS = GossipConfig()          # the timings under test are the shipped defaults


@dataclass
class Daemon:
    host: str
    address: str
    directory: Path
    socket: Path
    seeds: tuple[str, ...] = ()
    trusted: bool = True
    public_line: str = ""
    proc: object = None

    def client(self, timeout: float = 5.0) -> Client:
        return Client(socket=str(self.socket), timeout=timeout)


class Cluster:
    """Daemons on lab hosts: keys, configs, start/kill/restart, and views of their peer tables."""

    def __init__(self, lab, base: Path):
        self.lab = lab
        self.base = base
        self.daemons: dict[str, Daemon] = {}
        self.lines: dict[str, str] = {}

    def add(self, host: str, seeds: tuple[str, ...] = (), trusted: bool = True) -> Daemon:
        directory = self.base / host
        files = init_node(directory, host, config_text="", force=True)
        d = Daemon(host, self.lab.hosts[host].address, directory, self.base / f"{host}.sock", seeds, trusted,
                   files.public_line)
        self.daemons[host] = d
        return d

    def write_configs(self) -> None:
        trusted = "".join(d.public_line + "\n" for d in self.daemons.values() if d.trusted)
        for d in self.daemons.values():
            keys = trusted if d.trusted else trusted + d.public_line + "\n"
            (d.directory / "authorized_keys").write_text(keys)
            seeds = ", ".join(f'"{s}"' for s in d.seeds)
            (d.directory / "xchanged.toml").write_text(
                f'[node]\nname = "{d.host}"\nstate_dir = "{d.directory / "state"}"\n'
                f'key_file = "{d.directory / "node.key"}"\nslots = 2\n\n'
                f'[network]\nlisten = "{d.address}:{PORT}"\ncontrol = "{d.socket}"\nmdns = true\n'
                f'seeds = [{seeds}]\n\n'
                f'[trust]\nauthorized_keys = "{d.directory / "authorized_keys"}"\n\n'
                f'[metrics]\nlisten = ""\n')

    def start(self, host: str) -> None:
        d = self.daemons[host]
        log = open(d.directory / "daemon.log", "ab")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED": "1", "XC_HOST": host,
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        d.proc = self.lab.popen(host, [sys.executable, "-m", "xchanged", "run", "-c",
                                       str(d.directory / "xchanged.toml")],
                                stdout=log, stderr=log, env=env)
        log.close()

    def wait_ready(self, hosts, timeout: float = 20.0) -> None:
        for host in hosts:
            d = self.daemons[host]
            wait_answering(host, d.proc, d.client, lambda: self.log(host), timeout)

    def start_all(self) -> float:
        """Start every daemon; returns the monotonic time at which the last one was ready."""
        self.write_configs()
        for host in self.daemons:
            self.start(host)
        self.wait_ready(self.daemons)
        return time.monotonic()

    def kill9(self, host: str) -> None:
        d = self.daemons[host]
        self.lab.kill9(d.proc)
        d.proc = None

    def health(self, host: str, all: bool = False) -> dict[str, str]:
        """name -> health as `host` sees it (itself excluded)."""
        with self.daemons[host].client() as c:
            return {p["name"]: p["health"] for p in c.peers(all=all) if not p.get("self")}

    def sees(self, host: str, others, health: str = "alive") -> bool:
        view = self.health(host)
        return all(view.get(o) == health for o in others if o != host)

    def wait_until(self, predicate, timeout: float, what: str, interval: float = 0.05) -> float:
        """Poll until predicate() holds; returns the seconds it took."""
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                views = {h: self.health(h) for h, d in self.daemons.items() if d.proc is not None}
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; views: {views}\n"
                                     + "\n".join(f"--- {h}\n{self.log(h, 15)}" for h in self.daemons))
            time.sleep(interval)
        return time.monotonic() - start

    def log(self, host: str, lines: int = 30) -> str:
        try:
            text = (self.daemons[host].directory / "daemon.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def cluster(lab):
    base = Path(tempfile.mkdtemp(prefix="xcd-", dir="/tmp"))     # short: unix socket paths <= 108 bytes
    try:
        yield Cluster(lab, base)
    finally:
        lab.close()                                               # stop daemons before removing files
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def report(request, record_property, capsys):
    """report(what, seconds): a measured time, shown in the test output and the junit properties."""
    def emit(what: str, seconds: float) -> None:
        record_property(what, round(seconds, 3))
        with capsys.disabled():                                   # visible with or without -s
            print(f"\n[measured] {request.node.name}: {what} = {seconds:.2f} s", flush=True)
    return emit


def lan(lab, n: int) -> list[str]:
    lab.add_subnet("lan", "10.201.1.0/24")
    hosts = [f"h{i}" for i in range(1, n + 1)]
    for h in hosts:
        lab.add_host(h, "lan")
    return hosts


def all_see_all(cluster: Cluster, hosts, health: str = "alive"):
    return lambda: all(cluster.sees(h, hosts, health) for h in hosts)


def test_five_hosts_discover_each_other_by_mdns_alone(lab, cluster, report):
    hosts = lan(lab, 5)
    for h in hosts:
        cluster.add(h)                                            # no seeds: mDNS only
    cluster.start_all()
    took = cluster.wait_until(all_see_all(cluster, hosts), 10.0, "5 hosts to discover each other by mDNS")
    report("mdns_discovery_5_hosts", took)
    assert took < 10.0

    d = cluster.daemons["h1"]                                     # mDNS shuts down cleanly on SIGTERM
    began = time.monotonic()
    lab.stop(d.proc, timeout=8)
    report("sigterm_shutdown", time.monotonic() - began)
    assert d.proc.returncode == 0 and "Traceback" not in cluster.log("h1", 200), cluster.log("h1")


def test_two_subnets_joined_by_one_seed_form_one_cluster(lab, cluster, report):
    lab.add_subnet("a", "10.201.1.0/24")
    lab.add_subnet("b", "10.201.2.0/24")
    lab.add_router("r", ["a", "b"])
    for h in ("a1", "a2"):
        lab.add_host(h, "a")
    for h in ("b1", "b2"):
        lab.add_host(h, "b")
    hosts = ["a1", "a2", "b1", "b2"]
    cluster.add("a1")
    cluster.add("a2")
    cluster.add("b1", seeds=(f"a1@{lab.hosts['a1'].address}:{PORT}",))   # the only cross-subnet hint
    # (a seed names its node, here by its name in authorized_keys: CurveZMQ needs the peer's key to connect)
    cluster.add("b2")
    cluster.start_all()
    took = cluster.wait_until(all_see_all(cluster, hosts), 15.0, "two subnets to form one cluster")
    report("seed_join_two_subnets", took)


def test_kill9_is_detected_by_all_and_restart_rejoins(lab, cluster, report):
    hosts = lan(lab, 5)
    for h in hosts:
        cluster.add(h)
    cluster.start_all()
    cluster.wait_until(all_see_all(cluster, hosts), 10.0, "discovery")
    survivors, victim = hosts[:-1], hosts[-1]

    cluster.kill9(victim)
    detected = cluster.wait_until(lambda: all(cluster.health(h).get(victim) == "dead" for h in survivors),
                                  DEFAULTS.dead_after + 3.0, f"{victim} to be seen dead by all")
    report("kill9_detected_dead_by_all", detected)
    assert detected <= 5.0, f"a killed node must be detected within 5 s (took {detected:.2f} s)"

    cluster.start(victim)
    cluster.wait_ready([victim])
    rejoined = cluster.wait_until(all_see_all(cluster, hosts), 10.0, f"{victim} to rejoin")
    report("restart_rejoined", rejoined)


ISOLATED_DETECTION_S = 20.0     # Lifeguard's local health stretches an isolated host's probes (below)


def test_partition_of_two_of_five_is_detected_and_heals(lab, cluster, report):
    hosts = lan(lab, 5)
    for h in hosts:
        cluster.add(h)
    cluster.start_all()
    cluster.wait_until(all_see_all(cluster, hosts), 10.0, "discovery")
    majority, cut = hosts[:3], hosts[3:]

    for h in cut:
        lab.set_link(h, False)
    cut_at = time.monotonic()
    side_done: dict[str, float] = {}             # when each side first saw the other side dead

    def side(name: str, seers: list[str], seen: list[str]) -> bool:
        if name not in side_done and all(cluster.sees(h, seen, "dead") for h in seers):
            side_done[name] = time.monotonic() - cut_at
        return name in side_done
    def majority_done() -> bool:
        side("isolated", cut, majority)                         # noted too, should it come first
        return side("majority", majority, cut)
    # The connected hosts, who reschedule the cut hosts' work, within the bound of the heartbeat design.
    cluster.wait_until(majority_done, DEFAULTS.dead_after + 4.0, "the majority to see the cut hosts dead")
    # An isolated host (its link down) is slow on purpose (Lifeguard): each failed probe raises its
    # local-health score, which stretches its next probes, and none of its suspicions is confirmed;
    # measured 7.0-8.5 s with 4 peers to find silent. It must still get there.
    cluster.wait_until(lambda: side("isolated", cut, majority), ISOLATED_DETECTION_S - side_done["majority"],
                       "the isolated hosts to see the others dead")
    report("partition_detected", max(side_done.values()))
    report("partition_detected_by_the_majority", side_done["majority"])
    report("partition_detected_by_the_isolated_hosts", side_done["isolated"])

    for h in cut:
        lab.set_link(h, True)
    healed = cluster.wait_until(all_see_all(cluster, hosts), 15.0, "the partition to heal")
    report("partition_healed", healed)


def test_untrusted_host_is_listed_but_never_awarded_a_task(lab, cluster, report):
    hosts = lan(lab, 4)
    for h in hosts[:3]:
        cluster.add(h)
    cluster.add("h4", trusted=False)          # its key is in nobody's authorized_keys but its own
    cluster.start_all()
    trusted = hosts[:3]
    cluster.wait_until(all_see_all(cluster, trusted), 10.0, "discovery of the trusted hosts")
    cluster.wait_until(lambda: all(cluster.health(h, all=True).get("h4") == "untrusted" for h in trusted),
                       10.0, "h4 to be listed as untrusted")
    assert all("h4" not in cluster.health(h) for h in trusted)   # ...and only with --all

    marker = cluster.base / "ran.log"
    with cluster.daemons["h1"].client() as c:
        ids = c.submit_many([["sh", "-c", f'echo "$XC_HOST $XCHANGED_TASK_ID" >> {marker}; sleep 0.2']
                             for _ in range(16)])
        docs = [c.wait(tid, timeout=60) for tid in ids]
    assert all(doc["state"] == "succeeded" for doc in docs), docs
    ran_on = [line.split()[0] for line in marker.read_text().splitlines()]
    assert len(ran_on) == 16 and "h4" not in ran_on, ran_on
    assert all(a["node"] in trusted for doc in docs for a in doc["attempts"]), docs


def test_a_host_that_moves_is_found_at_its_new_address(lab, cluster, report):
    """h3 comes back with another address (a new lease): mDNS tells the others, keyed by its node,
    and they reach it there; its old address is no longer its peers' address for it."""
    hosts = lan(lab, 3)
    for h in hosts:
        cluster.add(h)
    cluster.start_all()
    cluster.wait_until(all_see_all(cluster, hosts), 10.0, "discovery")
    mover, others = hosts[-1], hosts[:-1]
    old = cluster.daemons[mover].address
    cluster.kill9(mover)
    new = lab.readdress(mover)
    cluster.daemons[mover].address = new
    cluster.write_configs()
    cluster.start(mover)
    cluster.wait_ready([mover])

    def found_there() -> bool:
        for h in others:
            with cluster.daemons[h].client() as c:
                doc = next((p for p in c.peers() if p["name"] == mover), None)
            if doc is None or doc["health"] != "alive" or doc["address"] != f"{new}:{PORT}":
                return False
        return True
    took = cluster.wait_until(found_there, 10.0, f"{mover} to be found at {new} instead of {old}")
    report("moved_host_found_at_new_address", took)
    cluster.wait_until(all_see_all(cluster, hosts), 10.0, "the moved host to see the others")
