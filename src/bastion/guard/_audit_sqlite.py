"""SQLite backend of the audit log: WAL, append-only triggers, group commit on one connection.

Schema migration: a log created before the ``api_key`` column existed gets it added (``ALTER
TABLE ... ADD COLUMN``, which rewrites nothing and fires no trigger); its old rows read as NULL.

``seq`` is the rowid without ``AUTOINCREMENT`` (in logs created since): rows are never deleted
(the trigger refuses it), so the next rowid is always the largest plus one, in append order,
and no ``sqlite_sequence`` page has to be written with every row.

Durability (``synchronous``, in WAL mode). Every commit writes its rows to the WAL file with
``write()`` before the append returns, so with either level an acknowledged row is in the
kernel's page cache and survives the death of the process, ``kill -9`` included: the next open
replays the WAL. What the levels differ in is the OS or the machine going down:

- ``NORMAL`` (the default) does not fsync at commit (only at checkpoints): after an OS crash or
  a power loss the last commits before it (up to the last checkpoint) may be missing; the
  database is never corrupted.
- ``FULL`` fsyncs the WAL at every commit: an acknowledged row survives power loss too, at the
  cost of one fsync per commit group (0.2-4 ms measured on a shared disk, against 0.1 ms for the
  rest of an append; see benchmarks/RESULTS.md "Serve").

Group commit: concurrent appends share one transaction and one fsync. Each append queues its row;
whichever caller holds the writer lock commits everything queued at that moment (its own row
included) and marks those rows done; a caller whose row was committed by another returns without
touching the database. So every append still returns only after its own row's commit, and N
concurrent appends cost about one fsync instead of N. A duplicate request id fails only its own
row (SQLite aborts the statement, not the transaction). A group of one row is a single
autocommitted INSERT (one statement instead of BEGIN, INSERT, COMMIT).

Checkpoints run off the request path. SQLite's automatic checkpoint copies the WAL back into
the database file (about 1,000 pages, with an fsync even under ``NORMAL``) inside whichever
commit crosses the threshold, so one request in a few hundred paid several milliseconds. The
writer connection has automatic checkpoints off; a daemon thread with its own connection runs
a ``PASSIVE`` checkpoint (it never blocks the writer) after every ``CHECKPOINT_ROWS`` appended
rows, and ``close`` runs a last one. If the process dies first, the WAL is simply longer: the
next open reads it, nothing is lost.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["CHECKPOINT_ROWS", "SYNCHRONOUS", "SQLiteBackend"]

SYNCHRONOUS = ("NORMAL", "FULL")
CHECKPOINT_ROWS = 256
"""Rows appended between two background checkpoints (a few MiB of WAL at most)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL,
    api_key TEXT
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END;
"""


@dataclasses.dataclass(eq=False)
class _Pending:
    """One queued row and what became of it."""

    row: tuple[str, str, str, str | None, str]
    done: bool = False
    error: BaseException | None = None


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns that logs created by earlier versions lack."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    if columns and "api_key" not in columns:
        conn.execute("ALTER TABLE audit ADD COLUMN api_key TEXT")


class SQLiteBackend:
    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        level = synchronous.upper()
        if level not in SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {SYNCHRONOUS} (NORMAL survives a killed process, "
                f"FULL also an OS crash or power loss), got {synchronous!r}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # owner-only: records hold predictions and decisions
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self._lock = threading.Lock()  # the writer: held while one group is committed
        self._queued_lock = threading.Lock()
        self._queued: list[_Pending] = []
        try:
            conn = sqlite3.connect(
                str(path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigurationError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={level}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            _migrate(conn)
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ConfigurationError(f"cannot open audit log {path}: {err}") from err
        self._conn = conn
        self._level = level
        self._rows_since_checkpoint = 0
        self._checkpoint_due = threading.Event()
        self._closing = False
        self._checkpointer: threading.Thread | None = None
        self.checkpoints = 0  # background checkpoints run (observability, tests)

    def append(
        self, request_id: str, time: str, outcome: str, api_key: str | None, record: str
    ) -> None:
        pending = _Pending((request_id, time, outcome, api_key, record))
        with self._queued_lock:
            self._queued.append(pending)
        with self._lock:
            if not pending.done:  # nobody committed it while we waited: commit the group
                with self._queued_lock:
                    group, self._queued = self._queued, []
                self._commit(group)
        if pending.error is not None:
            raise pending.error

    def _commit(self, group: list[_Pending]) -> None:
        """Insert ``group`` in one transaction (one fsync); mark each row done or failed."""
        if len(group) == 1:
            self._commit_one(group[0])
        else:
            self._commit_group(group)
        self._rows_since_checkpoint += len(group)
        if self._rows_since_checkpoint >= CHECKPOINT_ROWS:
            self._rows_since_checkpoint = 0
            self._wake_checkpointer()

    def _insert(self, pending: _Pending) -> None:
        """INSERT one row; a duplicate request id is that row's error, not the group's."""
        try:
            self._conn.execute(
                "INSERT INTO audit (request_id, time, outcome, api_key, record) "
                "VALUES (?, ?, ?, ?, ?)",
                pending.row,
            )
        except sqlite3.IntegrityError:
            pending.error = InputValidationError(
                f"request id {pending.row[0]!r} is already in the audit log; ids must be unique"
            )

    def _commit_one(self, pending: _Pending) -> None:
        """One autocommitted INSERT: the same transaction as a group of one, in one statement."""
        try:
            self._insert(pending)
        except BaseException as err:
            pending.error = err
            if not isinstance(err, Exception):
                raise
        finally:
            pending.done = True

    def _commit_group(self, group: list[_Pending]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for pending in group:
                self._insert(pending)
            self._conn.execute("COMMIT")
        except BaseException as err:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            for pending in group:
                pending.error = pending.error or err
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt and the like are not swallowed
        finally:
            for pending in group:
                pending.done = True

    def records(
        self, since: str | None, limit: int | None, api_key: str | None = None
    ) -> Iterator[str]:
        sql, where, args = "SELECT record FROM audit", [], []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if api_key is not None:
            where.append("api_key = ?")
            args.append(api_key)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        # a fresh read-only connection: readers never wait on the writer's lock in WAL mode
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        reader = sqlite3.connect(uri, uri=True, timeout=30.0)
        try:
            for (text,) in reader.execute(sql, args):
                yield text
        finally:
            reader.close()

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    def _wake_checkpointer(self) -> None:
        if self._checkpointer is None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="bastion-audit-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._checkpoint_due.set()

    def _checkpoint_loop(self) -> None:
        """Checkpoint the WAL whenever asked, on a connection of its own (never the writer's)."""
        conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA synchronous={self._level}")
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                if self._closing:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.DatabaseError:  # busy or failing: the WAL just waits longer
                    pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the checkpointer, checkpoint what is left and close the connection."""
        self._closing = True
        if self._checkpointer is not None:
            self._checkpoint_due.set()
            self._checkpointer.join(30)
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.DatabaseError:
                pass
            self._conn.close()
