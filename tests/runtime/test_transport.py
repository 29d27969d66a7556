"""Outbound peer sockets: closed when idle, at most `max_dealers` open (least recently used closed
first), and a peer whose socket was closed is reached again through a new one."""

from __future__ import annotations

import asyncio

from xchanged.localcluster import free_port
from xchanged.runtime.transport import PeerTransport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_socket_is_closed_beyond_the_bound():
    clock = Clock()
    transport = PeerTransport("127.0.0.1:0", max_dealers=2, dealer_idle=60.0, clock=clock)
    try:
        a, b, c = (f"127.0.0.1:{free_port()}" for _ in range(3))   # nobody listens: frames are dropped
        transport.send(a, b"x")
        transport.send(b, b"x")
        first_a = transport.dealers[(a, b"")][0]
        transport.send(a, b"x")                     # a is now the most recently used
        transport.send(c, b"x")                     # over the bound: b goes
        assert list(transport.dealers) == [(a, b""), (c, b"")]
        assert transport.dealers[(a, b"")][0] is first_a and not first_a.closed
        assert transport.dealers_closed == 1
    finally:
        transport.close()
    assert transport.dealers == {} and first_a.closed


def test_idle_sockets_are_closed_on_the_next_send():
    clock = Clock()
    transport = PeerTransport("127.0.0.1:0", dealer_idle=60.0, clock=clock)
    try:
        a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        transport.send(a, b"x")
        sock_a = transport.dealers[(a, b"")][0]
        clock.now += 30.0
        transport.send(b, b"x")
        clock.now += 30.0                           # a unused for 60 s, b for 30 s
        transport.close_idle(clock.now)
        assert list(transport.dealers) == [(b, b"")] and sock_a.closed
        clock.now += 31.0
        transport.send(a, b"x")                     # b idle too: closed; a gets a new socket
        assert list(transport.dealers) == [(a, b"")] and transport.dealers[(a, b"")][0] is not sock_a
        assert transport.dealers_closed == 2
    finally:
        transport.close()


def test_a_peer_is_reached_again_after_its_socket_was_closed():
    async def scenario():
        clock = Clock()
        sender = PeerTransport("127.0.0.1:0", dealer_idle=60.0, clock=clock)
        receiver = PeerTransport("127.0.0.1:0")
        address = f"127.0.0.1:{receiver.port}"
        try:
            for frame in (b"before", b"after"):
                # a new socket connects in the background; until then the frame is dropped (IMMEDIATE)
                for _ in range(200):
                    sender.send(address, frame)
                    try:
                        assert (await asyncio.wait_for(receiver.receive(), 0.05))[1] == frame
                        break
                    except asyncio.TimeoutError:
                        continue
                else:
                    raise AssertionError(f"{frame!r} never arrived")
                clock.now += 61.0
                sender.close_idle(clock.now)
                assert sender.dealers == {}
        finally:
            sender.close()
            receiver.close()
    asyncio.run(scenario())


def test_an_ipv6_peer_is_reached():
    """A node listening on IPv6 ("[::1]:port", as `[network] advertise` may say) gets frames."""
    import socket

    import pytest

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def scenario():
        sender = PeerTransport("127.0.0.1:0")
        receiver = PeerTransport("[::1]:0")
        try:
            for _ in range(200):            # connecting goes on in the background (IMMEDIATE drops)
                sender.send(f"[::1]:{receiver.port}", b"over v6")
                try:
                    return (await asyncio.wait_for(receiver.receive(), 0.05))[1]
                except asyncio.TimeoutError:
                    continue
        finally:
            sender.close()
            receiver.close()
    assert asyncio.run(scenario()) == b"over v6"
