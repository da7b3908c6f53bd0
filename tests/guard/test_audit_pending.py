"""The audit log's pending files: acknowledged rows survive until they are in the table."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bastion.guard._audit_sqlite as backend_module
from bastion.core.errors import InputValidationError
from bastion.guard._audit_pending import MAGIC, PendingFile, Row, frame, read_rows
from bastion.guard._json_text import JsonText
from bastion.guard.audit_log import AuditLog, AuditRecord


def _pending(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.pending-*"))


def _append_all(log: AuditLog, ids: list[str], **fields: object) -> None:
    for rid in ids:
        log.append(AuditRecord.create(inputs=b"x", request_id=rid, **fields))  # type: ignore[arg-type]


def _table_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM audit ORDER BY seq")]
    finally:
        conn.close()


_rows = st.lists(
    st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=6), st.sampled_from(["answered",
              "refused"]), st.none() | st.text(max_size=4), st.text(max_size=40)),
    max_size=6,
)


@settings(max_examples=120, deadline=None)
@given(rows=_rows, cut=st.integers(min_value=0), flip=st.integers(min_value=0))
def test_frames_round_trip_and_a_damaged_tail_yields_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, rows: list[Row], cut: int, flip: int
) -> None:
    path = tmp_path_factory.mktemp("frames") / "p"
    data = MAGIC + b"".join(frame(r) for r in rows)
    path.write_bytes(data)
    assert read_rows(path) == (rows, 0)
    # cut anywhere: the whole frames before the cut, never an error
    cut_at = cut % (len(data) + 1)
    path.write_bytes(data[:cut_at])
    got, torn = read_rows(path)
    assert got == rows[: len(got)]
    assert torn == 0 or cut_at < len(data)
    # flip one byte after the magic: a prefix again (the CRC catches the damaged frame)
    if len(data) > len(MAGIC):
        i = len(MAGIC) + flip % (len(data) - len(MAGIC))
        damaged = bytearray(data)
        damaged[i] ^= 0x5A
        path.write_bytes(bytes(damaged))
        got, _ = read_rows(path)
        assert got == rows[: len(got)] and len(got) < len(rows)


_CHILD = """
import sys, time
import bastion.guard._audit_sqlite as S
S.INGEST_INTERVAL = 3600.0  # the ingester never gets to run: rows stay pending
from bastion.guard._json_text import JsonText
from bastion.guard.audit_log import AuditLog, AuditRecord
log = AuditLog.open(sys.argv[1])
for i in range(50):
    log.append(AuditRecord.create(inputs=b"x", request_id=f"k{i}", prediction=[i]))
print("acked", flush=True)
time.sleep(600)
"""


def test_rows_acknowledged_before_a_kill_are_replayed_from_the_pending_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "acked", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    files = _pending(path)
    assert len(files) == 1 and len(read_rows(files[0])[0]) == 50
    assert _table_ids(path) == []  # only the pending file holds them
    with AuditLog.open(path) as log:
        assert [r.request_id for r in log.rows()] == [f"k{i}" for i in range(50)]
        assert log.rows()[7].prediction == [7]
    assert _pending(path) == []  # replayed, then deleted


def test_a_torn_tail_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.db"
    AuditLog.open(path).close()
    rows = [(f"t{i}", "2026-01-01T00:00:00.000+00:00", "answered", None,
             AuditRecord.create(inputs=b"x", request_id=f"t{i}").stored_text())
            for i in range(3)]
    whole = MAGIC + frame(rows[0]) + frame(rows[1])
    (tmp_path / "audit.db.pending-1-dead").write_bytes(whole + frame(rows[2])[:-5])
    with caplog.at_level(logging.WARNING, logger="bastion.audit"), AuditLog.open(path) as log:
        assert [r.request_id for r in log.rows()] == ["t0", "t1"]
    assert "were not a whole row" in caplog.text
    assert _pending(path) == []


def test_replay_skips_rows_already_in_the_table_and_keeps_a_conflicting_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.db"
    with AuditLog.open(path) as log:
        log.append(AuditRecord.create(inputs=b"x", request_id="same", prediction=[1]))
        stored = log.rows()[0].stored_text()
    same = ("same", "t", "answered", None, stored)
    (tmp_path / "audit.db.pending-1-a").write_bytes(MAGIC + frame(same))
    with AuditLog.open(path) as log:  # a replay of a row that made it: nothing new, no conflict
        assert len(log) == 1 and log._backend.conflicts == 0
    assert _pending(path) == []
    other = ("same", "t", "answered", None, stored.replace("[1]", "[2]"))
    (tmp_path / "audit.db.pending-1-b").write_bytes(MAGIC + frame(other))
    with caplog.at_level(logging.ERROR, logger="bastion.audit"), AuditLog.open(path) as log:
        assert log._backend.conflicts == 1 and len(log) == 1
    assert "stored with another record" in caplog.text
    assert [p.name for p in _pending(path)] == ["audit.db.pending-1-b"]  # kept for a person


def test_a_live_writers_file_is_never_taken_for_an_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "INGEST_INTERVAL", 3600.0)
    path = tmp_path / "audit.db"
    writer = AuditLog.open(path)
    _append_all(writer, [f"w{i}" for i in range(5)])
    (mine,) = _pending(path)
    other = AuditLog.open(path)  # a second opener (same process: flock still excludes it)
    assert mine.exists() and len(other) == 0  # not replayed, not deleted
    other.close()
    writer.close()  # moves them in, then deletes its file
    assert _table_ids(path) == [f"w{i}" for i in range(5)] and _pending(path) == []


def test_files_rotate_and_are_deleted_once_their_rows_are_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "ROTATE_BYTES", 2_000)
    path = tmp_path / "audit.db"
    log = AuditLog.open(path)
    _append_all(log, [f"r{i}" for i in range(40)], prediction=list(range(20)))
    assert len(log) == 40  # waits for the ingester
    assert len(_pending(path)) == 1  # every sealed file deleted, the current one open
    log.close()
    assert _pending(path) == []
    with AuditLog.open(path) as again:
        assert [r.request_id for r in again.rows()] == [f"r{i}" for i in range(40)]


def test_a_failed_write_refuses_the_append_and_frees_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog.open(path)
    log.append(AuditRecord.create(inputs=b"x", request_id="before"))
    real = PendingFile.write

    def full_disk(self: PendingFile, rows: list[bytes]) -> None:
        os.write(self.fd, rows[0][:7])  # half a frame reaches the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PendingFile, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        log.append(AuditRecord.create(inputs=b"x", request_id="lost"))
    monkeypatch.setattr(PendingFile, "write", real)
    log.append(AuditRecord.create(inputs=b"x", request_id="lost"))  # the id was not taken
    log.append(AuditRecord.create(inputs=b"x", request_id="after"))
    with pytest.raises(InputValidationError):
        log.append(AuditRecord.create(inputs=b"x", request_id="after"))
    assert [r.request_id for r in log.rows()] == ["before", "lost", "after"]
    log.close()
    assert _pending(path) == []


def test_full_syncs_each_append_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    def counted(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    with AuditLog.open(tmp_path / "full.db", synchronous="FULL") as log:
        log.append(AuditRecord.create(inputs=b"x", request_id="a"))
        first = len(synced)
        log.append(AuditRecord.create(inputs=b"x", request_id="b"))
        assert len(synced) == first + 1  # one sync before the append returned
    synced.clear()
    with AuditLog.open(tmp_path / "normal.db") as log:
        log.append(AuditRecord.create(inputs=b"x", request_id="a"))
        log.append(AuditRecord.create(inputs=b"x", request_id="b"))
        assert synced == []  # NORMAL: nothing synced on the append path


def test_a_row_reaching_the_table_during_the_id_check_is_still_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id lookup runs outside the append lock; when the ingester moves the same id into the
    table between that lookup and the lock, the append must still be refused."""
    monkeypatch.setattr(backend_module, "INGEST_INTERVAL", 3600.0)
    log = AuditLog.open(tmp_path / "audit.db")
    backend = log._backend
    log.append(AuditRecord.create(inputs=b"x", request_id="x"))  # pending, not in the table
    real = backend._in_table
    raced: list[str] = []

    def racing(rid: str) -> bool:
        found = bool(real(rid))
        if not raced:  # the ingester finishes right after this first lookup
            raced.append(rid)
            backend.flush()
        return found

    monkeypatch.setattr(backend, "_in_table", racing)
    with pytest.raises(InputValidationError, match="already in the audit log"):
        log.append(AuditRecord.create(inputs=b"y", request_id="x"))
    assert raced == ["x"] and len(log) == 1
    log.close()
    with pytest.raises(Exception, match="closed"):
        log.append(AuditRecord.create(inputs=b"z", request_id="z"))


def test_a_field_that_is_not_unicode_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog.open(path)
    with pytest.raises(InputValidationError, match=r"request id 'bad\\ud800' is not valid"):
        log.append(AuditRecord.create(inputs=b"x", request_id="bad\ud800"))
    with pytest.raises(InputValidationError, match="API key name"):
        log.append(AuditRecord.create(inputs=b"x", request_id="k", api_key="\udfff"))
    log.append(AuditRecord.create(inputs=b"x", request_id="k"))  # the id was not taken
    assert [r.request_id for r in log.rows()] == ["k"]  # and the ingester was not wedged
    log.close()
    assert _pending(path) == []


def _answered(log: AuditLog, rid: str, prediction: int, *, fresh_id: bool) -> None:
    log.append_answered(inputs=b"x", request_id=rid, api_key=None, validation=None,
                        prediction=JsonText.of_ints([prediction]), checks=None, monitors=None,
                        fresh_id=fresh_id)


def test_a_fresh_id_skips_the_table_lookup_and_a_repeat_is_still_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server mints every request id from a random UUID and says so (``fresh_id``): no
    index lookup per request. Ids still pending are checked in memory, and the impossible repeat
    of a stored id is caught when the row moves in: the stored row stays, the file is kept."""
    monkeypatch.setattr(backend_module, "INGEST_INTERVAL", 3600.0)
    path = tmp_path / "audit.db"
    log = AuditLog.open(path)
    backend = log._backend
    _answered(log, "stored", 1, fresh_id=False)
    assert len(log) == 1  # in the table now
    lookups: list[str] = []
    real = backend._in_table
    monkeypatch.setattr(backend, "_in_table", lambda rid: lookups.append(rid) or real(rid))
    _answered(log, "new", 2, fresh_id=True)
    assert lookups == []
    with pytest.raises(InputValidationError, match="already in the audit log"):
        _answered(log, "new", 3, fresh_id=True)  # still pending: refused without a lookup
    with pytest.raises(InputValidationError, match="already in the audit log"):
        _answered(log, "stored", 4, fresh_id=False)  # not fresh: looked up, refused
    assert lookups == ["stored"]
    _answered(log, "stored", 5, fresh_id=True)  # a caller that lied about its id
    with caplog.at_level(logging.ERROR, logger="bastion.audit"):
        assert len(log) == 2
    assert backend.conflicts == 1 and "stored with another record" in caplog.text
    assert [r.prediction for r in log.rows()] == [[1], [2]]  # the stored row is untouched
    log.close()
    assert len(_pending(path)) == 1  # kept for a person


def test_batched_inserts_judge_every_row_of_every_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows go into the table several per statement; when a statement skips some (their ids are
    stored), each of its rows is judged: a replay of the stored row, or a conflict."""
    monkeypatch.setattr(backend_module, "INSERT_CHUNK", 3)
    path = tmp_path / "audit.db"
    with AuditLog.open(path) as log:
        _append_all(log, ["r2", "r7"], prediction=[1])
        stored = {r.request_id: r.stored_text() for r in log.rows()}
    rows = [(f"r{i}", "t", "answered", None, stored.get(f"r{i}", f'{{"n": {i}}}'))
            for i in range(10)]
    rows[7] = ("r7", "t", "answered", None, stored["r7"].replace("[1]", "[2]"))  # a conflict
    (tmp_path / "audit.db.pending-1-a").write_bytes(MAGIC + b"".join(frame(r) for r in rows))
    with AuditLog.open(path) as log:
        assert log._backend.conflicts == 1
        assert sorted(_table_ids(path)) == sorted(f"r{i}" for i in range(10))
    conn = sqlite3.connect(path)
    try:  # the stored r7 is untouched
        assert conn.execute("SELECT record FROM audit WHERE request_id = 'r7'").fetchall() == [
            (stored["r7"],)]
    finally:
        conn.close()
    assert [p.name for p in _pending(path)] == ["audit.db.pending-1-a"]  # kept for a person
