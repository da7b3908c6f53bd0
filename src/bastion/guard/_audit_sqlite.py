"""SQLite backend of the audit log: WAL, append-only triggers, rows acknowledged from a pending
file and moved into the table in batches off the request path.

The table, its triggers and its migrations: :mod:`bastion.guard._audit_schema`.

The append path. ``append`` checks the request id is new (not waiting in this process, not in
the table: one indexed lookup, skipped for an id the caller minted from a random UUID:
``fresh_id``), writes the row to this process's pending file
(:mod:`bastion.guard._audit_pending`) with one ``write()`` and returns. A daemon thread (the
ingester) takes the rows written so far every ``INGEST_INTERVAL`` seconds, inserts them in one
transaction, and deletes a pending file once every row in it is in the table; it also runs a
``PASSIVE`` WAL checkpoint every ``CHECKPOINT_ROWS`` rows, so no request ever pays for a
checkpoint. Readers through :class:`~bastion.guard.audit_log.AuditLog` (``rows``, ``len``,
``export_jsonl``) first wait for the rows written so far; a process reading the database file
directly sees rows at most a few ``INGEST_INTERVAL`` late. If the process dies, the next open
replays its pending file (rows already in the table are recognised by their request id), so
every acknowledged row ends up in the table: copy the pending files along with the database.

Why: one autocommitted INSERT writes three B-tree pages (the table, the request-id index, the
time index) to the WAL, 60-130 µs on a server's request path; the pending frame costs 10-30 µs.

Durability (``synchronous``). With either level an acknowledged row has been written to the
kernel with ``write()``, so it survives the death of the process, ``kill -9`` included.

- ``NORMAL`` (the default) syncs nothing on the request path: after an OS crash or a power loss
  the last rows may be missing; the database is never corrupted.
- ``FULL`` ``fdatasync``s the pending file before an append returns (and the table's commits,
  off the request path): an acknowledged row survives power loss too, at the cost of one sync
  per append group (0.2-4 ms measured on a shared disk; see benchmarks/RESULTS.md "Serve").

Group write: concurrent appends share one ``write()`` and one sync. Each append queues its row;
whichever caller holds the writer lock writes everything queued at that moment (its own row
included) and marks those rows done; a caller whose row was written by another returns without
touching the file. A duplicate request id fails only its own append, before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.priority import lower_this_thread
from bastion.guard._audit_pending import PendingFile, Row, frame, orphans, read_rows
from bastion.guard._audit_schema import INSERT_CHUNK, SCHEMA, connect, insert_sql, migrate

__all__ = ["CHECKPOINT_ROWS", "INGEST_INTERVAL", "ROTATE_BYTES", "SYNCHRONOUS", "SQLiteBackend"]

SYNCHRONOUS = ("NORMAL", "FULL")
CHECKPOINT_ROWS = 256
"""Rows moved into the table between two WAL checkpoints (a few MiB of WAL at most)."""
INGEST_INTERVAL = 0.1
"""Seconds the ingester lets rows gather before it moves them in (fewer, larger transactions)."""
ROTATE_BYTES = 1 << 20
"""A pending file takes no new rows past this size; it is deleted once its rows are in."""
FLUSH_TIMEOUT = 60.0
"""Seconds a reader waits for the rows written so far to reach the table."""

_log = logging.getLogger("bastion.audit")

@dataclasses.dataclass(eq=False)
class _Pending:
    """One queued row, its frame, and what became of it."""

    row: Row
    data: bytes
    done: bool = False
    error: BaseException | None = None


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
        self._level = level
        try:
            conn = connect(path)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigurationError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={level}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the ingester checkpoints
            migrate(conn)
            conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ConfigurationError(f"cannot open audit log {path}: {err}") from err
        self._conn = conn  # the writer: the ingester's (and recovery's, before it starts)
        self._lookups = threading.local()  # duplicate checks: one connection per thread
        self._lookup_conns: list[sqlite3.Connection] = []
        self.conflicts = 0  # rows whose id another writer stored with other content
        self.checkpoints = 0  # checkpoints run (observability, tests)
        self._rows_since_checkpoint = 0
        self._recover()
        self._lock = threading.Lock()  # the pending-file writer: held while one group is written
        self._queued_lock = threading.Lock()  # everything below
        self._queued: list[_Pending] = []
        self._unindexed: set[str] = set()  # acknowledged ids not yet in the table
        self._to_ingest: list[Row] = []
        self._written = 0  # rows acknowledged by this backend
        self._ingested = 0  # of those, rows in the table
        self._file: PendingFile | None = None
        self._sealed: list[tuple[int, PendingFile]] = []  # (rows written when sealed, file)
        self._progress = threading.Condition()
        self._due = threading.Event()
        self._hurry = threading.Event()
        self._closing = False
        self._closed = False
        self._ingester: threading.Thread | None = None

    def append(
        self, request_id: str, time: str, outcome: str, api_key: str | None, record: str,
        *, fresh_id: bool = False,
    ) -> None:
        row: Row = (request_id, time, outcome, api_key, record)
        try:
            pending = _Pending(row, frame(row))
        except UnicodeEncodeError as err:  # refused here: the table could never take it
            i = next(i for i, v in enumerate(row) if v is not None and _unencodable(v))
            name = ("request id", "time", "outcome", "API key name", "record")[i]
            raise InputValidationError(
                f"the {name} {row[i]!r} is not valid Unicode (a lone surrogate at position "
                f"{err.start}); nothing was written"
            ) from err
        # The lookup runs outside the lock (it releases the interpreter lock; under load taking
        # that back can take a switch interval while every appender waits), redone under it if
        # rows reached the table meanwhile. A repeated fresh id would be caught on insert.
        if self._closing:
            raise ConfigurationError(f"audit log {self.path} is closed")
        seen = self._ingested
        in_table = False if fresh_id else self._in_table(request_id)
        with self._queued_lock:
            if self._closing:
                raise ConfigurationError(f"audit log {self.path} is closed")
            if not in_table and not fresh_id and self._ingested != seen:
                in_table = self._in_table(request_id)
            if in_table or request_id in self._unindexed:
                raise InputValidationError(
                    f"request id {request_id!r} is already in the audit log; ids must be unique"
                )
            self._unindexed.add(request_id)
            self._queued.append(pending)
        with self._lock:
            if not pending.done:  # nobody wrote it while we waited: write the group
                with self._queued_lock:
                    group, self._queued = self._queued, []
                self._commit(group)
        if pending.error is not None:
            raise pending.error

    def _in_table(self, request_id: str) -> bool:
        conn: sqlite3.Connection | None = getattr(self._lookups, "conn", None)
        if conn is None:
            conn = self._lookups.conn = connect(self.path)
            with self._queued_lock:
                self._lookup_conns.append(conn)
        return conn.execute(
            "SELECT 1 FROM audit WHERE request_id = ?", (request_id,)
        ).fetchone() is not None

    def _commit(self, group: list[_Pending]) -> None:
        """Write ``group`` to the pending file with one ``write()`` (one sync); mark each done."""
        try:
            if self._file is None or self._file.size >= ROTATE_BYTES:
                self._rotate()
            assert self._file is not None
            self._file.write([p.data for p in group])
        except BaseException as err:
            self._rotate(broken=True)  # a failed write may have left half a frame behind
            with self._queued_lock:
                for p in group:
                    self._unindexed.discard(p.row[0])
                    p.error = err
            if not isinstance(err, Exception):
                raise
        else:
            with self._queued_lock:
                self._to_ingest.extend(p.row for p in group)
                self._written += len(group)
            self._wake()
        finally:
            for p in group:
                p.done = True

    def _rotate(self, broken: bool = False) -> None:
        """Seal the current pending file (deleted once its rows are in) and, unless it broke,
        open the next one now (otherwise at the next write)."""
        with self._queued_lock:
            if self._file is not None:
                self._sealed.append((self._written, self._file))
                self._file = None
        if not broken:
            file = PendingFile(self.path, sync=self._level == "FULL")
            with self._queued_lock:
                self._file = file

    def _wake(self) -> None:
        if self._ingester is None:
            with self._queued_lock:
                if self._ingester is None:
                    self._ingester = threading.Thread(
                        target=self._ingest_loop, name="bastion-audit-ingest", daemon=True
                    )
                    self._ingester.start()
        if not self._due.is_set():  # (an Event.set takes its condition's lock every time)
            self._due.set()

    def _ingest_loop(self) -> None:
        """Move the written rows into the table, in batches, until closed."""
        lower_this_thread()  # the requests first: the batches can wait
        while True:
            self._due.wait()
            self._hurry.wait(INGEST_INTERVAL)  # let rows gather, unless a reader waits
            self._hurry.clear()
            self._due.clear()
            with self._queued_lock:
                batch, self._to_ingest = self._to_ingest, []
                closing = self._closing
            if batch:
                try:
                    self._insert(batch)
                except Exception:  # the disk, or another process holding the database
                    _log.exception("audit log %s: moving %d rows into the table failed; "
                                   "they stay in the pending file", self.path, len(batch))
                    with self._queued_lock:
                        self._to_ingest[:0] = batch
                    self._due.set()
                    self._hurry.wait(1.0)
                    continue
                self._done(batch)
            if closing and not batch:
                return

    def _done(self, batch: Sequence[Row]) -> None:
        with self._queued_lock:
            self._ingested += len(batch)
            for row in batch:
                self._unindexed.discard(row[0])
            finished = [f for n, f in self._sealed if n <= self._ingested]
            self._sealed = [(n, f) for n, f in self._sealed if n > self._ingested]
        for file in finished:  # with a conflict, kept on disk for a person to look at
            file.close() if self.conflicts else file.remove()
        with self._progress:
            self._progress.notify_all()
        self._rows_since_checkpoint += len(batch)
        if self._rows_since_checkpoint >= CHECKPOINT_ROWS:
            self._rows_since_checkpoint = 0
            self._checkpoint()

    def _insert(self, rows: Sequence[Row]) -> None:
        """Insert ``rows`` in one transaction; a row whose id is already stored is skipped when
        it is the same row (a replay), logged as a conflict otherwise."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(rows), INSERT_CHUNK):
                chunk = rows[i : i + INSERT_CHUNK]
                inserted = conn.execute(insert_sql(len(chunk)), [v for r in chunk for v in r])
                if inserted.rowcount == len(chunk):
                    continue
                for row in chunk:  # some ids were stored already: replays, or conflicts?
                    stored = conn.execute(
                        "SELECT record FROM audit WHERE request_id = ?", (row[0],)
                    ).fetchone()
                    if stored is None or stored[0] != row[4]:
                        self.conflicts += 1
                        _log.error("audit log %s: request id %r is stored with another record; "
                                   "the pending files are kept", self.path, row[0])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _checkpoint(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
        except sqlite3.DatabaseError:  # busy or failing: the WAL just waits longer
            pass

    def _recover(self) -> None:
        """Replay the pending files that dead writers left behind, then delete them."""
        with orphans(self.path) as files:
            for file in files:
                rows, torn = read_rows(file)
                if torn:
                    _log.warning("audit log %s: %d bytes at the end of %s were not a whole "
                                 "row (a write cut short, never acknowledged); skipped",
                                 self.path, torn, file.name)
                before = self.conflicts
                try:
                    self._insert(rows)
                except sqlite3.DatabaseError as err:
                    raise ConfigurationError(
                        f"cannot replay {file} into audit log {self.path}: {err}"
                    ) from err
                if self.conflicts == before:
                    file.unlink()

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Wait until every row appended so far is in the table."""
        with self._queued_lock:
            target = self._written
        if self._ingested >= target:
            return
        self._due.set()
        self._hurry.set()
        with self._progress:
            if not self._progress.wait_for(lambda: self._ingested >= target, timeout):
                raise TimeoutError(
                    f"audit log {self.path}: {target - self._ingested} acknowledged rows did "
                    f"not reach the table within {timeout:.0f} s (they are safe in the pending "
                    "file and are replayed when the log is next opened)"
                )

    def records(
        self, since: str | None, limit: int | None, api_key: str | None = None
    ) -> Iterator[str]:
        self.flush()
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
        reader = self._reader()
        try:
            for (text,) in reader.execute(sql, args):
                yield text
        finally:
            reader.close()

    def count(self) -> int:
        self.flush()
        reader = self._reader()  # not the lookup connection: a count scans the whole table
        try:
            return int(reader.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
        finally:
            reader.close()

    def _reader(self) -> sqlite3.Connection:
        """A fresh read-only connection: readers never wait on the writer in WAL mode."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=30.0)

    def close(self) -> None:
        """Move every written row into the table, checkpoint, close; delete the pending files
        (kept when the rows could not be moved: the next open replays them). Closing twice
        does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            moved = True
        except TimeoutError:
            _log.exception("audit log %s: closing with rows still pending", self.path)
            moved = False
        with self._lock:  # no group is being written
            with self._queued_lock:
                self._closing = True
                ingester = self._ingester
            self._due.set()
            self._hurry.set()
            if ingester is not None:
                ingester.join(30)
            files = [f for _, f in self._sealed] + ([self._file] if self._file else [])
            for file in files:
                if moved and not self.conflicts:
                    file.remove()
                else:
                    file.close()
            self._checkpoint()
            self._conn.close()
            with self._queued_lock:
                for conn in self._lookup_conns:
                    conn.close()


def _unencodable(text: str) -> bool:
    return not text.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in text)  # a surrogate
