"""The audit table of the SQLite backend: its schema, its triggers and its migrations.

``seq`` is the rowid without ``AUTOINCREMENT`` (in logs created since): rows are never deleted
(the trigger refuses it), so the next rowid is always the largest plus one, in append order,
and no ``sqlite_sequence`` page has to be written with every row.

Migration: a log created before the ``api_key`` column existed gets it added (``ALTER TABLE ...
ADD COLUMN``, which rewrites nothing and fires no trigger); its old rows read as NULL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["INSERT_CHUNK", "SCHEMA", "connect", "insert_sql", "migrate"]

SCHEMA = """
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


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns that logs created by earlier versions lack."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    if columns and "api_key" not in columns:
        conn.execute("ALTER TABLE audit ADD COLUMN api_key TEXT")


def connect(path: Path) -> sqlite3.Connection:
    """A connection any thread may use (the backend serialises its own use of each)."""
    return sqlite3.connect(str(path), timeout=30.0, isolation_level=None,
                           check_same_thread=False)


INSERT_CHUNK = 150
"""Rows per INSERT statement: 750 bound values, under the 999 of SQLite builds before 3.32."""


def insert_sql(rows: int) -> str:
    """One ``INSERT OR IGNORE`` of ``rows`` rows ``(request_id, time, outcome, api_key,
    record)``: one statement per batch, not one per row (each statement is a round trip through
    the interpreter lock, which the requests in flight are waiting for)."""
    return ("INSERT OR IGNORE INTO audit (request_id, time, outcome, api_key, record) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * rows))
