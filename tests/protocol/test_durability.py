"""Which writes are on disk before a reply (SYNC), written ahead of what follows (BEFORE), or behind it
(AFTER, LAZY).

The daemon fsyncs SYNC writes before a batch's effects, commits BEFORE writes before them and AFTER
writes right after (protocol/effects.py). These tests pin the choice per write, on the effects the
core emits, because each one is a crash-safety argument (protocol/contractor.py, manager.py).
"""

import random

from xchanged.protocol import codec
from xchanged.protocol.contractor import Contractor, ContractorSettings
from xchanged.protocol.effects import (
    AFTER,
    BEFORE,
    LAZY,
    SYNC,
    Audit,
    ForgetAttempt,
    Outbox,
    PersistAttempt,
    PersistTask,
    Reply,
    Send,
    StartTask,
)
from xchanged.protocol.events import CancelRequested, Instant, TaskExited, TaskSubmitted
from xchanged.protocol.messages import Ack, Award, TaskSpec
from xchanged.protocol.node import Node, NodeSettings
from xchanged.protocol.signing import TrustStore, generate_key, public_bytes

WALL = 1_790_000_000_000


def setup():
    key = generate_key()
    pub = public_bytes(key)
    trust = TrustStore({pub: "mgr"})
    encoder = codec.Encoder(key, pub, 1)
    out = Outbox()
    contractor = Contractor(ContractorSettings("Ncontractor", slots=2), out, lambda peer: ("mgr:1", "mgr"))
    def say(message):
        return codec.decode(encoder.encode(message, WALL), trust)
    return contractor, out, say


def kinds(effects):
    return [(type(e).__name__, getattr(e, "when", None), type(getattr(e, "message", None)).__name__)
            for e in effects]


def test_accepting_an_award_starts_the_process_first_and_persists_behind_it():
    contractor, out, say = setup()
    contractor.on_award(say(Award("T-1", 1, TaskSpec(["true"]), 0.5)), now=1.0, wall_ms=WALL)
    effects = out.take()
    record = next(e for e in effects if isinstance(e, PersistAttempt))
    assert record.doc["state"] == "running" and record.when == AFTER
    assert next(e for e in effects if isinstance(e, Audit)).entry["event"] == "award"
    assert any(isinstance(e, StartTask) for e in effects)
    assert ("Send", None, "Accept") in kinds(effects)


def test_a_result_is_on_disk_before_it_is_sent_and_forgotten_lazily_on_ack():
    contractor, out, say = setup()
    contractor.on_award(say(Award("T-1", 1, TaskSpec(["true"]), 0.5)), now=1.0, wall_ms=WALL)
    out.take()
    contractor.on_started("T-1", 1, pid=42, pid_start=1.0)
    assert [e.when for e in out.take() if isinstance(e, PersistAttempt)] == [LAZY]     # the pid: a refinement
    contractor.on_exited(TaskExited("T-1", 1, "exited", 0, 5, b"", b""), now=1.1)
    effects = out.take()
    record = next(i for i, e in enumerate(effects) if isinstance(e, PersistAttempt))
    sent = next(i for i, e in enumerate(effects) if isinstance(e, Send))
    assert effects[record].doc["state"] == "result" and effects[record].when == BEFORE and record < sent
    contractor.on_ack(say(Ack("T-1", 1)))
    assert [type(e) for e in out.take()] == [ForgetAttempt]


def test_a_submit_and_a_cancel_are_on_disk_before_the_reply_other_task_changes_are_written_ahead():
    node = Node("Nmanager", NodeSettings(name="m", address="m:1", slots=1), random.Random(1))
    effects = node.handle(TaskSubmitted(1, "T-1", TaskSpec(["true"])), Instant(0.0, WALL))
    persists = [e for e in effects if isinstance(e, PersistTask)]
    assert persists[0].when == SYNC
    assert effects.index(persists[0]) < next(i for i, e in enumerate(effects) if isinstance(e, Reply))
    effects = node.handle(CancelRequested(2, "T-1"), Instant(0.1, WALL + 100))
    assert [e.when for e in effects if isinstance(e, PersistTask)] == [SYNC]
