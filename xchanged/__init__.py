"""xchanged: a peer-to-peer task exchange daemon (Contract Net over signed gossip)."""

__version__ = "0.1.0"

from .client import Client, DaemonUnreachable, RequestFailed  # noqa: E402

__all__ = ["Client", "DaemonUnreachable", "RequestFailed", "__version__"]
