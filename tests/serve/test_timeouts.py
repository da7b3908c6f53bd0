"""The inference timeout and the audit log agree: a 503 is recorded as refused and never as
answered, and an answer whose audit row was already being written is sent, late."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from bastion.guard.audit_log import AuditLog, Outcome
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema

SCHEMA = TensorSchema(shape=("batch", 2), min=0.0, max=1.0)


class Slow(torch.nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 3)
        self.seconds = seconds
        self.calls = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        self.calls.set()
        return self.linear(x)


class SlowLog(AuditLog):
    """An audit log whose appends take ``seconds`` (a slow disk)."""

    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__(AuditLog.open(path)._backend)
        write = self._backend.append

        def slow(*row: Any, **how: Any) -> None:  # every append path ends here
            time.sleep(seconds)
            write(*row, **how)

        self._backend.append = slow


def test_a_timed_out_request_is_refused_and_never_recorded_as_answered(
    start: Any, connect: Any, tmp_path: Path
) -> None:
    from bastion.serve.pipeline import Pipeline

    model = Slow(1.0)
    log = AuditLog.open(tmp_path / "audit.db")
    pipeline = Pipeline(model=model, schema=SCHEMA, guard=InputGuard(SCHEMA), audit=log)
    with start(pipeline, timeout_seconds=0.3) as live, connect(live) as c:
        r = c.post("/v1/predict", json={"inputs": [[0.5, 0.5]]})
        assert r.status_code == 503 and r.json()["error"] == "inference_timeout"
        assert r.headers["retry-after"] == "1"
        assert model.calls.wait(10)  # the model finished in the background...
        time.sleep(0.3)
    rows = log.rows()
    log.close()
    assert [(row.outcome, row.reason[:20]) for row in rows] == [  # ...and committed nothing
        (Outcome.REFUSED, "503 inference_timeou")]
    assert rows[0].request_id == r.headers["x-request-id"]


def test_an_answer_whose_row_was_being_written_is_sent_late(
    start: Any, connect: Any, tmp_path: Path
) -> None:
    from bastion.serve.pipeline import Pipeline

    log = SlowLog(tmp_path / "audit.db", seconds=1.5)
    pipeline = Pipeline(model=Slow(0.0), schema=SCHEMA, guard=InputGuard(SCHEMA), audit=log)
    with start(pipeline, timeout_seconds=0.5) as live, connect(live) as c:
        began = time.monotonic()
        r = c.post("/v1/predict", json={"inputs": [[0.5, 0.5]]})
        took = time.monotonic() - began
    rows = log.rows()
    log.close()
    assert r.status_code == 200, r.text  # past its timeout, but the row was being written
    assert took >= 1.5
    assert [(row.outcome, row.request_id) for row in rows] == [
        (Outcome.ANSWERED, r.json()["request_id"])]
