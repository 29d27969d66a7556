"""The store commits urgent writes at once and lets non-urgent ones ride along (or wait a second)."""

import sqlite3

from xchanged.runtime.store import LAZY_COMMIT_S, Store


def committed_attempts(path):
    with sqlite3.connect(path) as other:               # another connection sees only committed rows
        return other.execute("SELECT task_id, attempt FROM attempts ORDER BY attempt").fetchall()


def test_urgent_write_is_committed_by_commit_due(tmp_path):
    store = Store(tmp_path / "s.db")
    store.put_attempt({"task_id": "T", "attempt": 1, "state": "running"})
    store.commit_due(now=100.0)
    assert committed_attempts(tmp_path / "s.db") == [("T", 1)]


def test_lazy_write_waits_then_rides_with_an_urgent_one(tmp_path):
    store = Store(tmp_path / "s.db")
    store.put_attempt({"task_id": "T", "attempt": 1, "state": "running", "pid": 5}, urgent=False)
    store.commit_due(now=100.0)
    store.commit_due(now=100.0 + LAZY_COMMIT_S / 2)
    assert committed_attempts(tmp_path / "s.db") == []
    store.put_attempt({"task_id": "T", "attempt": 2, "state": "running"})
    store.commit_due(now=100.0 + LAZY_COMMIT_S / 2)
    assert committed_attempts(tmp_path / "s.db") == [("T", 1), ("T", 2)]


def test_lazy_write_is_committed_within_the_bound(tmp_path):
    store = Store(tmp_path / "s.db")
    store.delete_attempt("T", 1)
    store.put_attempt({"task_id": "T", "attempt": 3, "state": "running", "pid": 5}, urgent=False)
    store.commit_due(now=100.0)
    assert committed_attempts(tmp_path / "s.db") == []
    store.commit_due(now=100.0 + LAZY_COMMIT_S)
    assert committed_attempts(tmp_path / "s.db") == [("T", 3)]
    store.close()
