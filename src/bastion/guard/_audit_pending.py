"""Acknowledged audit rows not yet in the SQLite table: append-only "pending" files.

An append writes its row here, in one ``write()`` (and an ``fdatasync`` under ``FULL``), and
returns: the row is then as durable as a committed SQLite row of the same level (in the kernel's
page cache: it survives ``kill -9``; synced: it survives power loss). A background thread moves
rows into the table in batches; a pending file is deleted only once every row in it is
committed there. Opening the log replays the files their writers left behind (crash or kill),
so a reader of :class:`~bastion.guard.audit_log.AuditLog` never misses an acknowledged row.

Why: an SQLite commit of one row costs 60-130 µs on a server's request path (three B-tree
pages written to the WAL per row), a frame here 10-30 µs; batched, the table costs less per
row too (see benchmarks/RESULTS.md "Serve").

Format: a 4-byte magic, then frames ``length (u32 LE) | CRC-32 of the payload (u32 LE) |
payload``. The payload is the row's five fields in UTF-8, each after its byte length (u32 LE;
``0xFFFFFFFF`` for an absent API key name): no escaping, the record being JSON text already.
A frame cut short by a crash mid ``write()`` (only possible for a write that never returned,
so for a row never acknowledged) or corrupted fails its length or CRC check: reading stops
there and reports the bytes it skipped.

Each writing process has its own file, ``<db>.pending-<pid>-<random>``, locked with ``flock``
while it is open: a file whose lock can be taken belongs to no live writer and is replayed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["MAGIC", "PendingFile", "Row", "frame", "orphans", "read_rows"]

Row = tuple[str, str, str, "str | None", str]  # request_id, time, outcome, api_key, record
MAGIC = b"BAP\x01"
_HEADER = struct.Struct("<II")
_MAX_FRAME = 1 << 30


_LENGTH = struct.Struct("<I")
_ABSENT = 0xFFFFFFFF


def frame(row: Row) -> bytes:
    """One row as a frame (length, CRC, payload).

    Raises:
        UnicodeEncodeError: a field is not valid Unicode (a lone surrogate), which neither this
            file nor SQLite can store.
    """
    parts = []
    for value in row:
        if value is None:
            parts.append(_LENGTH.pack(_ABSENT))
        else:
            data = value.encode("utf-8")
            parts += (_LENGTH.pack(len(data)), data)
    payload = b"".join(parts)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _fields(payload: bytes) -> Row | None:
    """The row in a payload, or None when it is not five well-formed fields."""
    values: list[str | None] = []
    offset = 0
    for _ in range(5):
        if offset + _LENGTH.size > len(payload):
            return None
        (length,) = _LENGTH.unpack_from(payload, offset)
        offset += _LENGTH.size
        if length == _ABSENT:
            values.append(None)
            continue
        if offset + length > len(payload):
            return None
        values.append(payload[offset:offset + length].decode("utf-8"))
        offset += length
    if offset != len(payload) or any(values[i] is None for i in (0, 1, 2, 4)):
        return None
    return (str(values[0]), str(values[1]), str(values[2]), values[3], str(values[4]))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingFile:
    """This process's pending file: created exclusive, owner-only, locked while open."""

    def __init__(self, db: Path, *, sync: bool) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = db.with_name(f"{db.name}.pending-{name}")
        self.sync = sync
        # Created under another name and locked before it is renamed into view: an opener that
        # finds a pending file it can lock may take it for an orphan and replay and delete it.
        creating = db.with_name(f"{db.name}.creating-{name}")
        self.fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                          | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._write_all(MAGIC)
            if sync:
                os.fdatasync(self.fd)
            os.rename(creating, self.path)
            if sync:  # the directory entry survives power loss before any row is acknowledged
                _fsync_dir(self.path.parent)
        except BaseException:
            os.close(self.fd)
            creating.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
            raise
        self.size = len(MAGIC)

    def write(self, rows: Sequence[bytes]) -> None:
        """Append frames with one ``write()`` (and one ``fdatasync`` when syncing)."""
        data = b"".join(rows)
        self._write_all(data)
        self.size += len(data)
        if self.sync:
            os.fdatasync(self.fd)

    def _write_all(self, data: bytes) -> None:
        written = os.write(self.fd, data)  # a regular file takes it all at once...
        view = memoryview(data)[written:]
        while view:  # ...unless the disk fills up
            written = os.write(self.fd, view)
            view = view[written:]

    def close(self) -> None:
        """Close, keeping the file (its rows are replayed when the log is next opened)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def remove(self) -> None:
        """Close and delete (only once every row in it is committed to the table)."""
        self.close()
        self.path.unlink(missing_ok=True)


def read_rows(path: Path) -> tuple[list[Row], int]:
    """The rows of a pending file, and how many bytes at its end were not whole frames."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        return [], len(data)
    rows: list[Row] = []
    offset = len(MAGIC)
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if length > _MAX_FRAME or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            row = _fields(data[start:end])
        except UnicodeDecodeError:
            row = None
        if row is None:
            break
        rows.append(row)
        offset = end
    return rows, len(data) - offset


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (raises OSError when a live writer holds it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def orphans(db: Path) -> Iterator[list[Path]]:
    """The pending files of ``db`` that no live writer holds, locked for the ``with`` block."""
    held: list[tuple[int, Path]] = []
    for path in db.parent.glob(f"{db.name}.creating-*"):  # died before its first row
        with contextlib.suppress(OSError), _locked(path):
            path.unlink()
    try:
        for path in sorted(db.parent.glob(f"{db.name}.pending-*")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # deleted meanwhile by its writer
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live writer (this process included) holds it
                os.close(fd)
                continue
            held.append((fd, path))
        yield [path for _, path in held]
    finally:
        for fd, _ in held:
            os.close(fd)
