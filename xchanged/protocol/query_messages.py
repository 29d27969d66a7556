"""Questions one node asks another, and their answers: queries about tasks the other node manages
(one cluster, one view: docs/protocol.md, "Queries") and consistency proofs of its audit log
(docs/audit.md).

Rules:
* A query is served by the node it is sent to, from its own tasks only, never forwarded again.
* An answer is a JSON document cut into numbered `answer` frames of at most ANSWER_CHUNK bytes, at
  most MAX_ANSWER_PARTS of them (`answer_parts`); an error is a stable `code`.
* Every wait and count a peer may ask for is bounded (MAX_QUERY_WAIT_MS, MAX_QUERY_LIMIT; a proof is
  at most 128 hashes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

QUERY_OPS = ("status", "logs", "wait", "cancel", "tasks", "audit")
MAX_QUERY_WAIT_MS = 60_000     # the longest a query may ask its answerer to wait (wait, logs -f)
MAX_QUERY_LIMIT = 10_000       # tasks one manager lists for `tasks --cluster`
ANSWER_CHUNK = 512 << 10       # bytes of an answer's JSON document per `answer` frame
MAX_ANSWER_PARTS = 32          # frames one answer may take (16 MiB of JSON); larger ones are truncated


@dataclass(frozen=True, slots=True)
class Query:
    """Asker -> a task's manager (or every peer): serve this control operation as if asked locally.

    `request_id` is the asker's and comes back in each `answer`. A task query names `task_id`; a
    `tasks` query names none and lists the answerer's own tasks (at most `limit`, in `state`). The
    answerer serves it from its own tasks only, never forwarding it again."""

    TYPE: ClassVar[str] = "query"
    request_id: int
    op: str
    task_id: str = ""
    state: str = ""                   # tasks: only tasks in this state
    limit: int = 100                  # tasks: at most this many (the newest)
    attempt: int | None = None        # logs: this attempt's output (default: the latest)
    follow: bool = False              # logs: new output after `offsets`, waiting up to `wait_ms` for some
    offsets: list[int] = field(default_factory=lambda: [0, 0])   # logs -f: bytes of stdout, stderr seen
    wait_ms: int = 0                  # wait, logs -f: how long the answerer may wait before answering
    user: str = ""                    # cancel, logs: the user who asked, as the asker's daemon says
                                      # (the client's uid there: runtime/access.py)
    part: str = ""                    # logs: one part of a composite (its key, or its own id)
    admin: bool = False               # cancel, logs: that user is an admin on the asking node

    def __post_init__(self) -> None:
        if self.op not in QUERY_OPS:
            raise ValueError(f"op must be one of {', '.join(QUERY_OPS)}")
        if (self.op == "tasks") == bool(self.task_id):
            raise ValueError("a tasks query names no task; every other query names one")
        if not 0 <= self.wait_ms <= MAX_QUERY_WAIT_MS:
            raise ValueError(f"wait_ms must be between 0 and {MAX_QUERY_WAIT_MS}")
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        if len(self.offsets) != 2 or min(self.offsets) < 0:
            raise ValueError("offsets are two byte counts (stdout, stderr)")


@dataclass(frozen=True, slots=True)
class Answer:
    """Answerer -> asker: one part of the answer to query `request_id`: a JSON document (`ok`), or an
    error with a stable `code` (`no_such_task`, `busy`, `error`). A document larger than one frame
    comes in `parts` frames of ANSWER_CHUNK bytes, numbered from 0, the asker joins them."""

    TYPE: ClassVar[str] = "answer"
    request_id: int
    ok: bool
    body: bytes = b""                 # part `part` of the JSON document
    part: int = 0
    parts: int = 1
    code: str = ""
    error: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.part < self.parts <= MAX_ANSWER_PARTS:
            raise ValueError(f"need 0 <= part < parts <= {MAX_ANSWER_PARTS}")
        if len(self.body) > ANSWER_CHUNK:
            raise ValueError(f"an answer part is at most {ANSWER_CHUNK} bytes")


def answer_parts(request_id: int, document: bytes) -> list[Answer]:
    """A JSON document as the `answer` frames that carry it (at most MAX_ANSWER_PARTS: the caller
    keeps documents within MAX_ANSWER_PARTS * ANSWER_CHUNK bytes)."""
    chunks = [document[i:i + ANSWER_CHUNK] for i in range(0, len(document), ANSWER_CHUNK)] or [b""]
    if len(chunks) > MAX_ANSWER_PARTS:
        raise ValueError(f"an answer of {len(document)} bytes needs more than {MAX_ANSWER_PARTS} parts")
    return [Answer(request_id, True, chunk, i, len(chunks)) for i, chunk in enumerate(chunks)]


@dataclass(frozen=True, slots=True)
class AuditProofReq:
    """Ask a node to prove its signed audit head of `new_size` extends the one of `old_size`."""

    TYPE: ClassVar[str] = "audit_proof_req"
    old_size: int
    new_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.old_size <= self.new_size:
            raise ValueError("need 0 <= old_size <= new_size")


@dataclass(frozen=True, slots=True)
class AuditProof:
    """RFC 9162 consistency proof between two of the sender's audit heads; `error` if it has none."""

    TYPE: ClassVar[str] = "audit_proof"
    old_size: int
    new_size: int
    proof: list[bytes] = field(default_factory=list)
    error: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.old_size <= self.new_size:
            raise ValueError("need 0 <= old_size <= new_size")
        if len(self.proof) > 128 or any(len(h) != 32 for h in self.proof):
            raise ValueError("a proof is at most 128 hashes of 32 bytes")
