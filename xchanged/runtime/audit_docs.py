"""Audit records as JSON documents: what `xchanged audit show --json` prints, and what a manager
answers when another node asks for the records of one of its tasks (the same document either way).

Bytes become hex; a signed protocol frame embedded in an entry (the award, the accept) is shown as
what it says and whether its signature checks against the key it names.
"""

from __future__ import annotations

from typing import Any, Callable

from ..protocol import codec
from ..protocol.signing import TrustStore, node_id
from .audit import AuditRecord


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def embedded_message(frame: bytes, trust: TrustStore) -> dict:
    """What a signed protocol frame embedded in an entry says, and whether its signature checks."""
    if len(frame) < codec.HEADER_LEN:
        return {"valid": False, "error": "too short"}
    key = bytes(frame[3:codec.HEADER_LEN])
    try:
        env = codec.decode(frame, TrustStore({key: ""}))
    except codec.DecodeError as exc:
        return {"valid": False, "error": str(exc), "signer": node_id(key)}
    return {"valid": True, "type": env.type, "signer": env.sender, "signer_trusted": key in trust,
            "ts_ms": env.ts_ms, "task_id": getattr(env.message, "task_id", None),
            "attempt": getattr(env.message, "attempt", None)}


def record_doc(record: AuditRecord, name: Callable[[str | None], str], trust: TrustStore) -> dict:
    """One record: its index, its entry's fields, the names of the nodes it names (`name`: id -> name)."""
    entry = record.entry
    doc = {"index": record.index, **{k: v for k, v in entry.items() if k != "message"}}
    for role in ("manager", "contractor"):
        if role in entry:
            doc[f"{role}_name"] = name(entry[role])
    if isinstance(entry.get("message"), bytes):
        doc["message"] = embedded_message(entry["message"], trust)
    return jsonable(doc)
