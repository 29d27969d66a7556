"""Wire messages: one frozen dataclass per message type, validated when built from a peer's body;
this module is their registry (`MESSAGE_TYPES`, the one table the codec decodes by) and the one place
their users import them from.

Where they live, one module per conversation: contract_messages.py (Contract Net: cfp, bid, award,
accept, progress, result, ...), membership_messages.py (loads, SWIM probes, suspicions, gossip
batches), query_messages.py (queries about other nodes' tasks and audit proofs). Task descriptions
(`TaskSpec`, composites) are in specs.py. Adding a message is a dataclass with a `TYPE` in one of
those modules and its entry in `MESSAGE_TYPES` here.

Rules:
* Bodies are plain msgpack maps. `from_body` (wire.py) checks every field's type and bounds against
  the dataclass annotations; a peer's bad body raises `RemoteProtocolError("invalid_body")`.
* Durations on the wire are relative milliseconds (`*_in_ms`, `*_ms` spans), never absolute times
  of the sender's clock, so clock skew between hosts cannot break windows or deadlines.
"""

from __future__ import annotations

from .contract_messages import (
    BUSY_CODES,
    OUTPUT_CHUNK,
    ROOM_CODES,
    STREAMS,
    Accept,
    Ack,
    Award,
    Bid,
    Cancel,
    Cfp,
    Outcome,
    Output,
    PartsAck,
    Progress,
    RefusalCode,
    Refuse,
    Reject,
    RejectBid,
    Result,
)
from .membership_messages import (
    LOAD_CHANGE,
    LOAD_HEARTBEAT,
    LOAD_NEWS,
    MAX_GOSSIP_BYTES,
    MAX_GOSSIP_FRAMES,
    RELAYABLE,
    Dead,
    Gossip,
    GpuInfo,
    Load,
    Ping,
    PingReq,
    Pong,
    Suspect,
    carried_frames,
)
from .query_messages import (
    ANSWER_CHUNK,
    MAX_ANSWER_PARTS,
    MAX_QUERY_LIMIT,
    MAX_QUERY_WAIT_MS,
    QUERY_OPS,
    Answer,
    AuditProof,
    AuditProofReq,
    Query,
    answer_parts,
)
from .specs import MAX_PARTS, PRIORITIES, CompositeSpec, PartResult, Requirements, Step, TaskSpec, priority_level
from .wire import MAX_ITEMS, MAX_OUTPUT_BYTES, MAX_STR, Limit, from_body, to_body

__all__ = [  # the messages, and the names of specs.py and wire.py every message user needs
    "ANSWER_CHUNK",
    "Accept",
    "Ack",
    "Answer",
    "AuditProof",
    "AuditProofReq",
    "Award",
    "BUSY_CODES",
    "Bid",
    "Cancel",
    "Cfp",
    "CompositeSpec",
    "Dead",
    "Gossip",
    "GpuInfo",
    "LOAD_CHANGE",
    "LOAD_HEARTBEAT",
    "LOAD_NEWS",
    "Limit",
    "Load",
    "MAX_ANSWER_PARTS",
    "MAX_GOSSIP_BYTES",
    "MAX_GOSSIP_FRAMES",
    "MAX_ITEMS",
    "MAX_OUTPUT_BYTES",
    "MAX_PARTS",
    "MAX_QUERY_LIMIT",
    "MAX_QUERY_WAIT_MS",
    "MAX_STR",
    "MESSAGE_TYPES",
    "OUTPUT_CHUNK",
    "Outcome",
    "Output",
    "PRIORITIES",
    "PartResult",
    "PartsAck",
    "Ping",
    "PingReq",
    "Pong",
    "Progress",
    "QUERY_OPS",
    "Query",
    "ROOM_CODES",
    "RefusalCode",
    "Refuse",
    "Reject",
    "RELAYABLE",
    "RejectBid",
    "Requirements",
    "Result",
    "STREAMS",
    "Step",
    "Suspect",
    "TaskSpec",
    "answer_parts",
    "carried_frames",
    "from_body",
    "priority_level",
    "to_body",
]

MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Load, Cfp, Bid, Refuse, RejectBid, Award, Accept, Reject, Progress, PartsAck, Result, Ack,
                Cancel, Ping, PingReq, Pong, AuditProofReq, AuditProof, Gossip, Query, Answer, Output, Suspect, Dead)
}
