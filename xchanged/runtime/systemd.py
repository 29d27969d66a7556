"""Talking to systemd (Type=notify): readiness, reloading, stopping and watchdog pings.

`notify` is a no-op when systemd is not listening (no NOTIFY_SOCKET), so the daemon runs the same
under systemd, in a terminal and in tests. It never blocks: it is called on the event loop, and a
datagram socket whose reader fell behind would otherwise stall the loop (and with it the watchdog
pings that prove the loop alive); a message that does not fit is dropped.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> None:
    """Send `state` (e.g. "READY=1", "WATCHDOG=1") to systemd's notification socket, if there is one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(state.encode(), path)
        except OSError:                 # not listening, or its queue is full (BlockingIOError): dropped
            pass
