"""Curve keys derived from Ed25519 node keys (runtime/curve.py), and the Curve transport with ZAP."""

from __future__ import annotations

import asyncio

import pytest

from xchanged.protocol.signing import generate_key, public_bytes
from xchanged.runtime.curve import CurveError, curve_keypair, curve_public
from xchanged.runtime.transport import PeerTransport


def test_the_public_curve_key_follows_from_the_ed25519_public_key_alone():
    for _ in range(20):
        key = generate_key()
        public, secret = curve_keypair(key)
        assert curve_public(public_bytes(key)) == public and len(secret) == 32
    with pytest.raises(CurveError):
        curve_public(b"short")


def test_a_trusted_client_gets_through_and_others_are_refused_before_any_frame():
    server_key, friend, stranger = generate_key(), generate_key(), generate_key()
    friend_curve = curve_keypair(friend)[0]

    def decide(curve_key: bytes) -> tuple[bool, str]:
        return (True, "") if curve_key == friend_curve else (False, "unknown_key")

    async def scenario():
        server = PeerTransport("127.0.0.1:0", curve=curve_keypair(server_key), zap_decide=decide)
        server.start()
        good = PeerTransport("127.0.0.1:0", curve=curve_keypair(friend), zap_decide=decide)
        bad = PeerTransport("127.0.0.1:0", curve=curve_keypair(stranger), zap_decide=decide)
        plain = PeerTransport("127.0.0.1:0")
        address = f"127.0.0.1:{server.port}"
        try:
            received = None
            for _ in range(200):         # a new socket connects in the background (IMMEDIATE drops until then)
                for sender, frame in ((bad, b"evil"), (plain, b"plain"), (good, b"hello")):
                    sender.send(address, frame, public_bytes(server_key))
                try:
                    received = await asyncio.wait_for(server.receive(), 0.05)
                    break
                except asyncio.TimeoutError:
                    continue
            assert received == (friend_curve.hex(), b"hello")
            def refused() -> int:
                events = server.connection_events
                return events["handshake_failed_protocol"] + events["handshake_failed"]
            for _ in range(500):              # the clients retry in the background; the monitor reports later
                if server.zap.denied["unknown_key"] and refused():
                    break
                for sender in (bad, plain):
                    sender.send(address, b"again", public_bytes(server_key))
                await asyncio.sleep(0.02)
            assert server.zap.denied["unknown_key"] >= 1
            assert refused() >= 1                                                  # the plaintext client
            assert server.receive_ready() in ([], [(friend_curve.hex(), b"hello")])
            assert good.send(address, b"x", None) is False and good.no_key == 1    # no key: not sent
        finally:
            for t in (server, good, bad, plain):
                await t.stop()
                t.close()
    asyncio.run(scenario())
