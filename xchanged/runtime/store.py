"""SQLite store (WAL): the manager's tasks and the outputs of their attempts, and the contractor's
accepted attempts (running, or finished with a result not yet acknowledged).

Durability in two steps. A commit writes the transaction to the write-ahead log (synchronous=NORMAL):
from then on it survives a crash of the daemon, not yet a crash of the machine. `sync()` fsyncs the
log, making every commit before it survive power loss too; the daemon calls it off the event loop
every SYNC_INTERVAL (group fsync), and inline for SYNC writes (a client's accepted submit), which are
on disk before the reply. Checkpoints (copying the log into the database file) run from `sync()`
too, on a connection of their own, so the event loop never waits on the disk.

Task rows hold the task's JSON document as the protocol core last persisted it; a restarted daemon
hands the unfinished ones back to the core (`StateRecovered`). Writes are grouped: `put_task` only
stages, `commit` makes everything staged durable at once, and the daemon commits before it performs
any effect that depends on the write (a reply to the client, a message to a peer).

Contractor attempt records (`put_attempt`, msgpack documents since results carry raw output bytes)
are handed back to the core at start-up (`StateRecovered.attempts`) and deleted on the manager's ack.
So are the peers' audit heads this node checked (`audit_heads`, one row per peer) and its reputation
documents (`reputation`, a contractor's record or a command's run times: protocol/reputation.py),
both written LAZY. Schema 2 added the `attempts` table, schema 3 the `parts` table (a composite's parts
that ended, kept by the node that manages the composite), schema 4 `audit_heads` and `reputation`;
opening an older file creates what it lacks (nothing else changed).
Schema 5 added two indexes (nothing else changed): finished tasks by the time they finished (for
pruning the history, `prune`) and tasks by submission time (for `xchanged tasks --since/--limit`,
`list_tasks`). The manager's and the contractor's running totals (`readout.totals`) are a `meta` row.

History (`prune`): finished tasks older than `[node] history`, or beyond `[node] history_tasks`, are
deleted with their outputs and parts, a small batch per call, on a connection of its own (the daemon
calls it from a worker thread, so the event loop never waits on it; the loop's connection waits at
most for one batch's transaction when both write at once).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import msgpack

from ..protocol.effects import AFTER, BEFORE, LAZY, SYNC

SCHEMA_VERSION = 5
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    submitted INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
CREATE TABLE IF NOT EXISTS outputs (
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stdout BLOB NOT NULL,
    stderr BLOB NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE IF NOT EXISTS parts (
    task_id TEXT NOT NULL,
    key TEXT NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (task_id, key)
);
CREATE TABLE IF NOT EXISTS attempts (
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE IF NOT EXISTS audit_heads (
    node_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reputation (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS tasks_submitted ON tasks (submitted);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (json_extract(doc, '$.finished'))
    WHERE state IN ('succeeded', 'failed', 'cancelled');
"""
UNFINISHED = ("queued", "assigned", "running")
FINISHED = ("succeeded", "failed", "cancelled")
PRUNE_BATCH = 200               # finished tasks deleted per transaction
TOTALS_KEY = "totals"
LAZY_COMMIT_S = 1.0             # longest a LAZY write waits for a commit
_RANK = {LAZY: 0, AFTER: 1, BEFORE: 2, SYNC: 3}
CHECKPOINT_EVERY = 2.0          # seconds between checkpoints of the write-ahead log


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint=0")          # sync() checkpoints, off the loop
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._syncer: sqlite3.Connection | None = None        # used by sync() only, under _sync_lock
        self._pruner: sqlite3.Connection | None = None        # used by prune() only, under _prune_lock
        self._prune_lock = threading.Lock()
        self._sync_lock = threading.Lock()                    # sync() in a worker thread vs close()
        self._closed = False
        self._last_checkpoint = 0.0
        self.unsynced = False         # committed since the last sync() began
        self.defer_sync = False       # True (the daemon): a SYNC commit sets sync_owed instead of fsyncing
        self.sync_owed = False        # a SYNC write is committed, not yet fsynced: its replies must wait
        self._in_tx = False
        self._due = LAZY              # the most pressing durability among the staged writes
        self._lazy_since: float | None = None   # when LAZY writes were first seen waiting

    def _begin(self, when: str = BEFORE) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True
        if _RANK[when] > _RANK[self._due]:
            self._due = when

    def put_task(self, doc: dict, when: str = BEFORE) -> None:
        self._begin(when)
        self.db.execute("INSERT INTO tasks (id, state, submitted, doc) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET state=excluded.state, doc=excluded.doc",
                        (doc["id"], doc["state"], doc["submitted"], json.dumps(doc, separators=(",", ":"))))

    def put_output(self, task_id: str, attempt: int, stdout: bytes, stderr: bytes) -> None:
        self._begin()
        self.db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)", (task_id, attempt, stdout, stderr))

    def put_parts(self, task_id: str, parts: list[dict]) -> None:
        """A composite's parts that ended (PartResult bodies), written before the coordinator is told."""
        self._begin(BEFORE)
        self.db.executemany("INSERT OR REPLACE INTO parts VALUES (?, ?, ?)",
                            [(task_id, p["key"], msgpack.packb(p, use_bin_type=True)) for p in parts])

    def parts(self, task_id: str) -> list[dict]:
        rows = self.db.execute("SELECT doc FROM parts WHERE task_id = ?", (task_id,))
        return [msgpack.unpackb(doc, raw=False) for (doc,) in rows]

    def put_attempt(self, doc: dict, when: str = BEFORE) -> None:
        self._begin(when)
        self.db.execute("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?)",
                        (doc["task_id"], doc["attempt"], msgpack.packb(doc, use_bin_type=True)))

    def delete_attempt(self, task_id: str, attempt: int) -> None:
        self._begin(LAZY)
        self.db.execute("DELETE FROM attempts WHERE task_id = ? AND attempt = ?", (task_id, attempt))

    def put_audit_head(self, node_id: str, doc: dict, when: str = LAZY) -> None:
        self._begin(when)
        self.db.execute("INSERT OR REPLACE INTO audit_heads VALUES (?, ?)",
                        (node_id, json.dumps(doc, separators=(",", ":"))))

    def audit_heads(self, wanted: set[str] | None = None) -> list[dict]:
        """The stored audit-head documents (of the nodes in `wanted`, when given)."""
        rows = self.db.execute("SELECT node_id, doc FROM audit_heads ORDER BY node_id")
        return [json.loads(doc) for nid, doc in rows if wanted is None or nid in wanted]

    def put_reputation(self, kind: str, key: str, doc: dict | None, when: str = LAZY) -> None:
        self._begin(when)
        if doc is None:
            self.db.execute("DELETE FROM reputation WHERE kind = ? AND key = ?", (kind, key))
        else:
            self.db.execute("INSERT OR REPLACE INTO reputation VALUES (?, ?, ?)",
                            (kind, key, json.dumps(doc, separators=(",", ":"))))

    def reputation(self) -> list[dict]:
        return [json.loads(doc) for (doc,) in self.db.execute("SELECT doc FROM reputation ORDER BY kind, key")]

    def attempts(self) -> list[dict]:
        rows = self.db.execute("SELECT doc FROM attempts ORDER BY task_id, attempt")
        return [msgpack.unpackb(doc, raw=False) for (doc,) in rows]

    def commit(self) -> None:
        if self._in_tx:
            must_sync = self._due == SYNC
            self.db.execute("COMMIT")
            self._in_tx, self._due = False, LAZY
            self._lazy_since = None
            self.unsynced = True
            if must_sync and self.defer_sync:
                self.sync_owed = True
            elif must_sync:
                self.sync()

    def sync(self, now: float | None = None) -> None:
        """fsync the write-ahead log (every commit so far survives power loss); checkpoint it into
        the database file every CHECKPOINT_EVERY seconds when `now` is given. Safe to call from a
        worker thread while the loop goes on committing: what it commits meanwhile is marked unsynced."""
        with self._sync_lock:
            self._sync(now)

    def _sync(self, now: float | None) -> None:
        self.unsynced = False
        if self._closed:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if now is not None and now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self._last_checkpoint = now
            if self._syncer is None:
                self._syncer = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._syncer.execute("PRAGMA synchronous=NORMAL")
            self._syncer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def commit_due(self, now: float, phase: str = AFTER, lazy_within: float = LAZY_COMMIT_S) -> None:
        """Commit what is staged if some of it is due in this `phase` of a batch (BEFORE: before its
        effects; AFTER: after them, also committing LAZY writes that waited `lazy_within`)."""
        if not self._in_tx:
            return
        if self._lazy_since is None:
            self._lazy_since = now
        if _RANK[self._due] >= _RANK[phase] or (phase == AFTER and now - self._lazy_since >= lazy_within):
            self.commit()

    def unfinished_tasks(self) -> list[dict]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = self.db.execute(f"SELECT doc FROM tasks WHERE state IN ({marks}) ORDER BY submitted", UNFINISHED)
        return [json.loads(doc) for (doc,) in rows]

    def list_tasks(self, *, state: str | None = None, since_ms: int | None = None, limit: int = 100) -> list[dict]:
        """The newest `limit` task documents (optionally of one state, submitted at or after
        `since_ms`), in submission order: what `xchanged tasks` shows, bounded whatever the history."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if since_ms is not None:
            where.append("submitted >= ?")
            args.append(since_ms)
        sql = "SELECT doc FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY submitted DESC, rowid DESC LIMIT ?", (*args, max(0, limit)))
        return [json.loads(doc) for (doc,) in reversed(rows.fetchall())]

    def prune(self, older_than_ms: int | None, keep: int = 0, batch: int = PRUNE_BATCH) -> int:
        """Delete up to `batch` finished tasks (and their outputs) that finished before `older_than_ms`
        (None: any age) or that are beyond the newest `keep` finished ones (0: no such limit), oldest
        first. Returns how many were deleted (`batch`: call again). Safe from a worker thread."""
        with self._prune_lock:
            if self._closed:
                return 0
            if self._pruner is None:
                self._pruner = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                               timeout=5.0)
                self._pruner.execute("PRAGMA synchronous=NORMAL")
            db = self._pruner
            finished = "json_extract(doc, '$.finished')"
            terminal = f"state IN {FINISHED!r}"
            cutoff = older_than_ms
            if keep:
                row = db.execute(f"SELECT {finished} FROM tasks WHERE {terminal} ORDER BY {finished} DESC "
                                 "LIMIT 1 OFFSET ?", (keep - 1,)).fetchone()
                if row is not None and row[0] is not None:
                    cutoff = row[0] if cutoff is None else min(cutoff, row[0])
            if cutoff is None:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in db.execute(f"SELECT id FROM tasks WHERE {terminal} AND {finished} < ? "
                                                f"ORDER BY {finished} LIMIT ?", (cutoff, batch))]
                if ids:
                    marks = ",".join("?" * len(ids))
                    db.execute(f"DELETE FROM outputs WHERE task_id IN ({marks})", ids)
                    db.execute(f"DELETE FROM parts WHERE task_id IN ({marks})", ids)
                    db.execute(f"DELETE FROM tasks WHERE id IN ({marks})", ids)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.unsynced = True
            return len(ids)

    def put_totals(self, totals: dict) -> None:
        """Stage the running totals (written with the next commit: LAZY; a crash loses at most the last
        second of counting)."""
        self._begin(LAZY)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (TOTALS_KEY, json.dumps(totals)))

    def totals(self) -> dict:
        raw = self.get_meta(TOTALS_KEY)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def count_by_state(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())

    def task(self, task_id: str) -> dict | None:
        row = self.db.execute("SELECT doc FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def output(self, task_id: str, attempt: int | None = None) -> tuple[int, bytes, bytes] | None:
        if attempt is None:
            row = self.db.execute("SELECT attempt, stdout, stderr FROM outputs WHERE task_id = ? "
                                  "ORDER BY attempt DESC LIMIT 1", (task_id,)).fetchone()
        else:
            row = self.db.execute("SELECT attempt, stdout, stderr FROM outputs WHERE task_id = ? AND attempt = ?",
                                  (task_id, attempt)).fetchone()
        return (row[0], bytes(row[1]), bytes(row[2])) if row else None

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.commit()
        with self._sync_lock, self._prune_lock:
            self._closed = True
            if self._syncer is not None:
                self._syncer.close()
                self._syncer = None
            if self._pruner is not None:
                self._pruner.close()
                self._pruner = None
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")      # synced: the log copied into the file
        self.db.close()
