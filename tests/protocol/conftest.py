"""Fixtures of the protocol core's tests."""

import pytest

from xchanged.protocol.signing import TrustStore


@pytest.fixture
def trust() -> TrustStore:
    """A trust store of this test's own (fakes.FakePeer adds each key it makes)."""
    return TrustStore({})
