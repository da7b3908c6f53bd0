"""Audit rows for every request, a kill -9 under load, refusal to start on a tampered model."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.guard.audit_log import AuditLog, Outcome, digest_input
from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema
from bastion.serve.auth import hash_key
from bastion.serve.pipeline import Pipeline

BASTION = [sys.executable, "-m", "bastion.cli.main"]


def test_one_audit_row_per_request_with_digest(
    demo_parts: Any, start: Any, connect: Any, keys: tuple[Path, str], tmp_path: Path
) -> None:
    model, x_train, x_test = demo_parts
    schema = TensorSchema.infer(x_train, bounds=(0.0, 1.0))
    log = AuditLog.open(tmp_path / "audit.db")
    pipeline = Pipeline(model=model, schema=schema, guard=InputGuard(schema),
                        output_checker=OutputChecker(10), audit=log)
    bodies = [json.dumps({"inputs": x_test[i : i + 2].tolist()}).encode() for i in range(3)]
    bodies.append(json.dumps({"inputs": (x_test[:1] + 3).tolist()}).encode())  # rejected
    lookups: list[str] = []
    in_table = log._backend._in_table
    log._backend._in_table = lambda rid: lookups.append(rid) or in_table(rid)
    with start(pipeline) as live, connect(live) as c:
        answers = [c.post("/v1/predict", content=b, headers={"content-type": "application/json"})
                   for b in bodies]
        c.get("/v1/monitor")  # not a decision: no row
    assert [a.status_code for a in answers] == [200, 200, 200, 422]
    # the server mints its ids (random UUIDs): answered rows skip the table lookup
    assert lookups == [answers[3].headers["x-request-id"]]
    rows = log.rows()
    log.close()
    assert [r.request_id for r in rows] == [a.headers["x-request-id"] for a in answers]
    assert [r.input_digest for r in rows] == [digest_input(b) for b in bodies]
    assert [r.outcome for r in rows] == [Outcome.ANSWERED] * 3 + [Outcome.REFUSED]
    assert rows[0].prediction == answers[0].json()["predictions"]
    assert rows[3].reason.startswith("422 invalid_input") and rows[3].prediction is None
    assert [r.api_key for r in rows] == ["tester"] * 4  # the key's name, refusals included
    key = keys[1]
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("audit.db*"))
    for secret in (key, hash_key(key)):  # neither the key nor its digest is ever written
        assert secret.encode() not in stored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def _serve_demo(keys: Path, db: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`bastion serve --model demo` with an audit log, on a free loopback port."""
    port = _free_port()
    proc = subprocess.Popen(
        [*BASTION, "serve", "--model", "demo", "--keys", str(keys), "--port", str(port),
         "--audit-log", str(db)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return proc, f"http://127.0.0.1:{port}"


def test_kill_9_under_load_keeps_every_acknowledged_request(
    keys: tuple[Path, str], tmp_path: Path
) -> None:
    from bastion.data import load_mnist5k

    db = tmp_path / "audit.db"
    proc, url = _serve_demo(keys[0], db)
    acked: list[str] = []
    try:
        _wait_healthy(url, proc)
        x = load_mnist5k().x_test[:200]
        headers = {"Authorization": f"Bearer {keys[1]}"}

        def send(i: int) -> str | None:
            try:
                r = httpx.post(f"{url}/v1/predict", json={"inputs": x[i : i + 1].tolist()},
                               headers=headers, timeout=10)
            except httpx.TransportError:
                return None  # the server died before answering: not acknowledged
            return str(r.json()["request_id"]) if r.status_code == 200 else None

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(send, i) for i in range(200)]
            while sum(f.done() for f in futures) < 40:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
            acked = [rid for f in futures if (rid := f.result()) is not None]
    finally:
        proc.kill()
        proc.wait(10)
    assert 40 <= len(acked) < 200
    with AuditLog.open(db) as log:  # readable after the crash
        recorded = {r.request_id for r in log.rows()}
    assert set(acked) <= recorded


def test_a_clean_stop_leaves_every_answered_request_in_the_table(
    keys: tuple[Path, str], tmp_path: Path
) -> None:
    """SIGTERM: the server stops, and the database file alone (no pending file left to replay)
    holds every request it answered."""
    import sqlite3

    from bastion.data import load_mnist5k

    db = tmp_path / "audit.db"
    proc, url = _serve_demo(keys[0], db)
    try:
        _wait_healthy(url, proc)
        x = load_mnist5k().x_test[:12]
        headers = {"Authorization": f"Bearer {keys[1]}"}
        answered = [
            httpx.post(f"{url}/v1/predict", json={"inputs": x[i : i + 1].tolist()},
                       headers=headers, timeout=10).json()["request_id"]
            for i in range(12)
        ]
        proc.send_signal(signal.SIGTERM)  # uvicorn shuts down, then re-raises the signal
        code = proc.wait(60)
        assert code in (0, -signal.SIGTERM), proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    finally:
        proc.kill()
    assert list(tmp_path.glob("audit.db.pending-*")) == []
    conn = sqlite3.connect(db)
    stored = {row[0] for row in conn.execute("SELECT request_id FROM audit")}
    conn.close()
    assert set(answered) <= stored


def test_audit_durability_is_normal_by_default_full_on_request(
    tmp_path: Path, demo_cache: Path
) -> None:
    """The server's default (what the kill -9 test above runs) writes each commit to the OS
    without an fsync; ``--audit-sync full`` adds the fsync; a typo fails before any model load."""
    from bastion.core.errors import ConfigurationError
    from bastion.serve.build import assemble

    levels = {}
    for sync in (None, "full", "NORMAL"):
        options = {} if sync is None else {"audit_sync": sync}
        pipeline = assemble(model="demo", audit_log=tmp_path / f"{sync}.db", cache_dir=demo_cache,
                            **options)
        assert pipeline.audit is not None
        levels[sync] = pipeline.audit._backend._conn.execute("PRAGMA synchronous").fetchone()[0]
        pipeline.audit.close()
    assert levels == {None: 1, "full": 2, "NORMAL": 1}  # SQLite: 1 NORMAL, 2 FULL
    with pytest.raises(ConfigurationError, match="--audit-sync must be normal or full"):
        assemble(model="demo", weights=tmp_path / "missing.safetensors", audit_sync="fsync",
                 audit_log=tmp_path / "never.db")
    assert not (tmp_path / "never.db").exists()


def test_cli_audit_sync_is_documented_and_checked(keys: tuple[Path, str], tmp_path: Path) -> None:
    helped = subprocess.run([*BASTION, "serve", "--help"], capture_output=True, text=True,
                            timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "--audit-sync" in text and "kill -9" in text and "power loss" in text
    result = subprocess.run(
        [*BASTION, "serve", "--model", "demo", "--keys", str(keys[0]), "--port",
         str(_free_port()), "--audit-log", str(tmp_path / "a.db"), "--audit-sync", "off"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--audit-sync must be normal or full" in " ".join(result.stderr.split())
    assert not (tmp_path / "a.db").exists()


def test_refuses_to_start_with_a_tampered_signed_model(
    demo_parts: Any, keys: tuple[Path, str], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from bastion.artifacts.keys import generate_keypair
    from bastion.artifacts.sign import sign

    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in demo_parts[0].state_dict().items()}, weights)
    pair = generate_keypair(tmp_path / "k.pem")
    signature = sign(weights, pair.private_key, signature=tmp_path / "model.sig")
    args = [*BASTION, "serve", "--model", "demo", "--weights", str(weights), "--signature",
            str(signature), "--key", str(pair.public_key), "--keys", str(keys[0]), "--port",
            str(_free_port()), "--audit-log", str(tmp_path / "a.db")]
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert "refused" in result.stderr and "model.safetensors" in result.stderr
    assert not (tmp_path / "a.db").exists()  # nothing started


@pytest.mark.parametrize("content", [None, '{"keys": []}'])
def test_refuses_to_start_without_keys(tmp_path: Path, content: str | None) -> None:
    keys = tmp_path / "keys.json"
    if content is not None:
        keys.write_text(content)
    result = subprocess.run([*BASTION, "serve", "--keys", str(keys)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "bastion apikey create" in result.stderr
