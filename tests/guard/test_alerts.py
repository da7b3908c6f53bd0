"""Alert rules (consecutive windows, cooldown), and the log, webhook and Prometheus sinks."""

from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bastion.core.errors import ConfigurationError
from bastion.guard.alerts import (
    Alert,
    AlertManager,
    AlertRule,
    AlertSink,
    Condition,
    LogSink,
    PrometheusSink,
    Severity,
    WebhookSink,
)
from bastion.guard.monitors import MonitorResult


def result(
    name: str = "ks",
    *,
    alarm: bool,
    statistic: float = 1.0,
    evaluated: bool = True,
    p_value: float | None = 0.5,
) -> MonitorResult:
    return MonitorResult(
        name=name,
        statistic=statistic,
        threshold=2.0,
        p_value=p_value,
        alarm=alarm,
        evaluated=evaluated,
        samples_seen=100,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_windows_and_cooldown() -> None:
    clock = Clock()
    rule = AlertRule(name="drift", consecutive=3, cooldown_s=60.0, severity=Severity.CRITICAL)
    manager = AlertManager([rule], clock=clock)
    pattern = [True, True, False, True, True, True, True]
    fired = [len(manager.process([result(alarm=a)])) for a in pattern]
    assert fired == [0, 0, 0, 0, 0, 1, 0]  # the miss resets the streak; then cooldown
    clock.now = 59.0
    assert manager.process([result(alarm=True)]) == []
    clock.now = 61.0
    (alert,) = manager.process([result(alarm=True)])
    assert (alert.rule, alert.consecutive, alert.severity) == ("drift", 6, Severity.CRITICAL)
    # results that did not test a window neither count nor reset
    assert manager.process([result(alarm=False, evaluated=False)]) == []
    clock.now = 200.0
    assert len(manager.process([result(alarm=True)])) == 1


def test_statistic_rule_tracks_each_watched_monitor_separately() -> None:
    rule = AlertRule(
        name="big",
        monitors=("a", "b"),
        condition=Condition.STATISTIC_ABOVE,
        value=5.0,
        consecutive=2,
    )
    manager = AlertManager([rule])
    batch = [
        result("a", alarm=False, statistic=6.0),
        result("b", alarm=True, statistic=1.0),
        result("c", alarm=True, statistic=9.0),
    ]
    assert manager.process(batch) == []
    assert [a.monitor for a in manager.process(batch)] == ["a"]
    nan = result("a", alarm=False, statistic=math.nan)
    assert manager.process([nan]) == [] and manager.process(batch) == []


def test_rule_validation() -> None:
    with pytest.raises(ConfigurationError, match="value is required"):
        AlertRule(name="x", condition=Condition.STATISTIC_ABOVE)
    with pytest.raises(ConfigurationError, match="consecutive"):
        AlertRule(name="x", consecutive=0)
    with pytest.raises(ConfigurationError, match="tuple"):
        AlertRule(name="x", monitors="ks")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unique"):
        AlertManager([AlertRule(name="x"), AlertRule(name="x")])


def test_log_sink_and_a_failing_sink_never_break_processing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(AlertSink):
        def emit(self, alert: Alert) -> None:
            raise RuntimeError("sink down")

    manager = AlertManager([AlertRule(name="drift")], [Broken(), LogSink()])
    with caplog.at_level(logging.WARNING, logger="bastion.alerts"):
        alerts = manager.process([result(alarm=True, statistic=3.5)])
    assert len(alerts) == 1
    logged = [r for r in caplog.records if r.name == "bastion.alerts"]
    assert any("sink down" in (r.exc_text or "") or r.exc_info for r in logged)
    hit = [r for r in logged if "drift" in r.getMessage() and r.levelno == logging.WARNING]
    assert hit and hit[0].alert["statistic"] == 3.5  # type: ignore[attr-defined]


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    headers_seen: list[dict[str, str]] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
        else:
            type(self).bodies.append(json.loads(body))
            type(self).headers_seen.append(dict(self.headers))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Any:
    _Receiver.bodies, _Receiver.headers_seen, _Receiver.fail_first = [], [], 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.timeout = 1.0
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhook_sink_posts_json_with_retries(receiver: str) -> None:
    sink = WebhookSink(
        receiver, timeout=2.0, retries=2, backoff=0.01, headers={"X-Token": "receiver-token"}
    )
    manager = AlertManager([AlertRule(name="drift")], [sink])
    manager.process([result("ks", alarm=True, statistic=4.0)])
    manager.process([result("mmd", alarm=True, statistic=5.0)])
    manager.close()
    assert not sink._thread.is_alive()
    assert sink.sent == 2 and sink.failed == 0 and sink.dropped == 0
    assert [b["monitor"] for b in _Receiver.bodies] == ["ks", "mmd"]  # first try got a 503
    assert _Receiver.bodies[0]["statistic"] == 4.0 and _Receiver.bodies[0]["rule"] == "drift"
    assert _Receiver.headers_seen[0]["X-Token"] == "receiver-token"


def test_webhook_sink_gives_up_in_bounded_time_and_never_blocks_emit() -> None:
    sink = WebhookSink(
        "http://127.0.0.1:9/unreachable", timeout=0.2, retries=1, backoff=0.01, max_queue=1
    )
    alert = AlertManager([AlertRule(name="r")]).process([result(alarm=True)])[0]
    for _ in range(5):
        sink.emit(alert)  # returns at once; the queue of one overflows
    sink.close(timeout=10)
    assert not sink._thread.is_alive()
    assert sink.dropped >= 3 and sink.sent == 0 and sink.failed >= 1
    with pytest.raises(ConfigurationError, match="http"):
        WebhookSink("file:///etc/passwd")
    assert "secret" not in repr(WebhookSink("https://user:secret@example.invalid/x?k=secret"))


def test_prometheus_sink_exposes_gauges_and_alert_counter() -> None:
    registry = CollectorRegistry()
    manager = AlertManager([AlertRule(name="drift")], [PrometheusSink(registry)])
    manager.process(
        [
            result("input_ks", alarm=True, statistic=7.5),
            result("mmd", alarm=False, statistic=0.1, p_value=None),
        ]
    )
    text = generate_latest(registry).decode()
    assert 'bastion_monitor_statistic{monitor="input_ks"} 7.5' in text
    assert 'bastion_monitor_threshold{monitor="input_ks"} 2.0' in text
    assert 'bastion_monitor_p_value{monitor="mmd"} NaN' in text
    assert 'bastion_monitor_alarm{monitor="input_ks"} 1.0' in text
    assert 'bastion_monitor_samples_seen{monitor="mmd"} 100.0' in text
    assert 'bastion_alerts_total{monitor="input_ks",rule="drift",severity="warning"} 1.0' in text
    PrometheusSink(CollectorRegistry())  # a second registry does not collide
    with pytest.raises(ConfigurationError, match="CollectorRegistry"):
        PrometheusSink(None)
