"""Audit log: round trip, append-only, threads, and no acknowledged record lost to kill -9."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.audit_log import AuditLog, AuditRecord, Outcome, digest_input
from bastion.guard.monitors import MonitorResult


def _record(i: int, **kw: object) -> AuditRecord:
    return AuditRecord.create(inputs=torch.full((2, 3), float(i)), request_id=f"req-{i}", **kw)


def test_digest_is_canonical_and_never_the_input() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert digest_input(x) == digest_input(x.t().contiguous().t())  # layout does not matter
    assert digest_input(x) == digest_input(x.numpy().astype(">f4"))  # nor byte order
    assert digest_input(x) != digest_input(x.double())  # dtype does
    assert digest_input(x) != digest_input(x.reshape(3, 2))  # shape does
    assert digest_input(b"abc") == digest_input("abc") != digest_input(b"abd")
    assert len(digest_input(x)) == 64


def test_append_read_filter_and_export(tmp_path: Path) -> None:
    monitor = MonitorResult(
        name="ks",
        statistic=float("nan"),
        threshold=1.0,
        p_value=None,
        alarm=False,
        evaluated=False,
        samples_seen=3,
    )
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append(_record(0, prediction=[1, 2], checks={"finite": True}, monitors=[monitor]))
        time.sleep(0.01)
        cut = dt.datetime.now(dt.timezone.utc)
        time.sleep(0.01)
        log.append(
            _record(
                1,
                outcome=Outcome.REFUSED,
                reason="schema: value out of range",
                validation={"ok": False},
            )
        )
        log.append(_record(2, prediction=np.int64(7)))
        rows = log.rows()
        assert [r.request_id for r in rows] == ["req-0", "req-1", "req-2"]
        assert rows[0].monitors[0]["name"] == "ks" and rows[0].monitors[0]["statistic"] is None
        assert rows[1].outcome is Outcome.REFUSED and rows[1].reason.startswith("schema")
        assert rows[2].prediction == 7
        assert rows[0].input_digest == digest_input(torch.zeros(2, 3))
        assert [r.request_id for r in log.rows(since=cut)] == ["req-1", "req-2"]
        assert [r.request_id for r in log.rows(limit=1)] == ["req-0"]
        assert len(log) == 3
        with pytest.raises(InputValidationError, match="already"):
            log.append(_record(2))
        n = log.export_jsonl(tmp_path / "out" / "audit.jsonl")
    lines = (tmp_path / "out" / "audit.jsonl").read_text().splitlines()
    assert n == 3 and [json.loads(t)["request_id"] for t in lines] == ["req-0", "req-1", "req-2"]
    assert AuditRecord.from_dict(json.loads(lines[1])) == rows[1]
    with pytest.raises(ConfigurationError, match="timezone"):
        AuditLog.open(tmp_path / "audit.db").rows(since=dt.datetime(2020, 1, 1))


def test_append_only_is_enforced_by_the_database(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog.open(path) as log:
        log.append(_record(0))
    assert path.stat().st_mode & 0o077 == 0  # owner-only
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE"):
        conn.execute("UPDATE audit SET outcome = 'refused'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE"):
        conn.execute("DELETE FROM audit")
    conn.close()
    assert not hasattr(AuditLog, "delete") and not hasattr(AuditLog, "update")
    with AuditLog.open(f"sqlite:///{path}") as log:
        assert [r.request_id for r in log.rows()] == ["req-0"]
        assert log._backend._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert log._backend._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.db")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(25):
                log.append(AuditRecord.create(inputs=b"x", request_id=f"t{t}-{i}"))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [r.request_id for r in log.rows()]
    assert len(ids) == 200 and set(ids) == {f"t{t}-{i}" for t in range(8) for i in range(25)}
    log.close()


def test_urls_and_missing_driver(tmp_path: Path) -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match=r"pip install 'psycopg\[binary\]'"):
            AuditLog.open("postgresql://bastion@db.invalid/audit")
    else:  # the driver is there: an unreachable server is a clear configuration error
        with pytest.raises(ConfigurationError, match="cannot connect"):
            AuditLog.open("postgresql://bastion@127.0.0.1:1/audit?connect_timeout=2")
    with pytest.raises(ConfigurationError, match="unsupported audit log URL scheme 'mysql'"):
        AuditLog.open("mysql://x@y/z")
    with pytest.raises(ConfigurationError, match="sqlite:///"):
        AuditLog.open("sqlite://relative.db")


def test_a_path_given_to_the_constructor_is_refused_at_once(tmp_path: Path) -> None:
    for wrong in (str(tmp_path / "a.db"), tmp_path / "a.db", None):
        with pytest.raises(ConfigurationError, match=r"AuditLog\.open"):
            AuditLog(wrong)
    assert not list(tmp_path.iterdir())  # nothing created
    log = AuditLog(AuditLog.open(tmp_path / "b.db")._backend)  # a real backend is taken
    log.append(AuditRecord.create(inputs=b"x", request_id="r1", outcome=Outcome.ANSWERED))
    assert [r.request_id for r in log.rows()] == ["r1"]
    log.close()


_CHILD = """
import sys, torch
from bastion.guard.audit_log import AuditLog, AuditRecord
log = AuditLog.open(sys.argv[1])
x = torch.rand(4, 28, 28)
i = 0
while True:
    rid = f"kill-{i}"
    log.append(AuditRecord.create(inputs=x, request_id=rid, prediction=[i] * 4,
                                  checks={"finite": True}, monitors=[{"name": "ks", "s": i}]))
    print(rid, flush=True)
    i += 1
"""


def test_kill_9_mid_write_loses_no_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    acked: list[str] = []
    enough = threading.Event()

    def read() -> None:  # every line, to EOF: the child prints an id only after append returned
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(line.strip())
            if len(acked) >= 257:
                enough.set()
        enough.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    enough.wait(60)  # bounded: at most a minute of appends
    time.sleep(0.05)  # kill at an arbitrary point, mid-append
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    reader.join(10)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, stderr
    assert len(acked) >= 20, f"child acknowledged only {len(acked)} appends: {stderr[-2000:]}"

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with AuditLog.open(path) as log:
        stored = {r.request_id for r in log.rows()}
    missing = [rid for rid in acked if rid not in stored]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"


def test_concurrent_appends_share_one_write_and_a_duplicate_fails_alone(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.db")
    backend = log._backend
    log.append(AuditRecord.create(inputs=b"first", request_id="dup"))
    groups: list[int] = []
    commit = backend._commit
    backend._commit = lambda group: (groups.append(len(group)), commit(group))[1]
    errors: dict[str, BaseException] = {}

    def append(rid: str) -> None:
        try:
            log.append(AuditRecord.create(inputs=rid.encode(), request_id=rid))
        except InputValidationError as err:
            errors[rid] = err

    ids = [f"r{i}" for i in range(7)]
    with backend._lock:  # a write in progress: every append queues behind it
        threads = [threading.Thread(target=append, args=(rid,)) for rid in [*ids, "dup"]]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while (len(backend._queued) < len(ids) or "dup" not in errors) and (
                time.monotonic() < deadline):
            time.sleep(0.005)
        assert "dup" in errors  # refused before anything is written, not queued
    for t in threads:
        t.join(10)
    assert groups == [len(ids)]  # one write, one sync for all seven
    assert list(errors) == ["dup"]
    rows = [r.request_id for r in log.rows()]
    assert rows[0] == "dup" and sorted(rows[1:]) == ids
    with pytest.raises(InputValidationError, match="already in the audit log"):
        log.append(AuditRecord.create(inputs=b"again", request_id="r3"))  # now in the table
    log.close()


def test_checkpoints_run_off_the_append_path(tmp_path: Path) -> None:
    """No append ever checkpoints (automatic checkpoints off); the ingester does after every
    CHECKPOINT_ROWS rows it moves into the table, so the WAL restarts instead of growing."""
    from bastion.guard._audit_sqlite import CHECKPOINT_ROWS

    path = tmp_path / "audit.db"
    log = AuditLog.open(path)
    backend = log._backend
    assert backend._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(CHECKPOINT_ROWS - 1):
        log.append(AuditRecord.create(inputs=b"x", request_id=f"a{i}"))
    assert len(log) == CHECKPOINT_ROWS - 1
    assert backend.checkpoints == 0  # not yet due
    log.append(AuditRecord.create(inputs=b"x", request_id="due"))
    assert len(log) == CHECKPOINT_ROWS
    deadline = time.monotonic() + 30  # readers are told before the checkpoint runs
    while backend.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.checkpoints == 1
    log.append(AuditRecord.create(inputs=b"x", request_id="after"))
    assert len(log) == CHECKPOINT_ROWS + 1  # its insert restarted the WAL
    reader = sqlite3.connect(path)
    _, frames, _ = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    reader.close()
    assert 0 < frames < 20  # a few pages for one row, not ~3 per row since the start
    log.close()
    with AuditLog.open(path) as again:
        assert len(again) == CHECKPOINT_ROWS + 1


def test_synchronous_full_is_opt_in_and_checked(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a.db", synchronous="full") as log:
        assert log._backend._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(ConfigurationError, match="synchronous"):
        AuditLog.open(tmp_path / "b.db", synchronous="OFF")


_OLD_SCHEMA = """
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX audit_time ON audit (time);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END;
"""


def test_api_key_name_is_recorded_filtered_and_exported(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append(_record(0, api_key="alice"))
        log.append(_record(1, api_key="bob", outcome=Outcome.REFUSED, reason="422 invalid"))
        log.append(_record(2))
        assert [r.api_key for r in log.rows()] == ["alice", "bob", None]
        assert [r.request_id for r in log.rows(api_key="bob")] == ["req-1"]
        assert log.export_jsonl(tmp_path / "alice.jsonl", api_key="alice") == 1
        assert log.export_jsonl(tmp_path / "all.jsonl") == 3
    lines = [json.loads(t) for t in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [line["api_key"] for line in lines] == ["alice", "bob", None]
    conn = sqlite3.connect(tmp_path / "audit.db")
    assert conn.execute("SELECT api_key FROM audit ORDER BY seq").fetchall() == [
        ("alice",), ("bob",), (None,)]
    conn.close()


def test_a_log_from_before_the_api_key_column_opens_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    old = _record(0, prediction=[3]).to_dict()
    del old["api_key"]  # written by the version without the field
    conn.execute("INSERT INTO audit (request_id, time, outcome, record) VALUES (?, ?, ?, ?)",
                 (old["request_id"], old["time"], "answered", json.dumps(old, sort_keys=True)))
    conn.commit()
    conn.close()
    with AuditLog.open(path) as log:
        (row,) = log.rows()
        assert (row.request_id, row.prediction, row.api_key) == ("req-0", [3], None)
        log.append(_record(1, api_key="carol"))
        assert [r.api_key for r in log.rows()] == [None, "carol"]
        assert log.export_jsonl(tmp_path / "out.jsonl") == 2
    lines = [json.loads(t) for t in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(line["request_id"], line["api_key"]) for line in lines] == [
        ("req-0", None), ("req-1", "carol")]
    conn = sqlite3.connect(path)
    columns = [c[1] for c in conn.execute("PRAGMA table_info(audit)")]
    assert columns[-1] == "api_key"
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE"):
        conn.execute("UPDATE audit SET api_key = 'mallory'")  # the migration kept the triggers
    conn.close()
    with AuditLog.open(path) as log:  # opening again migrates nothing twice
        assert len(log) == 2


def test_stored_text_is_the_sorted_json_of_to_dict_encoded_once() -> None:
    nested = {"b": (1, 2.5), "a": {"z": torch.tensor(0.25), "y": [True, None]}}
    record = AuditRecord.create(inputs=b"x", request_id="r", checks=nested, prediction=[3])
    assert record._text is not None  # encoded on creation, reused by append
    assert record.stored_text() == json.dumps(record.to_dict(), sort_keys=True, allow_nan=False)
    assert record.checks == {"b": [1, 2.5], "a": {"z": 0.25, "y": [True, None]}}
    nan = AuditRecord.create(inputs=b"x", request_id="n", monitors=[{"p": float("nan")}])
    # JSON has no NaN: the walk stores null, and the field holds what is stored
    assert json.loads(nan.stored_text())["monitors"] == [{"p": None}] == nan.monitors


def test_rows_arguments_are_checked_and_since_strings_parsed(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append(_record(0))
        time.sleep(0.01)
        cut = dt.datetime.now(dt.timezone.utc)
        time.sleep(0.01)
        log.append(_record(1))
        # the same instant as text, in another zone or with Z: the same rows (not compared as
        # text: "+02:00" sorts after every UTC time of the day)
        east = cut.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
        for since in (cut, east, cut.isoformat().replace("+00:00", "Z")):
            assert [r.request_id for r in log.rows(since=since)] == ["req-1"]
        bad: list[tuple[dict[str, object], str]] = [
            ({"limit": "5"}, r"limit must be an int >= 0 or None, got '5'"),
            ({"limit": True}, r"limit must be an int >= 0 or None, got True"),
            ({"limit": -1}, r"limit must be an int >= 0 or None, got -1"),
            ({"since": "garbage"}, r"since must be an ISO-8601 time with an offset"),
            ({"api_key": 5}, r"api_key must be a key name"),
        ]
        for kwargs, match in bad:
            with pytest.raises(ConfigurationError, match=match):
                log.rows(**kwargs)  # type: ignore[arg-type]


def test_records_parse_their_outcome_and_name_missing_keys() -> None:
    record = AuditRecord.create(inputs=b"x", outcome="Refused", reason="bad")  # type: ignore[arg-type]
    assert record.outcome is Outcome.REFUSED and json.loads(record.stored_text())["outcome"] == (
        "refused")
    with pytest.raises(ConfigurationError, match="unknown outcome 'maybe'"):
        AuditRecord.create(inputs=b"x", outcome="maybe")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError,
                       match=r"needs the key\(s\) \['request_id', 'time', 'input_digest'\]"):
        AuditRecord.from_dict({})
    with pytest.raises(InputValidationError, match=r"needs the key\(s\) \['input_digest'\]"):
        AuditRecord.from_dict({"request_id": "a", "time": "t"})
    with pytest.raises(InputValidationError, match="unknown outcome 'x'"):
        AuditRecord.from_dict({"request_id": "a", "time": "t", "input_digest": "d",
                               "outcome": "x"})
    with pytest.raises(InputValidationError, match="must be a mapping"):
        AuditRecord.from_dict([("request_id", "a")])  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [5, None, b"audit.db", 1.5])
def test_open_takes_only_a_path_or_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: object
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"AuditLog\.open takes a file path or URL"):
        AuditLog.open(target)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # no file named "5" (or anything else)
