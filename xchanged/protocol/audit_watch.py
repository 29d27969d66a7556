"""Cross-node audit check: remember each peer's signed audit head and catch a rewritten log (a fork).

Every node gossips the signed tree head (RFC 9162 STH) of its audit log in its load signal
(`Load.audit_head`). A peer's log may only ever grow, so every new head must extend the last one
we checked. Rules:

- The first head we see of a node becomes its baseline (trust on first use).
- Baselines and forks outlive a restart of the watcher: every change of a node's baseline, status or
  evidence is handed out (`take_changes`) for the store, and `restore` puts them back at start, so the
  first head a node gossips after our restart is checked against the last one we checked before it
  (a log rewritten while we were down is a fork like any other).
- A head that is malformed, names another node or whose signature does not verify: FORKED.
  (The load signal carrying it is already signed by the node, so this is the node's own doing.)
- A head of the same size as the baseline must have the same root; a different root: FORKED.
- A head of smaller size than the baseline: FORKED (the log was cut or rolled back).
- A larger head: we ask the node for a consistency proof (`AuditProofReq(old_size, new_size)`).
  A proof that verifies makes the new head the baseline. A proof that fails, or an answer that
  it has none: FORKED. Heads arriving while a request is outstanding wait for the answer; an
  unanswered request is sent again after `proof_timeout` (when the next head arrives).
- FORKED is final for that node, across restarts too. The two conflicting heads, both signed by the
  node, and the failed proof are kept as evidence anyone can check offline.

Pure: no clock (times are passed in), no I/O. Bounded: one entry per peer that sent a verified
load, i.e. per key in the trust store (the daemon restores only the heads of trusted keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .audit_format import SignedTreeHead, verify_head_dict
from .merkle import verify_consistency
from .messages import AuditProof, AuditProofReq

UNKNOWN, OK, PENDING, FORKED = "unknown", "ok", "checking", "forked"


@dataclass(slots=True)
class Watched:
    """What we know of one node's audit log."""

    node_id: str
    head: SignedTreeHead | None = None        # the last head checked consistent: the baseline
    pending: SignedTreeHead | None = None     # a newer head whose consistency proof we await
    asked_at: float = 0.0                     # when we (last) asked for that proof
    requests: int = 0
    verified: int = 0                         # proofs that checked out
    status: str = UNKNOWN
    evidence: dict[str, Any] | None = None
    restored: bool = False                    # head read back from our store, not yet checked with its key

    def doc(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "status": self.status, "verified_proofs": self.verified,
            "head": self.head.to_dict() if self.head else None,
            "pending": self.pending.to_dict() if self.pending else None,
        }

    def stored(self) -> dict[str, Any]:
        """What outlives a restart: the baseline, the status, the evidence of a fork."""
        return {"node_id": self.node_id, "status": self.status, "verified_proofs": self.verified,
                "head": self.head.to_dict() if self.head else None, "evidence": self.evidence}


@dataclass(slots=True)
class AuditWatch:
    """The heads we have seen per node, and the forks we found."""

    proof_timeout: float = 5.0
    nodes: dict[str, Watched] = field(default_factory=dict)
    forks: int = 0                            # nodes found forked (a counter for stats/metrics)
    changed: set[str] = field(default_factory=set)     # nodes whose stored() changed since take_changes()

    # -- input ----------------------------------------------------------------------------------

    def on_head(self, node_id: str, public_key: bytes, head_dict: object, now: float,
                wall_ms: int) -> tuple[AuditProofReq | None, dict[str, Any] | None]:
        """A head from `node_id`'s verified load signal. Returns (proof request to send, fork evidence)."""
        w = self.nodes.get(node_id)
        if w is None:
            w = self.nodes[node_id] = Watched(node_id)
        if w.status == FORKED:
            return None, None
        if w.restored:                        # our stored baseline must verify with the node's key, or
            w.restored = False                # our store was damaged: start over (trust on first use)
            if w.head is not None and verify_head_dict(w.head.to_dict(), public_key, node_id)[1]:
                w.head, w.status = None, UNKNOWN
        head, why = verify_head_dict(head_dict, public_key, node_id)
        if why or head is None:
            raw = head.to_dict() if head else head_dict
            return None, self._fork(w, f"bad audit head: {why}", wall_ms, new=raw)
        base = w.head
        if base is None:
            w.head, w.status = head, OK
            self.changed.add(node_id)
            return None, None
        if head.size == base.size:
            if head.root != base.root:
                return None, self._fork(w, f"two signed heads of size {head.size} with different roots",
                                        wall_ms, new=head.to_dict())
            return None, None
        if head.size < base.size:
            return None, self._fork(w, f"signed head shrank from {base.size} to {head.size} records",
                                    wall_ms, new=head.to_dict())
        if base.size == 0:                    # the empty log is a prefix of every log
            if verify_consistency(0, head.size, base.root, head.root, []):
                w.head, w.status, w.verified = head, OK, w.verified + 1
                self.changed.add(node_id)
                return None, None
            return None, self._fork(w, "its size-0 head does not have the empty root", wall_ms,
                                    new=head.to_dict())
        pending = w.pending
        if pending is not None:
            if pending.size == head.size and pending.root != head.root:
                return None, self._fork(w, f"two signed heads of size {head.size} with different roots",
                                        wall_ms, new=head.to_dict(), other=pending.to_dict())
            if now - w.asked_at < self.proof_timeout:
                return None, None             # wait for the outstanding answer
            if pending.size > head.size:      # keep asking about the newest head we saw
                head = pending
        w.pending, w.asked_at, w.requests, w.status = head, now, w.requests + 1, PENDING
        return AuditProofReq(old_size=base.size, new_size=head.size), None

    def on_proof(self, node_id: str, answer: AuditProof, wall_ms: int) -> dict[str, Any] | None:
        """`node_id`'s answer to our request. Returns fork evidence, or None."""
        w = self.nodes.get(node_id)
        if w is None or w.status == FORKED or w.pending is None or w.head is None:
            return None
        base, new = w.head, w.pending
        if (answer.old_size, answer.new_size) != (base.size, new.size):
            return None                       # an answer to an earlier request: stale
        proof = [h.hex() for h in answer.proof]
        if answer.error:
            return self._fork(w, f"it cannot prove head {new.size} extends head {base.size}: {answer.error}",
                              wall_ms, new=new.to_dict(), proof=proof)
        if not verify_consistency(base.size, new.size, base.root, new.root, answer.proof):
            return self._fork(w, f"consistency proof from {base.size} to {new.size} records does not verify"
                              " (its log was rewritten)", wall_ms, new=new.to_dict(), proof=proof)
        w.head, w.pending, w.status, w.verified = new, None, OK, w.verified + 1
        self.changed.add(node_id)
        return None

    # -- across restarts ------------------------------------------------------------------------

    def take_changes(self) -> list[dict[str, Any]]:
        """The stored() documents of the nodes that changed since the last call (for the store)."""
        changed, self.changed = self.changed, set()
        return [self.nodes[n].stored() for n in sorted(changed) if n in self.nodes]

    def restore(self, docs: list[dict[str, Any]]) -> int:
        """Put back what `take_changes` handed out before a restart; returns how many documents were
        skipped as malformed (a damaged store costs a baseline, never a crash)."""
        skipped = 0
        for doc in docs:
            w = _watched(doc)
            if w is None:
                skipped += 1
                continue
            self.nodes[w.node_id] = w
            self.forks += w.status == FORKED
        return skipped

    # -- queries --------------------------------------------------------------------------------

    def status(self, node_id: str) -> str:
        w = self.nodes.get(node_id)
        return w.status if w else UNKNOWN

    def evidence(self, node_id: str) -> dict[str, Any] | None:
        w = self.nodes.get(node_id)
        return w.evidence if w else None

    def forked(self) -> list[str]:
        return sorted(n for n, w in self.nodes.items() if w.status == FORKED)

    # -- internals ------------------------------------------------------------------------------

    def _fork(self, w: Watched, reason: str, wall_ms: int, *, new: object, other: dict[str, Any] | None = None,
              proof: list[str] | None = None) -> dict[str, Any]:
        heads = [h for h in (w.head.to_dict() if w.head else None, other, new) if h is not None]
        w.status, w.pending = FORKED, None
        w.evidence = {"node_id": w.node_id, "reason": reason, "detected_ms": wall_ms, "heads": heads,
                      "proof": proof}
        self.forks += 1
        self.changed.add(w.node_id)
        return w.evidence


def _watched(doc: object) -> Watched | None:
    """A Watched from a stored() document, or None when it does not make sense."""
    if not isinstance(doc, dict):
        return None
    node_id, status, head, evidence = doc.get("node_id"), doc.get("status"), doc.get("head"), doc.get("evidence")
    verified = doc.get("verified_proofs", 0)
    if not isinstance(node_id, str) or not node_id or status not in (OK, FORKED) or type(verified) is not int:
        return None
    if status == FORKED and not isinstance(evidence, dict):
        return None
    try:
        baseline = SignedTreeHead.from_dict(head) if head is not None else None
    except ValueError:
        return None
    if (baseline is None and status == OK) or (baseline is not None and baseline.node_id != node_id):
        return None
    return Watched(node_id, head=baseline, status=status, verified=max(0, verified),
                   evidence=evidence if status == FORKED else None, restored=True)
