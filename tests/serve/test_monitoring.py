"""Monitors behind the server: quiet on a clean stream, firing on a shifted one (/v1/monitor)."""

from __future__ import annotations

from typing import Any

import torch

from bastion.guard.monitors import Calibration
from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema
from bastion.serve._stages import default_monitors
from bastion.serve.pipeline import Pipeline

WINDOW = 100


def test_monitors_quiet_on_clean_stream_and_fire_on_shift(
    demo_parts: Any, start: Any, connect: Any
) -> None:
    model, x_train, _ = demo_parts
    schema = TensorSchema.infer(x_train, bounds=(0.0, 1.0))
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))
    reference, clean = x_train[order[:2000]], x_train[order[2000:2600]]  # one distribution
    with torch.no_grad():
        logits = model(reference)
    calibration = Calibration(window=WINDOW, n_windows=200, false_alarm_rate=0.01)
    monitors = default_monitors(reference, logits, calibration)
    pipeline = Pipeline(model=model, schema=schema, guard=InputGuard(schema),
                        output_checker=OutputChecker(10), monitors=monitors)
    with torch.no_grad():
        predicted = model(x_train).argmax(1)
    shifted = x_train[predicted == 1]  # a stream of ones only: the class mix has drifted
    with start(pipeline) as live, connect(live) as c:
        assert c.get("/v1/monitor").json()["alarms"] == []
        clean_alarms = []
        for i in range(0, len(clean), 25):
            r = c.post("/v1/predict", json={"inputs": clean[i : i + 25].tolist()})
            assert r.status_code == 200, r.text
            seen = r.json()["checks"]["monitors"]
            # answers carry the last tested window's verdict, so one alarm can appear in several
            # answers: count alarming windows, each known by its monitor and sample count
            clean_alarms += [(m, seen["results"][m]["samples_seen"]) for m in seen["alarms"]]
        assert len(set(clean_alarms)) <= 2, clean_alarms  # 4 monitors x 1% x at most 21 tests
        state = c.get("/v1/monitor").json()
        assert state["alarms"] == []
        assert all(m["threshold"] is not None for m in state["monitors"].values())
        for i in range(0, 2 * WINDOW, 25):
            r = c.post("/v1/predict", json={"inputs": shifted[i : i + 25].tolist()})
            assert r.status_code == 200, r.text
        state = c.get("/v1/monitor").json()
    assert {"prediction_classes", "prediction_confidence"} & set(state["alarms"]), state
    assert "prediction_classes" in state["alarms"]
    last = state["monitors"]["prediction_classes"]["last"]
    assert last["statistic"] > last["threshold"]
