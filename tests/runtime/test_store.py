"""The store commits BEFORE writes before a batch's effects, AFTER writes after them, and lets LAZY ones ride
along (or wait a second)."""

import sqlite3

from xchanged.protocol.effects import AFTER, BEFORE, LAZY, SYNC
from xchanged.runtime.store import LAZY_COMMIT_S, SCHEMA_VERSION, Store


def committed_attempts(path):
    with sqlite3.connect(path) as other:               # another connection sees only committed rows
        return other.execute("SELECT task_id, attempt FROM attempts ORDER BY attempt").fetchall()


def test_before_write_is_committed_in_the_before_phase(tmp_path):
    store = Store(tmp_path / "s.db")
    store.put_attempt({"task_id": "T", "attempt": 1, "state": "running"})
    store.commit_due(now=100.0, phase=BEFORE)
    assert committed_attempts(tmp_path / "s.db") == [("T", 1)]


def test_after_write_waits_for_the_after_phase(tmp_path):
    store = Store(tmp_path / "s.db")
    store.put_attempt({"task_id": "T", "attempt": 1, "state": "running"}, when=AFTER)
    store.commit_due(now=100.0, phase=BEFORE)
    assert committed_attempts(tmp_path / "s.db") == []
    store.commit_due(now=100.0, phase=AFTER)
    assert committed_attempts(tmp_path / "s.db") == [("T", 1)]


def test_lazy_write_waits_then_rides_with_a_before_one(tmp_path):
    store = Store(tmp_path / "s.db")
    store.put_attempt({"task_id": "T", "attempt": 1, "state": "running", "pid": 5}, when=LAZY)
    store.commit_due(now=100.0)
    store.commit_due(now=100.0 + LAZY_COMMIT_S / 2)
    assert committed_attempts(tmp_path / "s.db") == []
    store.put_attempt({"task_id": "T", "attempt": 2, "state": "running"})
    store.commit_due(now=100.0 + LAZY_COMMIT_S / 2)
    assert committed_attempts(tmp_path / "s.db") == [("T", 1), ("T", 2)]


def test_lazy_write_is_committed_within_the_bound(tmp_path):
    store = Store(tmp_path / "s.db")
    store.delete_attempt("T", 1)
    store.put_attempt({"task_id": "T", "attempt": 3, "state": "running", "pid": 5}, when=LAZY)
    store.commit_due(now=100.0)
    assert committed_attempts(tmp_path / "s.db") == []
    store.commit_due(now=100.0 + LAZY_COMMIT_S)
    assert committed_attempts(tmp_path / "s.db") == [("T", 3)]
    store.close()


def test_commits_are_unsynced_until_sync_and_a_sync_write_is_synced_at_once(tmp_path):
    store = Store(tmp_path / "s.db")
    store.put_attempt({"task_id": "T", "attempt": 1, "state": "running"})
    store.commit_due(now=100.0, phase=BEFORE)
    assert store.unsynced and committed_attempts(tmp_path / "s.db") == [("T", 1)]
    store.sync(now=100.0)                                  # fsync + checkpoint, as the worker thread does
    assert not store.unsynced
    store.put_task({"id": "T-1", "state": "queued", "submitted": 1}, when=SYNC)
    store.commit_due(now=100.1, phase=BEFORE)
    assert not store.unsynced                              # fsynced before the reply could go out
    store.close()
    store.sync(now=200.0)                                  # a late worker-thread sync after close: a no-op


def test_audit_heads_and_reputation_are_kept_across_a_reopen(tmp_path):
    store = Store(tmp_path / "x.db")
    store.put_audit_head("N1", {"node_id": "N1", "status": "ok", "head": {"size": 3}})
    store.put_audit_head("N2", {"node_id": "N2", "status": "forked"})
    store.put_audit_head("N1", {"node_id": "N1", "status": "ok", "head": {"size": 5}})
    store.put_reputation("contractor", "N1", {"kind": "contractor", "peer": "N1", "successes": 2})
    store.put_reputation("speed", "make", {"kind": "speed", "command": "make", "runtimes": {"N1": 10.0}})
    store.put_reputation("speed", "gone", {"kind": "speed", "command": "gone", "runtimes": {}})
    store.put_reputation("speed", "gone", None)                       # forgotten: deleted
    store.close()
    store = Store(tmp_path / "x.db")
    assert [d["head"]["size"] for d in store.audit_heads({"N1"})] == [5]
    assert [d["node_id"] for d in store.audit_heads()] == ["N1", "N2"]
    assert sorted(d.get("peer") or d["command"] for d in store.reputation()) == ["N1", "make"]
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    store.close()


def test_an_older_file_gains_the_new_tables(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema_version', '2');"
                     "CREATE TABLE tasks (id TEXT PRIMARY KEY, state TEXT NOT NULL, submitted INTEGER NOT NULL,"
                     " doc TEXT NOT NULL);")
    db.execute("INSERT INTO tasks VALUES ('T-1', 'queued', 1, '{\"id\": \"T-1\"}')")
    db.commit()
    db.close()
    store = Store(tmp_path / "old.db")
    assert store.unfinished_tasks() == [{"id": "T-1"}] and store.audit_heads() == [] and store.reputation() == []
    store.close()
