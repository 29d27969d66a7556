"""xchanged: a peer-to-peer task exchange daemon (Contract Net over signed gossip)."""

__version__ = "0.1.0"

from .client import Client, DaemonUnreachable, ManagerUnreachable, RequestFailed  # noqa: E402

__all__ = ["Client", "DaemonUnreachable", "ManagerUnreachable", "RequestFailed", "__version__"]
