"""The frame gate both drivers use: duplicates, replay and freshness, gossip batches."""

from xchanged.protocol import codec
from xchanged.protocol.events import FrameDropped
from xchanged.protocol.inbound import FrameGate
from xchanged.protocol.messages import Ack, Gossip, Load
from xchanged.protocol.signing import TrustStore, generate_key, public_bytes

NOW = 1_790_000_000_000


def ident(trust, name):
    key = generate_key()
    trust.keys[public_bytes(key)] = name
    return codec.Encoder(key, public_bytes(key), 1)


def load(name):
    return Load(name=name, address=f"{name}:1", slots=1, slots_free=1, running=0, queued=0, cpus=1,
                cpu_percent=0.0, mem_total=1, mem_available=1)


def kinds(events):
    return [type(e).__name__ + (f":{e.reason}" if isinstance(e, FrameDropped) else f":{e.envelope.type}")
            for e in events]


def test_duplicates_are_skipped_before_any_check_and_counted_apart_from_drops():
    trust = TrustStore({})
    gate, a = FrameGate(trust), ident(trust, "a")
    frame = a.encode(Ack("T", 1), NOW)
    assert kinds(gate.admit(frame, NOW)) == ["MessageReceived:ack"]
    assert gate.admit(frame, NOW) == [] and gate.duplicate_frames == 1


def test_loads_arriving_out_of_order_pass_other_frames_must_be_new():
    trust = TrustStore({})
    gate, a = FrameGate(trust), ident(trust, "a")
    old, new = a.encode(load("a"), NOW), a.encode(load("a"), NOW)
    assert kinds(gate.admit(new, NOW) + gate.admit(old, NOW)) == ["MessageReceived:load"] * 2
    ack1, ack2 = a.encode(Ack("T", 1), NOW), a.encode(Ack("T", 2), NOW)
    assert kinds(gate.admit(ack2, NOW) + gate.admit(ack1, NOW)) == ["MessageReceived:ack"] * 2   # in the window
    assert kinds(gate.admit(a.encode(Ack("T", 3), NOW - 10 * 60_000), NOW)) == ["FrameDropped:stale"]


def test_a_gossip_batch_admits_each_load_on_its_own_and_drops_anything_else():
    trust = TrustStore({})
    gate, relayer, a, b = FrameGate(trust), ident(trust, "r"), ident(trust, "a"), ident(trust, "b")
    la = a.encode(load("a"), NOW)
    smuggled = b.encode(Ack("T", 1), NOW)
    forged = la[:-1] + bytes([la[-1] ^ 1])
    batch = relayer.encode(Gossip([la, smuggled, forged]), NOW)
    assert kinds(gate.admit(batch, NOW)) == ["MessageReceived:gossip", "MessageReceived:load",
                                             "FrameDropped:invalid_body", "FrameDropped:bad_signature"]
    assert kinds(gate.admit(relayer.encode(Gossip([la]), NOW), NOW)) == ["MessageReceived:gossip"]   # la: duplicate
