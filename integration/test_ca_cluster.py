"""Trust by a cluster CA on real daemons: a new host with a fresh certificate joins without any file of
the others changing; hosts with an expired, revoked or foreign-CA certificate are kept out, each
refusal counted by its reason; a revocation takes effect when the list changes, without a restart."""

from __future__ import annotations

import hashlib
import time

import pytest

from xchanged.ca import init_ca
from xchanged.localcluster import LocalCluster, LocalNode

WAIT = 30.0


def files_of(node: LocalNode) -> dict[str, str]:
    """What an operator keeps on a host: key, certificate, trust and config files (not the state)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(node.files.directory.iterdir())
            if p.is_file() and p.suffix not in (".log", ".sock")}


def alive(cluster: LocalCluster, node: LocalNode) -> set[str]:
    with cluster.client(node) as client:
        return {p["name"] for p in client.peers() if p["health"] == "alive" and not p["self"]}


def security(cluster: LocalCluster, node: LocalNode) -> tuple[dict, dict]:
    with cluster.client(node) as client:
        stats = client.stats()
    return stats["frames_dropped"], stats["security"]


@pytest.fixture
def cluster(tmp_path):
    revoked = tmp_path / "revoked"
    revoked.write_text("# serial N | ed25519 <key>\n")
    c = LocalCluster([1, 1], base_dir=tmp_path / "cluster", ca=True, settings={"trust": {"revoked": str(revoked)}})
    with c:
        c.revoked = revoked
        yield c


def test_a_fresh_host_joins_touching_no_other_host(cluster):
    first, second = cluster.nodes
    before = {n.name: files_of(n) for n in (first, second)}
    assert "authorized_keys" in before["node1"] and "node.cert" in before["node1"]
    newcomer = cluster.add_node("node3", slots=1, labels={"role": "new"})
    cluster.wait_ready(newcomer)
    cluster.wait_connected(WAIT)
    with cluster.client(first) as client:                   # work goes to the newcomer, by its label
        tid = client.submit(["sh", "-c", "echo hello from the new host"], labels={"role": "new"})
        doc = client.wait(tid, timeout=WAIT)
    assert doc["state"] == "succeeded" and doc["node"] == "node3"
    assert {n.name: files_of(n) for n in (first, second)} == before
    _, sec = security(cluster, first)
    assert sec["transport"] == "curve" and sec["trust"]["certified"] == 2 and sec["trust"]["authorized_keys"] == 1


@pytest.mark.parametrize("case", ["expired", "foreign_ca"])
def test_a_host_with_an_expired_or_foreign_certificate_is_kept_out(cluster, case):
    first, second = cluster.nodes
    if case == "expired":
        intruder = cluster.add_node("stale", cert_start=int(time.time()) - 3600, cert_validity=60)
        reason = "cert_expired"
    else:
        other = cluster.base / "other-ca"
        init_ca(other, "someone-else")
        intruder = cluster.add_node("foreign", ca_dir=other)
        reason = "foreign_ca"
    cluster.wait_ready(intruder)

    def refused() -> bool:
        drops, sec = security(cluster, first)
        return drops.get(reason, 0) >= 1 or sec["zap_denied"].get(reason, 0) >= 1
    cluster.wait_for(refused, WAIT, f"{first.name} to refuse the {case} certificate")
    for node in (first, second):
        assert intruder.name not in alive(cluster, node)
    assert alive(cluster, intruder) == set()                # and no one answers it
    cluster.wait_connected(WAIT, nodes=[first, second])


def test_a_revoked_host_is_dropped_when_the_list_changes(cluster):
    first, second = cluster.nodes
    doomed = cluster.add_node("doomed", slots=1)
    cluster.wait_ready(doomed)
    cluster.wait_connected(WAIT)
    serial = next(line.split()[1] for line in (cluster.ca_dir / "issued.log").read_text().splitlines()
                  if "node doomed " in line)
    with open(cluster.revoked, "a") as f:                     # what `xchanged ca revoke` appends
        f.write(f"serial {serial}\n")

    def out() -> bool:
        return all(doomed.name not in alive(cluster, n) for n in (first, second))
    cluster.wait_for(out, WAIT, "the revoked host to be dropped")
    drops, sec = security(cluster, first)
    assert sec["trust"]["revoked"] == 1 and sec["trust"]["reloads"] >= 1
    # its frames are refused: as `revoked` when one carries its certificate (a load) or it connects
    # anew (ZAP); a probe carries no certificate, and a key no longer vouched for is `untrusted`
    assert drops.get("revoked", 0) + sec["zap_denied"].get("revoked", 0) + drops.get("untrusted", 0) >= 1
    cluster.wait_connected(WAIT, nodes=[first, second])
