"""SQLite backend of the audit log: WAL, synchronous=FULL, append-only triggers, one locked conn.

``synchronous=FULL`` in WAL mode fsyncs the WAL on every commit, so a record whose append
returned survives a process kill and a power loss; NORMAL would only survive the former.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["SQLiteBackend"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END;
"""


class SQLiteBackend:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # owner-only: records hold predictions and decisions
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(
                str(path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigurationError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ConfigurationError(f"cannot open audit log {path}: {err}") from err
        self._conn = conn

    def append(self, request_id: str, time: str, outcome: str, record: str) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO audit (request_id, time, outcome, record) VALUES (?, ?, ?, ?)",
                    (request_id, time, outcome, record),
                )
            except sqlite3.IntegrityError:
                self._conn.execute("ROLLBACK")
                raise InputValidationError(
                    f"request id {request_id!r} is already in the audit log; ids must be unique"
                ) from None
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def records(self, since: str | None, limit: int | None) -> Iterator[str]:
        sql, args = "SELECT record FROM audit", []
        if since is not None:
            sql += " WHERE time >= ?"
            args.append(since)
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

    def close(self) -> None:
        with self._lock:
            self._conn.close()
