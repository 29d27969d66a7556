"""xchanged: a peer-to-peer task exchange daemon (Contract Net over signed gossip)."""

__version__ = "0.1.0"
