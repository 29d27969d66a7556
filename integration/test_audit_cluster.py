"""Three real daemons: every award is in both parties' audit logs, signed by the other party; a node
whose log is rewritten (a fork, consistently re-signed with its own key) is flagged by its peers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xchanged.localcluster import LocalCluster
from xchanged.protocol import codec
from xchanged.protocol.messages import Accept, Award, Bid, Reject
from xchanged.protocol.signing import TrustStore, load_private_key, node_id, public_bytes
from xchanged.runtime.audit import AuditLog, read_records, verify_log

GOSSIP = {"interval": "200ms", "suspect_after": "1s", "dead_after": "3s"}
TASKS = 50


@pytest.fixture
def cluster():
    with LocalCluster([2, 2, 2], settings={"gossip": GOSSIP}) as c:
        yield c


def log_path(node):
    return node.files.directory / "state" / "audit.log"


def key_of(node):
    return load_private_key(node.files.key_file.read_bytes())


def cli(node, *args):
    return subprocess.run([sys.executable, "-m", "xchanged", "audit", *args, "-c", str(node.files.config)],
                          capture_output=True, text=True, timeout=60)


def peer_doc(cluster, observer, target_id):
    with cluster.client(observer) as c:
        return next((p for p in c.peers() if p["id"] == target_id), None)


def test_awards_in_both_logs_and_a_rewritten_log_is_flagged(cluster):
    ids = {n.name: node_id(public_bytes(key_of(n))) for n in cluster.nodes}
    keys = {ids[n.name]: public_bytes(key_of(n)) for n in cluster.nodes}
    trust = TrustStore({k: i for i, k in keys.items()})
    # 50 tasks, submitted round-robin so each daemon manages some
    submitted = []
    for i in range(TASKS):
        with cluster.client(i % 3) as c:
            submitted.append((i % 3, c.submit(["sh", "-c", f"echo {i}"])))
    for owner, tid in submitted:
        with cluster.client(owner) as c:
            assert c.wait(tid, timeout=120)["state"] == "succeeded"

    # every node signs a head covering its whole log within a gossip interval or so
    def heads_current():
        return all(_head_size(n) == len(list(read_records(log_path(n)))) for n in cluster.nodes)
    cluster.wait_for(heads_current, 10, "heads to cover the logs")

    logs = {ids[n.name]: list(read_records(log_path(n))) for n in cluster.nodes}
    for n in cluster.nodes:
        report = verify_log(log_path(n), Ed25519PublicKey.from_public_bytes(keys[ids[n.name]]))
        assert report.ok, report.message
        assert cli(n, "verify").returncode == 0

    awards = 0
    for manager, records in logs.items():
        answers = {(r.entry["task"], r.entry["attempt"]): r for r in records
                   if r.entry["event"] in ("accept", "reject") and r.entry["manager"] == manager}
        for r in records:
            e = r.entry
            # manager side: embeds the winning bid (or says the award was direct, made without a bid
            # round); contractor side: embeds the manager's award
            if e["event"] != "award" or e["manager"] != manager or _embedded(e, trust) is Award:
                continue
            assert _embedded(e, trust) is Bid or e.get("direct") is True
            awards += 1
            contractor = e["contractor"]
            # the manager's log holds the contractor's signed answer: accept, or reject
            answer = answers.get((e["task"], e["attempt"]))
            assert answer is not None and answer.entry["contractor"] == contractor, (e["task"], e["attempt"])
            env = codec.decode(answer.entry["message"], trust)
            assert env.sender == contractor and (env.message.task_id, env.message.attempt) == (e["task"], e["attempt"])
            if answer.entry["event"] == "reject":
                assert isinstance(env.message, Reject)
                continue
            assert isinstance(env.message, Accept)
            # the contractor's log holds the manager's signed award frame
            theirs = [c for c in logs[contractor] if c.entry["event"] == "award" and c.entry["task"] == e["task"]
                      and c.entry["attempt"] == e["attempt"] and c.entry["manager"] == manager
                      and _embedded(c.entry, trust) is Award]
            assert len(theirs) == 1, (e["task"], e["attempt"])
            env = codec.decode(theirs[0].entry["message"], trust)
            assert env.sender == manager and isinstance(env.message, Award)
            assert (env.message.task_id, env.message.attempt) == (e["task"], e["attempt"])
    assert awards >= TASKS
    assert len({r.entry["contractor"] for rs in logs.values() for r in rs if r.entry["event"] == "award"}) > 1

    # the others have checked node3's latest head
    victim = cluster.nodes[2]
    vid = ids[victim.name]
    size = _head_size(victim)
    cluster.wait_for(lambda: all((peer_doc(cluster, o, vid) or {}).get("audit_size") == size
                                 and peer_doc(cluster, o, vid)["audit"] == "ok" for o in (0, 1)),
                     10, "peers to check node3's head")

    # fork: stop node3, rewrite an early entry and re-sign everything after it with its own key
    cluster.stop_node(victim)
    rewrite_log(victim, vid)
    cluster.start_node(victim)
    cluster.wait_ready(victim)

    cluster.wait_for(lambda: all((peer_doc(cluster, o, vid) or {}).get("audit") == "forked" for o in (0, 1)),
                     10, "peers to flag node3's forked log")
    for o in (0, 1):
        with cluster.client(o) as c:
            assert c.stats()["audit_forks"] == 1
            (doc,) = c.audit_evidence(vid)
        ev = doc["evidence"]
        assert len(ev["heads"]) >= 2 and ev["heads"][0]["root"] != ev["heads"][-1]["root"]
        assert "forked its audit log" in cluster.nodes[o].log_path.read_text()
    out = subprocess.run([sys.executable, "-m", "xchanged", "audit", "evidence", vid, "-c",
                          str(cluster.nodes[0].files.config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "forked" in out.stdout


def rewrite_log(victim, vid):
    """Rewrite an early entry of a stopped node's log and re-sign everything after it with its own
    key: a fork of the same size, self-consistent (only its peers can tell)."""
    path = log_path(victim)
    records = list(read_records(path))
    forged_dir = path.parent / "forged"
    forged_dir.mkdir()
    with AuditLog(forged_dir / "audit.log", key_of(victim), vid) as forged:
        for r in records:
            entry = dict(r.entry)
            if r.index == 1:
                entry["time_ms"] = entry["time_ms"] + 1
            forged.append(entry)
        forged.sign_head(records[-1].entry["time_ms"])
    shutil.move(forged_dir / "audit.log", path)
    shutil.move(forged_dir / "audit.log.head", str(path) + ".head")
    forged_dir.rmdir()
    assert cli(victim, "verify").returncode == 0          # a fork is self-consistent: only peers can tell


def test_watchers_restarted_across_a_rewrite_still_flag_the_fork(cluster):
    """Every node down at once, node3's log rewritten meanwhile: the others remember the head they
    had checked (their store), so the first head node3 gossips after the restart is a fork."""
    ids = {n.name: node_id(public_bytes(key_of(n))) for n in cluster.nodes}
    for i in range(6):
        with cluster.client(i % 3) as c:
            assert c.wait(c.submit(["true"]), timeout=60)["state"] == "succeeded"
    victim, vid = cluster.nodes[2], ids[cluster.nodes[2].name]
    cluster.wait_for(lambda: _head_size(victim) == len(list(read_records(log_path(victim)))) > 0, 10,
                     "node3's head to cover its log")
    size = _head_size(victim)
    cluster.wait_for(lambda: all((peer_doc(cluster, o, vid) or {}).get("audit_size") == size for o in (0, 1)),
                     10, "peers to check node3's head")
    cluster.stop()
    rewrite_log(victim, vid)
    cluster.start()
    cluster.wait_for(lambda: all((peer_doc(cluster, o, vid) or {}).get("audit") == "forked" for o in (0, 1)),
                     10, "restarted peers to flag node3's forked log")
    for o in (0, 1):
        with cluster.client(o) as c:
            assert c.stats()["audit_forks"] == 1
            (doc,) = c.audit_evidence(vid)
        assert "different roots" in doc["evidence"]["reason"]
        assert [h["size"] for h in doc["evidence"]["heads"]] == [size, size]
        assert "forked its audit log" in cluster.nodes[o].log_path.read_text()
    # node1 and node2 checked each other's heads across the restart too, without a false alarm
    with cluster.client(0) as c:
        assert c.stats()["audit_forked_nodes"] == [vid]


def _head_size(node):
    from xchanged.protocol.audit_format import parse_head

    try:
        return parse_head((log_path(node).parent / "audit.log.head").read_bytes()).size
    except (OSError, ValueError):
        return -1


def _embedded(entry, trust):
    if "message" not in entry:
        return None
    return type(codec.decode(entry["message"], trust).message)
