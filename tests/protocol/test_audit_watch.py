"""The cross-node audit check (protocol/audit_watch.py) with a hand-moved clock, and its wiring in Node."""

from __future__ import annotations

import hashlib
import random

from xchanged.protocol import codec, readout
from xchanged.protocol.audit_format import SignedTreeHead
from xchanged.protocol.audit_watch import FORKED, OK, PENDING, UNKNOWN, AuditWatch
from xchanged.protocol.effects import LAZY, Log, PersistAuditHead, ProveAudit, Send
from xchanged.protocol.events import Instant, MessageReceived, StateRecovered
from xchanged.protocol.merkle import MerkleAccumulator
from xchanged.protocol.messages import AuditProof, AuditProofReq, Load
from xchanged.protocol.node import Node, NodeSettings
from xchanged.protocol.signing import TrustStore, generate_key, node_id, public_bytes

KEY = generate_key()
PUB = public_bytes(KEY)
NID = node_id(PUB)
OTHER = generate_key()


def leaves(tag: bytes, n: int) -> list[bytes]:
    return [hashlib.sha256(tag + b"%d" % i).digest() for i in range(n)]


class Log_:
    """A node's log as the watcher sees it: a tree it can sign heads of and prove from."""

    def __init__(self, hashes: list[bytes]):
        self.tree = MerkleAccumulator(hashes)

    def head(self, size: int, key=KEY, nid: str = NID, t: int = 1) -> dict:
        return SignedTreeHead.sign(key, nid, size, self.tree.root(size), t).to_dict()

    def proof(self, old: int, new: int) -> AuditProof:
        return AuditProof(old, new, self.tree.consistency_proof(old, new))


HONEST = Log_(leaves(b"a", 40))


def test_first_head_is_the_baseline_and_growth_is_proved():
    w = AuditWatch(proof_timeout=5.0)
    assert w.status(NID) == UNKNOWN
    assert w.on_head(NID, PUB, HONEST.head(10), 0.0, 1) == (None, None)
    assert w.status(NID) == OK
    assert w.on_head(NID, PUB, HONEST.head(10, t=2), 1.0, 2) == (None, None)   # same tree, re-signed
    req, fork = w.on_head(NID, PUB, HONEST.head(25), 2.0, 3)
    assert req == AuditProofReq(10, 25) and fork is None and w.status(NID) == PENDING
    assert w.on_proof(NID, HONEST.proof(10, 25), 4) is None
    assert w.status(NID) == OK and w.nodes[NID].head.size == 25 and w.forks == 0


def test_a_rewritten_log_fails_its_consistency_proof():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    forged = Log_(leaves(b"a", 3) + leaves(b"forged", 37))    # record 3 onward rewritten, re-signed
    req, _ = w.on_head(NID, PUB, forged.head(20), 1.0, 2)
    assert req == AuditProofReq(10, 20)
    evidence = w.on_proof(NID, forged.proof(10, 20), 3)
    assert w.status(NID) == FORKED and w.forks == 1
    assert "does not verify" in evidence["reason"]
    assert [h["size"] for h in evidence["heads"]] == [10, 20]
    assert all(SignedTreeHead.from_dict(h).verify(KEY.public_key()) for h in evidence["heads"])
    assert evidence["proof"] and w.evidence(NID) is evidence
    # final: later heads are not checked, and not counted again
    assert w.on_head(NID, PUB, forged.head(30), 2.0, 4) == (None, None) and w.forks == 1


def test_same_size_different_root_is_a_fork_at_once():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    req, evidence = w.on_head(NID, PUB, Log_(leaves(b"x", 10)).head(10), 1.0, 2)
    assert req is None and "different roots" in evidence["reason"] and w.status(NID) == FORKED


def test_a_shrinking_head_is_a_fork():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    _, evidence = w.on_head(NID, PUB, HONEST.head(9), 1.0, 2)
    assert "shrank from 10 to 9" in evidence["reason"]


def test_bad_signature_wrong_node_or_garbage_is_a_fork():
    for bad in (HONEST.head(5, key=OTHER), HONEST.head(5, nid="someone-else"), {"size": "x"}):
        w = AuditWatch()
        w.on_head(NID, PUB, HONEST.head(3), 0.0, 1)
        req, evidence = w.on_head(NID, PUB, bad, 1.0, 2)
        assert req is None and evidence["reason"].startswith("bad audit head") and w.status(NID) == FORKED


def test_cannot_prove_is_a_fork_and_stale_answers_are_ignored():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    w.on_head(NID, PUB, HONEST.head(20), 1.0, 2)
    assert w.on_proof(NID, HONEST.proof(5, 20), 3) is None and w.status(NID) == PENDING   # not what we asked
    evidence = w.on_proof(NID, AuditProof(10, 20, [], error="new_size beyond the log"), 4)
    assert "cannot prove" in evidence["reason"] and w.status(NID) == FORKED


def test_outstanding_request_is_repeated_only_after_the_timeout():
    w = AuditWatch(proof_timeout=5.0)
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    assert w.on_head(NID, PUB, HONEST.head(20), 1.0, 2)[0] == AuditProofReq(10, 20)
    assert w.on_head(NID, PUB, HONEST.head(22), 3.0, 3) == (None, None)        # waiting
    assert w.on_head(NID, PUB, HONEST.head(22), 6.5, 4)[0] == AuditProofReq(10, 22)  # timed out: ask anew
    assert w.on_proof(NID, HONEST.proof(10, 20), 5) is None and w.status(NID) == PENDING  # stale answer
    assert w.on_proof(NID, HONEST.proof(10, 22), 6) is None and w.status(NID) == OK


def test_two_pending_heads_of_one_size_with_different_roots_are_a_fork():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    w.on_head(NID, PUB, HONEST.head(20), 1.0, 2)
    _, evidence = w.on_head(NID, PUB, Log_(leaves(b"y", 20)).head(20), 2.0, 3)
    assert len(evidence["heads"]) == 3 and w.status(NID) == FORKED


def test_growth_from_the_empty_log_needs_no_proof():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(0), 0.0, 1)
    assert w.on_head(NID, PUB, HONEST.head(7), 1.0, 2) == (None, None) and w.status(NID) == OK


# -- wiring in Node ---------------------------------------------------------------------------


def _frame(message, seq: int) -> MessageReceived:
    enc = codec.Encoder(KEY, PUB, incarnation=1)
    enc.seq = seq - 1
    raw = enc.encode(message, 1000)
    return MessageReceived(codec.decode(raw, TrustStore({PUB: "peer"})))


def _load(head: dict) -> Load:
    return Load(name="peer", address="10.0.0.2:7946", slots=2, slots_free=2, running=0, queued=0, cpus=2,
                cpu_percent=0.0, mem_total=1, mem_available=1, audit_head=head)


def test_node_asks_for_proofs_answers_requests_and_logs_forks():
    own = generate_key()
    node = Node(node_id(public_bytes(own)), NodeSettings(name="me", address="10.0.0.1:7946", slots=1),
                random.Random(1))
    now = Instant(1.0, 1000)
    node.handle(_frame(_load(HONEST.head(10)), 1), now)
    effects = node.handle(_frame(_load(HONEST.head(20)), 2), Instant(2.0, 2000))
    sends = [e for e in effects if isinstance(e, Send) and isinstance(e.message, AuditProofReq)]
    assert sends and sends[0].targets == ((NID, "10.0.0.2:7946"),)
    forged = Log_(leaves(b"z", 20))
    effects = node.handle(_frame(forged.proof(10, 20), 3), Instant(3.0, 3000))
    errors = [e for e in effects if isinstance(e, Log) and e.level == "error"]
    assert errors and "forked its audit log" in errors[0].text and NID in errors[0].text
    assert node.audit_watch.status(NID) == FORKED
    # a peer's request for our proof becomes an effect for the driver
    effects = node.handle(_frame(AuditProofReq(3, 9), 4), Instant(4.0, 4000))
    assert [e for e in effects if isinstance(e, ProveAudit)] == [
        ProveAudit(target=(NID, "10.0.0.2:7946"), old_size=3, new_size=9, stimulus_id=effects[0].stimulus_id)]


# -- across a restart of the watcher -------------------------------------------------------------


def restarted(docs: list[dict]) -> AuditWatch:
    """A new watcher fed what an old one handed out for the store (as after a restart)."""
    fresh = AuditWatch()
    assert fresh.restore(docs) == 0
    return fresh


def test_changes_are_handed_out_for_the_store_once():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    (doc,) = w.take_changes()
    assert doc["status"] == OK and doc["head"]["size"] == 10 and w.take_changes() == []
    w.on_head(NID, PUB, HONEST.head(20), 1.0, 2)
    assert w.take_changes() == []                             # a pending head is not a baseline
    w.on_proof(NID, HONEST.proof(10, 20), 3)
    assert [d["head"]["size"] for d in w.take_changes()] == [20]


def test_a_restarted_watcher_checks_the_first_new_head_against_the_stored_one():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    stored = w.take_changes()
    # honest growth: proved against the stored baseline
    w2 = restarted(stored)
    assert w2.status(NID) == OK and w2.nodes[NID].head.size == 10
    assert w2.on_head(NID, PUB, HONEST.head(25), 0.0, 2)[0] == AuditProofReq(10, 25)
    assert w2.on_proof(NID, HONEST.proof(10, 25), 3) is None and w2.status(NID) == OK
    # rewritten while the watcher was down: same size, another root
    w3 = restarted(stored)
    _, evidence = w3.on_head(NID, PUB, Log_(leaves(b"x", 10)).head(10), 0.0, 2)
    assert "different roots" in evidence["reason"] and w3.status(NID) == FORKED and w3.forks == 1
    # rewritten and grown: its proof fails
    w4 = restarted(stored)
    forged = Log_(leaves(b"a", 3) + leaves(b"forged", 37))
    assert w4.on_head(NID, PUB, forged.head(30), 0.0, 2)[0] == AuditProofReq(10, 30)
    assert "does not verify" in w4.on_proof(NID, forged.proof(10, 30), 3)["reason"]
    # cut while the watcher was down
    w5 = restarted(stored)
    assert "shrank" in w5.on_head(NID, PUB, HONEST.head(4), 0.0, 2)[1]["reason"]


def test_a_fork_found_before_a_restart_stays_found():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    w.on_head(NID, PUB, Log_(leaves(b"x", 10)).head(10), 1.0, 2)
    evidence = w.evidence(NID)
    w2 = restarted(w.take_changes())
    assert w2.status(NID) == FORKED and w2.forks == 1 and w2.forked() == [NID]
    assert w2.evidence(NID) == evidence
    assert w2.on_head(NID, PUB, HONEST.head(12), 0.0, 3) == (None, None)     # final


def test_a_damaged_stored_baseline_starts_over_instead_of_accusing_the_node():
    w = AuditWatch()
    w.on_head(NID, PUB, HONEST.head(10), 0.0, 1)
    (doc,) = w.take_changes()
    tampered = dict(doc, head=dict(doc["head"], size=9))       # its signature no longer covers it
    w2 = AuditWatch()
    junk = [{"node_id": NID}, {"status": OK}, "nonsense", dict(doc, head={"size": 1}),
            dict(doc, status=FORKED, evidence=None)]
    assert w2.restore([tampered, *junk]) == len(junk)
    assert w2.on_head(NID, PUB, HONEST.head(12), 0.0, 2) == (None, None)
    assert w2.status(NID) == OK and w2.nodes[NID].head.size == 12 and w2.forks == 0


def test_a_restarted_node_flags_a_log_rewritten_while_it_was_down():
    """Through Node: the heads it checked are persisted (effects), handed back at start, and the
    first head after the restart is checked against them; the fork is reported as any other."""
    own = generate_key()
    settings = NodeSettings(name="me", address="10.0.0.1:7946", slots=1)
    node = Node(node_id(public_bytes(own)), settings, random.Random(1))
    effects = node.handle(_frame(_load(HONEST.head(10)), 1), Instant(1.0, 1000))
    stored = [e for e in effects if isinstance(e, PersistAuditHead)]
    assert [(e.node_id, e.doc["head"]["size"], e.when) for e in stored] == [(NID, 10, LAZY)]

    again = Node(node.id, settings, random.Random(2))
    again.handle(StateRecovered(audit_heads=[e.doc for e in stored]), Instant(0.0, 5000))
    assert readout.audit_evidence(again, NID)[0]["head"]["size"] == 10
    forged = Log_(leaves(b"z", 10))
    effects = again.handle(_frame(_load(forged.head(10)), 1), Instant(1.0, 6000))
    errors = [e for e in effects if isinstance(e, Log) and e.level == "error"]
    assert errors and "forked its audit log" in errors[0].text
    assert readout.counters(again).audit_forks == 1 and readout.counters(again).audit_forked_nodes == (NID,)
    assert [p.audit for p in readout.peers(again, 1.0) if p.id == NID] == ["forked"]
    assert [e.doc["status"] for e in effects if isinstance(e, PersistAuditHead)] == [FORKED]
