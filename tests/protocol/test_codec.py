"""Wire tests: every kind of bad frame is rejected with the right reason, never a crash."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xchanged import specfile
from xchanged.protocol import codec
from xchanged.protocol.codec import DecodeError, Encoder, decode
from xchanged.protocol.messages import Ack, Award, Load, Requirements, TaskSpec, from_body
from xchanged.protocol.replay import ReplayGuard
from xchanged.protocol.signing import TrustStore, generate_key, public_bytes, sign

NOW_MS = 1_790_000_000_000


@pytest.fixture
def alice():
    key = generate_key()
    return key, public_bytes(key)


@pytest.fixture
def trust(alice):
    return TrustStore({alice[1]: "alice"})


def encoder(alice, incarnation=1):
    return Encoder(alice[0], alice[1], incarnation)


def reason_of(frame, trust):
    with pytest.raises(DecodeError) as info:
        decode(frame, trust)
    return info.value.reason


def test_round_trip_keeps_message_and_raw_bytes(alice, trust):
    spec = TaskSpec(["echo", "hi"], env={"A": "1"}, requirements=Requirements(cpus=2, labels={"zone": "a"}))
    frame = encoder(alice).encode(Award("T-1", 3, spec, 0.75), NOW_MS)
    env = decode(frame, trust)
    assert env.message == Award("T-1", 3, spec, 0.75)
    assert env.raw == frame and env.seq == 1 and env.incarnation == 1 and env.ts_ms == NOW_MS


def test_tampered_body_fails_signature(alice, trust):
    frame = bytearray(encoder(alice).encode(Ack("T-1", 1), NOW_MS))
    frame[codec.HEADER_LEN + 5] ^= 0x01
    assert reason_of(bytes(frame), trust) == codec.BAD_SIGNATURE


def test_replaced_key_of_another_trusted_node_fails_signature(alice):
    bob = generate_key()
    trust = TrustStore({alice[1]: "alice", public_bytes(bob): "bob"})
    frame = encoder(alice).encode(Ack("T-1", 1), NOW_MS)
    forged = frame[:3] + public_bytes(bob) + frame[codec.HEADER_LEN:]
    assert reason_of(forged, trust) == codec.BAD_SIGNATURE


def test_wrong_key_signature(alice, trust):
    mallory = generate_key()
    frame = encoder(alice).encode(Ack("T-1", 1), NOW_MS)
    resigned = frame[:-64] + sign(mallory, frame[:-64])
    assert reason_of(resigned, trust) == codec.BAD_SIGNATURE


def test_untrusted_key(alice):
    frame = encoder(alice).encode(Ack("T-1", 1), NOW_MS)
    assert reason_of(frame, TrustStore({})) == codec.UNTRUSTED


def test_truncated_and_oversized(alice, trust):
    frame = encoder(alice).encode(Ack("T-1", 1), NOW_MS)
    assert reason_of(frame[:20], trust) == codec.TRUNCATED
    assert reason_of(frame[:-1], trust) == codec.BAD_SIGNATURE          # cut signature
    assert reason_of(b"X" * (codec.MAX_FRAME + 1), trust) == codec.OVERSIZED


def test_bad_magic_and_version(alice, trust):
    frame = encoder(alice).encode(Ack("T-1", 1), NOW_MS)
    assert reason_of(b"ZZ" + frame[2:], trust) == codec.BAD_MAGIC
    assert reason_of(frame[:2] + bytes([9]) + frame[3:], trust) == codec.BAD_VERSION


def _signed(alice, payload: bytes) -> bytes:
    signed = codec.MAGIC + bytes([codec.VERSION]) + alice[1] + payload
    return signed + sign(alice[0], signed)


def test_validly_signed_garbage_is_malformed_or_invalid(alice, trust):
    assert reason_of(_signed(alice, b"\xc1\xc1"), trust) == codec.MALFORMED
    assert reason_of(_signed(alice, msgpack.packb([1, 2])), trust) == codec.MALFORMED
    assert reason_of(_signed(alice, msgpack.packb(["nope", 1, 1, NOW_MS, {}])), trust) == codec.UNKNOWN_TYPE
    assert reason_of(_signed(alice, msgpack.packb(["ack", 1, 1, NOW_MS, {"task_id": 5}])), trust) == codec.INVALID_BODY
    assert reason_of(_signed(alice, msgpack.packb(["ack", -1, 1, NOW_MS, {}])), trust) == codec.MALFORMED
    ext = msgpack.packb(["ack", 1, 1, NOW_MS, msgpack.ExtType(1, b"x")])
    assert reason_of(_signed(alice, ext), trust) == codec.MALFORMED


def test_invalid_nested_values_are_rejected(alice, trust):
    body = {"task_id": "T", "attempt": 1, "spec": {"argv": []}, "score": 0.0}
    assert reason_of(_signed(alice, msgpack.packb(["award", 1, 1, NOW_MS, body])), trust) == codec.INVALID_BODY
    body = {"task_id": "T", "attempt": 1, "slots": 1, "slots_free": 0, "cpu_percent": float("nan"),
            "mem_available": 0}
    assert reason_of(_signed(alice, msgpack.packb(["bid", 1, 1, NOW_MS, body])), trust) == codec.INVALID_BODY


def test_replayed_seq_and_old_incarnation(alice, trust):
    guard = ReplayGuard()
    enc = encoder(alice, incarnation=5)
    first = decode(enc.encode(Ack("T-1", 1), NOW_MS), trust)
    second = decode(enc.encode(Ack("T-1", 1), NOW_MS), trust)
    guard.check(second, NOW_MS)
    guard.check(first, NOW_MS)                 # out of order but new: accepted
    for env in (first, second):
        with pytest.raises(DecodeError) as info:
            guard.check(env, NOW_MS)
        assert info.value.reason == codec.REPLAYED
    old = decode(Encoder(alice[0], alice[1], 4).encode(Ack("T-1", 1), NOW_MS), trust)
    with pytest.raises(DecodeError) as info:
        guard.check(old, NOW_MS)
    assert info.value.reason == codec.REPLAYED


def test_seq_older_than_window_is_replay(alice, trust):
    guard = ReplayGuard()
    enc = encoder(alice)
    early = decode(enc.encode(Ack("T", 1), NOW_MS), trust)
    for _ in range(5000):
        enc.seq += 1
    guard.check(decode(enc.encode(Ack("T", 1), NOW_MS), trust), NOW_MS)
    with pytest.raises(DecodeError) as info:
        guard.check(early, NOW_MS)
    assert info.value.reason == codec.REPLAYED


def test_stale_timestamp(alice, trust):
    guard = ReplayGuard(max_skew_ms=60_000)
    env = decode(encoder(alice).encode(Ack("T-1", 1), NOW_MS - 61_000), trust)
    with pytest.raises(DecodeError) as info:
        guard.check(env, NOW_MS)
    assert info.value.reason == codec.STALE
    future = decode(encoder(alice).encode(Ack("T-1", 1), NOW_MS + 61_000), trust)
    with pytest.raises(DecodeError):
        guard.check(future, NOW_MS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data):
    key = generate_key()
    trust = TrustStore({public_bytes(key): "k"})
    with pytest.raises(DecodeError) as info:
        decode(data, trust)
    assert info.value.reason in codec.DROP_REASONS


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_rejected(data):
    key = generate_key()
    pub = public_bytes(key)
    trust = TrustStore({pub: "k"})
    load = Load(name="n", address="h:1", slots=2, slots_free=1, running=1, queued=0, cpus=2, cpu_percent=5.0,
                mem_total=10, mem_available=5)
    frame = bytearray(Encoder(key, pub, 1).encode(load, NOW_MS))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DecodeError):
        decode(bytes(frame), trust)


def test_duplicate_filter_recognises_only_identical_recent_frames(alice):
    from xchanged.protocol.replay import DuplicateFilter

    dup = DuplicateFilter(capacity=2)
    enc = encoder(alice)
    a, b, c = (enc.encode(Ack("T", i), NOW_MS) for i in range(3))
    assert not dup.seen_before(a) and dup.seen_before(a)
    assert not dup.seen_before(b) and not dup.seen_before(c)
    assert not dup.seen_before(a)            # evicted: capacity bounds memory


def test_a_composite_with_thousands_of_items_fits_an_award_frame():
    key = generate_key()
    body = specfile.from_dict({"command": ["true"], "items": [str(i) for i in range(20_000)]})[0]
    frame = codec.Encoder(key, public_bytes(key), 1).encode(Award("T", 1, from_body(TaskSpec, body)),
                                                            1_790_000_000_000)
    env = codec.decode(frame, TrustStore({public_bytes(key): "k"}))
    assert len(env.message.spec.composite.steps[0].items) == 20_000
