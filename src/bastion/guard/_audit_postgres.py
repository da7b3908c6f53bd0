"""PostgreSQL backend of the audit log, for several server replicas sharing one log.

Append-only is enforced by a trigger that raises on UPDATE and DELETE. Not exercised by the test
suite (it needs a running server); the URL handling and the missing-driver error are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from bastion.core.errors import ConfigurationError

__all__ = ["PostgresBackend"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bastion_audit (
    seq BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS bastion_audit_time ON bastion_audit (time);
CREATE OR REPLACE FUNCTION bastion_audit_refuse() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP; END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS bastion_audit_append_only ON bastion_audit;
CREATE TRIGGER bastion_audit_append_only BEFORE UPDATE OR DELETE ON bastion_audit
FOR EACH ROW EXECUTE FUNCTION bastion_audit_refuse();
"""


class PostgresBackend:
    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                "a postgresql:// audit log needs the psycopg driver: pip install 'psycopg[binary]'"
            ) from None
        try:
            self._conn: Any = psycopg.connect(url, autocommit=True)
        except psycopg.Error as err:
            raise ConfigurationError(f"cannot connect to the audit database: {err}") from None
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(_SCHEMA)

    def append(self, request_id: str, time: str, outcome: str, record: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute(
                "INSERT INTO bastion_audit (request_id, time, outcome, record) "
                "VALUES (%s, %s, %s, %s)",
                (request_id, time, outcome, record),
            )

    def records(self, since: str | None, limit: int | None) -> Iterator[str]:
        sql, args = "SELECT record::text FROM bastion_audit", []
        if since is not None:
            sql += " WHERE time >= %s"
            args.append(since)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        for (text,) in rows:
            yield text

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM bastion_audit").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
