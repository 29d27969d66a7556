"""Fixtures for integration tests: virtual hosts (network namespaces), and the check that every test
leaves no thread, child process or file descriptor behind (tests/leaks.py)."""

from __future__ import annotations

import pytest

from integration.netns import NetnsLab, netns_available
from tests.leaks import no_leaks  # noqa: F401  (an autouse fixture)


@pytest.fixture
def lab():
    """A fresh NetnsLab, closed (processes stopped, namespaces deleted) after the test.

    Skips the test when network namespaces cannot be built here (not root, no `ip`, no netns).
    """
    ok, reason = netns_available()
    if not ok:
        pytest.skip(f"network-namespace lab unavailable: {reason}")
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.close()
    assert not lab.teardown_errors, lab.teardown_errors
