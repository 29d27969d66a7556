"""Every test here is checked for leaked threads, child processes and file descriptors (tests/leaks.py)."""

from tests.leaks import no_leaks  # noqa: F401  (an autouse fixture)
