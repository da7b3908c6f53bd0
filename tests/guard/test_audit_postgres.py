"""The audit log on a live PostgreSQL server: rows, replicas writing together, export, api_key,
migration of an old table, a lost connection.

Runs only when ``BASTION_TEST_POSTGRES_URL`` names a database the tests may create schemas in,
e.g. ``postgresql://postgres@127.0.0.1:5432/bastion_test``; each test works in a schema of its
own, dropped afterwards.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.core.errors import InputValidationError
from bastion.guard.audit_log import AuditLog, AuditRecord, Outcome

URL = os.environ.get("BASTION_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(
    not URL, reason="set BASTION_TEST_POSTGRES_URL to a PostgreSQL database to run these"
)


def _with_schema(url: str, schema: str) -> str:
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{sep}options=" + urllib.parse.quote(f"-c search_path={schema}")


@pytest.fixture
def pg() -> Iterator[tuple[str, Any]]:
    """``(url, admin)``: a URL whose search path is a fresh schema, and a connection to it."""
    import psycopg

    schema = f"bastion_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(URL, autocommit=True)
    admin.execute(f"CREATE SCHEMA {schema}")
    admin.execute(f"SET search_path = {schema}")
    try:
        yield _with_schema(URL, schema), admin
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def _record(i: int, **kw: Any) -> AuditRecord:
    return AuditRecord.create(inputs=f"input {i}", request_id=f"req-{i}", **kw)


def test_rows_round_trip_and_the_table_is_append_only(pg: tuple[str, Any]) -> None:
    import psycopg

    url, admin = pg
    with AuditLog.open(url) as log:
        log.append(_record(0, prediction=[1, 2], api_key="alice"))
        log.append(_record(1, outcome=Outcome.REFUSED, reason="bad key \x00 in the body",
                           api_key="bob"))
        log.append(_record(2, prediction=[0.1, 1e-7]))
        rows = log.rows()
        assert [r.request_id for r in rows] == ["req-0", "req-1", "req-2"]
        assert rows[0].prediction == [1, 2] and rows[1].reason == "bad key \x00 in the body"
        assert rows[2].prediction == [0.1, 1e-7]
        assert [r.api_key for r in rows] == ["alice", "bob", None]
        assert [r.request_id for r in log.rows(api_key="bob")] == ["req-1"]
        assert [r.request_id for r in log.rows(limit=1)] == ["req-0"]
        assert len(log) == 3
        with pytest.raises(InputValidationError, match="already in the audit log"):
            log.append(_record(2))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: UPDATE"):
        admin.execute("UPDATE bastion_audit SET outcome = 'answered'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: DELETE"):
        admin.execute("DELETE FROM bastion_audit")
    columns = admin.execute("SELECT api_key FROM bastion_audit ORDER BY seq").fetchall()
    assert columns == [("alice",), ("bob",), (None,)]


def test_two_replicas_writing_at_once_lose_nothing(pg: tuple[str, Any]) -> None:
    url, _ = pg
    replicas: list[AuditLog] = []
    opened: list[BaseException] = []

    def open_replica() -> None:  # both create the table at the same moment
        try:
            replicas.append(AuditLog.open(url))
        except BaseException as err:
            opened.append(err)

    starters = [threading.Thread(target=open_replica) for _ in range(2)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(60)
    assert not opened and len(replicas) == 2
    errors: list[BaseException] = []

    def write(replica: int, thread: int) -> None:
        try:
            for i in range(25):
                replicas[replica].append(AuditRecord.create(
                    inputs=b"x", request_id=f"r{replica}-t{thread}-{i}", api_key=f"key{replica}"))
        except BaseException as err:
            errors.append(err)

    writers = [threading.Thread(target=write, args=(r, t)) for r in range(2) for t in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(120)
    assert not errors
    rows = replicas[0].rows()
    ids = [r.request_id for r in rows]
    assert len(ids) == 200 and set(ids) == {
        f"r{r}-t{t}-{i}" for r in range(2) for t in range(4) for i in range(25)}
    owners = [r.api_key for r in rows]
    switches = sum(a != b for a, b in zip(owners, owners[1:], strict=False))
    assert switches > 1  # the replicas' rows interleave in one sequence
    assert len(replicas[1]) == 200
    for replica in replicas:
        replica.close()


def test_jsonl_export_is_the_stored_text_with_api_key(pg: tuple[str, Any],
                                                      tmp_path: Path) -> None:
    url, admin = pg
    with AuditLog.open(url) as log:
        for i in range(5):
            log.append(_record(i, api_key="alice" if i % 2 else "bob", checks={"n": i}))
        assert log.export_jsonl(tmp_path / "all.jsonl") == 5
        assert log.export_jsonl(tmp_path / "alice.jsonl", api_key="alice") == 2
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    stored = [t for (t,) in admin.execute("SELECT record FROM bastion_audit ORDER BY seq")]
    assert lines == stored  # exactly what was written: keys sorted, numbers untouched
    data = [json.loads(t) for t in lines]
    assert [d["api_key"] for d in data] == ["bob", "alice", "bob", "alice", "bob"]
    alice = [json.loads(t) for t in (tmp_path / "alice.jsonl").read_text().splitlines()]
    assert [d["request_id"] for d in alice] == ["req-1", "req-3"]


def test_a_table_from_the_first_version_is_migrated(pg: tuple[str, Any],
                                                    tmp_path: Path) -> None:
    url, admin = pg
    admin.execute("""
        CREATE TABLE bastion_audit (seq BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL UNIQUE,
            time TEXT NOT NULL, outcome TEXT NOT NULL, record JSONB NOT NULL)""")
    old = _record(0, prediction=[7]).to_dict()
    del old["api_key"]
    admin.execute("INSERT INTO bastion_audit (request_id, time, outcome, record) "
                  "VALUES (%s, %s, %s, %s)", ("req-0", old["time"], "answered", json.dumps(old)))
    with AuditLog.open(url) as log:
        log.append(_record(1, api_key="carol", reason="x\x00y", outcome=Outcome.REFUSED))
        rows = log.rows()
        assert [(r.request_id, r.api_key) for r in rows] == [("req-0", None), ("req-1", "carol")]
        assert rows[0].prediction == [7] and rows[1].reason == "x\x00y"
        assert log.export_jsonl(tmp_path / "out.jsonl") == 2
    exported = [json.loads(t) for t in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["api_key"] for d in exported] == [None, "carol"]
    kind = admin.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = "
                         "current_schema() AND table_name = 'bastion_audit' AND column_name = "
                         "'record'").fetchone()
    assert kind == ("text",)


def test_a_lost_connection_is_reopened(pg: tuple[str, Any]) -> None:
    url, admin = pg
    with AuditLog.open(url) as log:
        log.append(_record(0))
        pid = log._backend._conn.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        log.append(_record(1))  # on a new connection
        assert log._backend._conn.info.backend_pid != pid
        assert [r.request_id for r in log.rows()] == ["req-0", "req-1"]
