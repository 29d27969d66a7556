"""Error types, named by whose fault the problem is (as in h11).

`RemoteProtocolError` means a peer (or a client) sent something invalid: counted and dropped, never
fatal to the daemon. (A bug of our own is not caught: the daemon stops and systemd restarts it.)
"""


class XchangedError(Exception):
    """Base of every error xchanged raises on purpose."""


class RemoteProtocolError(XchangedError):
    """A peer or client sent something invalid. `reason` is a short stable label for counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class LocalProtocolError(XchangedError):
    """Our own bug: an illegal state change or a broken invariant of the core (never a peer's doing)."""
