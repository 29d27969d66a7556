"""Fuzzing (hypothesis) of what attackers control: peer frames, certificates, mDNS records, control
requests. Thousands of cases per run; the only thing allowed out is the typed rejection (DecodeError,
CertError, ValueError, a control error response), never another exception.

Signed frames with random payloads are the interesting ones: a trusted key signs them, so they get
past the signature check into the msgpack and body parsers, as a compromised or buggy peer's would.
"""

from __future__ import annotations

import asyncio
import json

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xchanged.protocol import certs, codec, messages
from xchanged.protocol.events import FrameDropped, MessageReceived
from xchanged.protocol.inbound import FrameGate
from xchanged.protocol.signing import TrustStore, generate_key, public_bytes, sign
from xchanged.runtime.discovery import parse_announcement
from xchanged.runtime.transport import ControlServer

KEY = generate_key()
PUB = public_bytes(KEY)
TRUST = TrustStore({PUB: "fuzzer"})
NOW_MS = 1_800_000_000_000
MANY = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 64), max_value=1 << 64),
                    st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=6)),
                      max_leaves=12)


def field_names(cls) -> list[str]:
    return [f for f in cls.__dataclass_fields__ if f != "TYPE"]


@st.composite
def bodies(draw):
    """A body shaped like a real message's (its field names) with values of any type."""
    mtype = draw(st.sampled_from(sorted(messages.MESSAGE_TYPES)))
    names = field_names(messages.MESSAGE_TYPES[mtype])
    body = draw(st.dictionaries(st.sampled_from(names + ["extra"]), values, max_size=len(names) + 1))
    return mtype, body


def signed(payload: bytes) -> bytes:
    signed_part = codec.MAGIC + bytes([codec.VERSION]) + PUB + payload
    return signed_part + sign(KEY, signed_part)


def decodes_or_rejects(frame: bytes) -> None:
    try:
        env = codec.decode(frame, TRUST)
    except codec.DecodeError as exc:
        assert exc.reason in codec.DROP_REASONS
        return
    assert env.type in messages.MESSAGE_TYPES and env.raw == frame


@MANY
@given(st.binary(max_size=600))
def test_random_bytes_are_rejected_by_reason(frame):
    decodes_or_rejects(frame)
    decodes_or_rejects(codec.MAGIC + bytes([codec.VERSION]) + PUB + frame)


@MANY
@given(bodies(), st.integers(min_value=-5, max_value=1 << 64), st.integers(min_value=-5, max_value=1 << 64))
def test_signed_frames_with_hostile_bodies_decode_or_are_rejected(shaped, inc, seq):
    mtype, body = shaped
    try:
        payload = msgpack.packb([mtype, inc, seq, NOW_MS, body], use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    decodes_or_rejects(signed(payload))


@MANY
@given(values)
def test_signed_frames_with_any_payload_decode_or_are_rejected(payload):
    try:
        packed = msgpack.packb(payload, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    decodes_or_rejects(signed(packed))


@MANY
@given(st.lists(st.binary(max_size=300), max_size=5), st.binary(max_size=300))
def test_the_gate_never_raises(frames, cert):
    """Through the whole gate, gossip batches and certificate vouching included."""
    gate = FrameGate(TrustStore({PUB: "fuzzer"}), lambda key, blob, wall: certs.BAD_CERTIFICATE)
    batch = msgpack.packb(["gossip", 1, 1, NOW_MS, {"frames": frames}], use_bin_type=True)
    load = msgpack.packb(["load", 1, 2, NOW_MS, {"cert": cert}], use_bin_type=True)
    for frame in (signed(batch), signed(load), *frames):
        for event in gate.admit(frame, NOW_MS):
            assert isinstance(event, (MessageReceived, FrameDropped))


@MANY
@given(st.binary(max_size=certs.MAX_CERT + 20), st.binary(min_size=32, max_size=32))
def test_certificates_are_checked_or_refused_by_reason(blob, key):
    try:
        certs.check(blob, key, {PUB: "ca"}, certs.Revocations(), NOW_MS / 1000)
    except certs.CertError as exc:
        assert exc.reason in certs.CERT_REASONS


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "fp", "v", "pk", "name", "c0", "c1", "x"]),
                       st.one_of(st.text(max_size=60), st.binary(max_size=60)), max_size=8))
def test_mdns_records_parse_or_are_refused(props):
    try:
        parse_announcement(props)
    except ValueError:
        pass


class _Control:
    """A real ControlServer parse path in front of a stand-in handler that validates like Control:
    unknown ops and bad arguments are ControlErrors; anything else escaping is a bug (internal error)."""

    def __init__(self):
        from xchanged.protocol.messages import TaskSpec, from_body
        from xchanged.runtime.transport import ControlError
        self.ControlError, self.TaskSpec, self.from_body = ControlError, TaskSpec, from_body

    async def handle(self, op, args, requester=None):
        if op != "submit":
            raise self.ControlError(f"unknown operation {op!r}")
        specs = args.get("specs")
        if not isinstance(specs, list) or not specs:
            raise self.ControlError("submit needs a non-empty list 'specs'")
        from xchanged.protocol.errors import RemoteProtocolError
        for i, body in enumerate(specs):
            try:
                self.from_body(self.TaskSpec, body)
            except RemoteProtocolError as exc:
                raise self.ControlError(f"task spec {i}: {exc.detail}") from None
        return "ok"


spec_like = st.dictionaries(st.sampled_from(field_names(messages.TaskSpec) + ["requirements", "x"]), values,
                            max_size=8)
submit_args = st.fixed_dictionaries({"specs": st.lists(spec_like, max_size=3)})
requests = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: json.dumps(v, default=repr).encode()),
    st.fixed_dictionaries({"id": values, "op": st.one_of(st.just("submit"), values),
                           "args": st.one_of(values, submit_args)}).map(lambda d: json.dumps(d, default=repr).encode()),
)


def test_control_requests_get_an_answer_never_an_exception():
    server = ControlServer(None, _Control().handle)
    loop = asyncio.new_event_loop()

    @MANY
    @given(requests)
    def check(line):
        answer = loop.run_until_complete(server._answer(line))
        assert set(answer) >= {"id", "ok"}
        if not answer["ok"]:
            assert isinstance(answer["error"], str) and not answer["error"].startswith("internal error"), answer

    try:
        check()
    finally:
        loop.close()


def test_a_real_daemons_control_operations_answer_every_request(tmp_path):
    """The real operations (Control) of an in-process daemon that runs nothing (empty allow-list),
    fed hostile arguments: a clear error or a result, never an internal error."""
    from tests.runtime.inprocess import running_daemon

    ops = ["ping", "submit", "cancel", "status", "tasks", "logs", "peers", "audit_evidence", "stats", "frob"]
    arg = st.one_of(values, st.text(max_size=20).map(lambda s: "T-" + s))
    args = st.dictionaries(st.sampled_from(["id", "specs", "state", "attempt", "all", "node", "x"]), arg, max_size=4)
    lines = st.tuples(st.sampled_from(ops), args, st.one_of(st.none(), st.lists(spec_like, min_size=1, max_size=2)))

    async def scenario(loop_check):
        async with running_daemon(tmp_path, executor={"allow": ["nothing-may-run"]}) as daemon:
            server = ControlServer(None, daemon.control.handle)
            await loop_check(server)

    async def loop_check(server):
        answers = []

        @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
        @given(lines)
        def check(request):
            op, a, specs = request
            if specs is not None and op == "submit":
                a = dict(a, specs=specs)
            answers.append(json.dumps({"id": 1, "op": op, "args": a}, default=repr).encode())

        check()
        for line in answers:
            answer = await server._answer(line)
            assert answer["ok"] or not answer["error"].startswith("internal error"), (line, answer)

    asyncio.run(scenario(loop_check))
