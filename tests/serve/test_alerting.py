"""Alerts behind the server: fed by the monitors, on the /metrics registry and in /v1/monitor;
``bastion serve --alerts FILE`` and its refusal to start on a bad file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bastion.guard import AlertConfig
from bastion.guard.monitors import Calibration
from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema
from bastion.serve._stages import default_monitors
from bastion.serve.app import create_app
from bastion.serve.auth import KeyStore
from bastion.serve.config import ServeConfig
from bastion.serve.metrics import ServerMetrics
from bastion.serve.pipeline import Pipeline

BASTION = [sys.executable, "-m", "bastion.cli.main"]
WINDOW = 100
_ALERT_LINE = re.compile(r'^bastion_alerts_total\{[^}]*\} ([0-9.e+]+)$', re.M)
_ACTIVE_LINE = re.compile(r'^bastion_alerts_active\{[^}]*monitor="([a-z_]+)"[^}]*\} 1\.0$', re.M)


def _send(client: Any, x: torch.Tensor, step: int = 25) -> None:
    for i in range(0, len(x), step):
        r = client.post("/v1/predict", json={"inputs": x[i : i + step].tolist()})
        assert r.status_code == 200, r.text


def test_shifted_stream_raises_alerts_in_metrics_and_monitor_clean_does_not(
    demo_parts: Any, keys: tuple[Path, str], start: Any, connect: Any
) -> None:
    model, x_train, _ = demo_parts
    schema = TensorSchema.infer(x_train, bounds=(0.0, 1.0))
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))
    reference, clean = x_train[order[:2000]], x_train[order[2000:2300]]  # one distribution
    with torch.no_grad():
        logits = model(reference)
        predicted = model(x_train).argmax(1)
    calibration = Calibration(window=WINDOW, n_windows=200, false_alarm_rate=0.01)
    metrics = ServerMetrics()
    manager = AlertConfig().build(metrics.registry)  # the rules `bastion serve` uses by default
    pipeline = Pipeline(model=model, schema=schema, guard=InputGuard(schema),
                        output_checker=OutputChecker(10),
                        monitors=default_monitors(reference, logits, calibration), alerts=manager)
    app = create_app(pipeline, KeyStore.load(keys[0]), ServeConfig(rate_per_second=1e3,
                                                                    burst=1000), metrics=metrics)
    with start(app) as live, connect(live) as c:
        _send(c, clean)
        state = c.get("/v1/monitor").json()
        text = c.get("/metrics").text
        assert state["alerts"]["rules"] == ["monitor_alarm"]
        assert state["alerts"]["active"] == [] and state["alerts"]["fired_total"] == 0, state
        assert 'bastion_monitor_alarm{monitor="prediction_classes"} 0.0' in text  # tested...
        assert not _ALERT_LINE.search(text) and not _ACTIVE_LINE.search(text)  # ...no alert

        _send(c, x_train[predicted == 1][: 2 * WINDOW])  # only ones: the class mix drifted
        state = c.get("/v1/monitor").json()
        text = c.get("/metrics").text
    active = {a["monitor"]: a for a in state["alerts"]["active"]}
    assert "prediction_classes" in active, state["alerts"]
    alert = active["prediction_classes"]
    assert alert["rule"] == "monitor_alarm" and alert["severity"] == "warning"
    assert alert["statistic"] > alert["threshold"]
    assert state["alerts"]["fired_total"] >= len(active)
    assert "prediction_classes" in set(_ACTIVE_LINE.findall(text))
    counts = [float(v) for v in _ALERT_LINE.findall(text)]
    assert counts and sum(counts) == state["alerts"]["fired_total"]
    assert (
        'bastion_alerts_total{monitor="prediction_classes",rule="monitor_alarm",'
        'severity="warning"} 1.0' in text
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[[rules]]\nname = "x"\nconsecutive = 0\n', "consecutive must be at least 1"),
        ('[[rules]]\nname = "x"\nmonitors = ["input_kss"]\n', "unknown monitor 'input_kss'"),
        ('[[rulez]]\nname = "x"\n', "unknown key(s) ['rulez']"),
        ("rules = [", "is not valid TOML"),
        ('[[webhooks]]\nurl = "file:///etc/passwd"\n', "webhook url must be http(s)"),
        ('[[webhooks]]\nurl = "http://h:99999/x"\n', "port must be a number from 1 to 65535"),
        ('[[webhooks]]\nurl = "http://h/"\ntimeout = nan\n', "webhook timeout must be a finite"),
    ],
)
def test_invalid_alerts_file_refuses_to_start(
    keys: tuple[Path, str], tmp_path: Path, content: str, message: str
) -> None:
    alerts = tmp_path / "alerts.toml"
    alerts.write_text(content)
    result = subprocess.run(
        [*BASTION, "serve", "--keys", str(keys[0]), "--alerts", str(alerts), "--port", "1",
         "--audit-log", str(tmp_path / "a.db")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(alerts) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "a.db").exists()  # refused before anything started


def test_alerts_file_is_read_and_served(tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.json"
    alerts.write_text('{"rules": [{"name": "classes", "monitors": ["prediction_classes"], '
                      '"consecutive": 2, "severity": "critical"}], "log": false}')
    config = AlertConfig.load(alerts)
    config.check_monitors(["prediction_classes", "input_mmd"])
    (rule,) = config.rules
    assert (rule.name, rule.monitors, rule.consecutive, rule.severity.value) == (
        "classes", ("prediction_classes",), 2, "critical")
    manager = config.build(ServerMetrics().registry)
    assert [type(s).__name__ for s in manager.sinks] == ["PrometheusSink"]
    with pytest.raises(Exception, match="does not exist"):
        AlertConfig.load(tmp_path / "missing.toml")
