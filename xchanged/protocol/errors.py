"""Error types, named by whose fault the problem is (as in h11).

`LocalProtocolError` means this node tried to do something the protocol forbids: a bug here.
`RemoteProtocolError` means a peer (or a client) sent something invalid: counted and dropped, never
fatal to the daemon.
"""


class XchangedError(Exception):
    """Base of every error xchanged raises on purpose."""


class LocalProtocolError(XchangedError):
    """We broke a protocol rule; the caller's code is wrong."""


class RemoteProtocolError(XchangedError):
    """A peer or client sent something invalid. `reason` is a short stable label for counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
