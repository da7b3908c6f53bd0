"""PostgreSQL backend of the audit log, for several server replicas sharing one log.

Each replica opens its own :class:`PostgresBackend` (its own connection) on the same database;
rows from all of them interleave in one table, ordered by a sequence. Append-only is enforced by
a trigger that raises on UPDATE and DELETE. An append returns once its transaction committed
(with the server's default ``synchronous_commit=on``, after the WAL flush).

- The record is stored as the exact JSON text that was written (``TEXT``, not ``JSONB``: JSONB
  re-orders keys, re-formats numbers and refuses the escape ``\\u0000``, which a refusal reason
  may legitimately contain). Query it with ``record::jsonb``.
- Creating or migrating the table runs under a transaction-scoped advisory lock, so replicas that
  start together do not race (``CREATE OR REPLACE FUNCTION`` concurrently fails with "tuple
  concurrently updated"). Migrations: the ``api_key`` column is added to tables created before
  it existed, and a ``JSONB`` record column from the first version is converted to ``TEXT``.
- A connection lost between appends (a database restart, a failover) is re-opened once; if the
  retried insert finds its request id already there, the first attempt had committed.
- Reading (``rows``, ``export_jsonl``) streams through a separate connection with a server-side
  cursor, so an export of a large log neither holds the writers' lock nor loads every row.

Tested against a live server when ``BASTION_TEST_POSTGRES_URL`` is set
(``tests/guard/test_audit_postgres.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["PostgresBackend"]

_LOCK_ID = 0x62617374696F6E  # "bastion": the advisory lock taken while creating the table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bastion_audit (
    seq BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL,
    api_key TEXT
);
ALTER TABLE bastion_audit ADD COLUMN IF NOT EXISTS api_key TEXT;
CREATE INDEX IF NOT EXISTS bastion_audit_time ON bastion_audit (time);
CREATE INDEX IF NOT EXISTS bastion_audit_api_key ON bastion_audit (api_key);
CREATE OR REPLACE FUNCTION bastion_audit_refuse() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP; END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS bastion_audit_append_only ON bastion_audit;
CREATE TRIGGER bastion_audit_append_only BEFORE UPDATE OR DELETE ON bastion_audit
FOR EACH ROW EXECUTE FUNCTION bastion_audit_refuse();
"""

_JSONB_RECORD = """
SELECT data_type FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'bastion_audit' AND column_name = 'record'
"""

_INSERT = (
    "INSERT INTO bastion_audit (request_id, time, outcome, api_key, record) "
    "VALUES (%s, %s, %s, %s, %s)"
)


class PostgresBackend:
    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                "a postgresql:// audit log needs the psycopg driver: pip install 'psycopg[binary]' "
                "(or pip install 'bastion[postgres]')"
            ) from None
        self._psycopg: Any = psycopg
        self._url = url
        self._lock = threading.Lock()
        self._conn: Any = self._connect()
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                self._conn.execute(_SCHEMA)
                kind = self._conn.execute(_JSONB_RECORD).fetchone()
                if kind is not None and kind[0] == "jsonb":
                    self._conn.execute(
                        "ALTER TABLE bastion_audit ALTER COLUMN record TYPE TEXT USING record::text"
                    )
        except psycopg.Error as err:
            self._conn.close()
            raise ConfigurationError(f"cannot set up the audit table: {_first_line(err)}") from None

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self._url, autocommit=True)
        except self._psycopg.Error as err:
            raise ConfigurationError(
                f"cannot connect to the audit database: {_first_line(err)}"
            ) from None

    def append(
        self, request_id: str, time: str, outcome: str, api_key: str | None, record: str,
        *, fresh_id: bool = False,
    ) -> None:
        del fresh_id  # the insert itself refuses a repeat: there is no lookup to skip
        row = (request_id, time, outcome, api_key, record)
        psycopg = self._psycopg
        with self._lock:
            try:
                self._insert(row)
                return
            except psycopg.errors.UniqueViolation:
                raise _duplicate(request_id) from None
            except psycopg.OperationalError:
                if not (self._conn.broken or self._conn.closed):
                    raise  # the server refused the statement; the connection is fine
            self._conn = self._connect()  # the connection was lost: once more on a new one
            try:
                self._insert(row)
            except psycopg.errors.UniqueViolation:
                return  # the first attempt had committed before the connection dropped

    def _insert(self, row: tuple[str, str, str, str | None, str]) -> None:
        with self._conn.transaction():
            self._conn.execute(_INSERT, row)

    def records(
        self, since: str | None, limit: int | None, api_key: str | None = None
    ) -> Iterator[str]:
        sql, where, args = "SELECT record FROM bastion_audit", [], []
        if since is not None:
            where.append("time >= %s")
            args.append(since)
        if api_key is not None:
            where.append("api_key = %s")
            args.append(api_key)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        reader = self._psycopg.connect(self._url)  # a transaction: one consistent snapshot
        try:
            with reader.cursor(name="bastion_audit_export") as cursor:
                cursor.itersize = 1000
                cursor.execute(sql, args)
                for (text,) in cursor:
                    yield text
        finally:
            reader.close()

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM bastion_audit").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _duplicate(request_id: str) -> InputValidationError:
    return InputValidationError(
        f"request id {request_id!r} is already in the audit log; ids must be unique"
    )


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
