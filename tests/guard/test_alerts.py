"""Alert rules (consecutive windows, cooldown), and the log, webhook and Prometheus sinks."""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from bastion.core.errors import ConfigurationError
from bastion.guard import AlertConfig, WebhookConfig
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
    assert "secret" not in repr(WebhookSink("https://example.invalid/x?k=secret#secret"))


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


# --- hostile input: webhook URLs, numbers, headers; rules; duplicates; deep files ---------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:99999/x", "port must be a number from 1 to 65535, got '99999'"),
        ("http://h:abc/", "port must be a number from 1 to 65535, got 'abc'"),
        ("http://h:0/", "port must be a number from 1 to 65535, got '0'"),
        ("http://h:80:81/", "port must be a number"),
        ("http://[::1/", r"cannot be parsed \(Invalid IPv6 URL\)"),
        ("http://[::1]x/", r"\[address\]:port"),
        ("http://[::1%25eth0]/", "is not an IPv6 address"),
        ("http://ex ample.com/", "whitespace or control character ' '"),
        ("http://h/\r\nX: 1", r"whitespace or control character '\\r'"),
        ("http://h/\x00", r"control character '\\x00'"),
        ("http://h/\u202e", r"control character '\\u202e'"),
        ("ftp://h/", "scheme must be http or https"),
        ("http:///x", "host is missing"),
        ("http://h\\evil/", "host is missing or has characters"),
        ("https://user:secret@h/x?token=secret", "credentials in the URL are not sent"),
        ("http://h/caf\u00e9", "path and query must be ASCII"),
    ],
)
def test_webhook_url_is_checked_in_full_at_construction(url: str, problem: str) -> None:
    for build in (lambda: WebhookSink(url), lambda: WebhookConfig(url=url),
                  lambda: AlertConfig.from_dict({"webhooks": [{"url": url}]})):
        with pytest.raises(ConfigurationError, match=r"webhook url must be http\(s\)") as err:
            build()
        assert err.match(problem) and "secret" not in str(err.value)


@given(st.text(max_size=40) | st.builds("http://{}{}".format, st.text(max_size=20),
                                           st.text(max_size=20)))
def test_any_webhook_url_is_accepted_usable_or_refused_clearly(url: str) -> None:
    assert isinstance(WebhookSink.redact(url), str)  # never raises, whatever the text
    try:
        WebhookSink.check(url, timeout=1.0, retries=0, backoff=0.0, max_queue=1)
    except ConfigurationError:
        return
    parts = urllib.parse.urlsplit(url)  # accepted: urllib can take it apart...
    assert parts.scheme in ("http", "https") and parts.hostname and "@" not in parts.netloc
    assert parts.port is None or 1 <= parts.port <= 65535  # ...and the port reads
    assert not any(c.isspace() or ord(c) < 32 for c in url)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        *[("timeout", v, rf"webhook timeout must be a finite number in \(0, 3600\], got {m}")
          for v, m in [(math.nan, "nan"), (math.inf, "inf"), (0, "0"), (-1.0, "-1.0"),
                       (1e10, "10000000000.0"), ("2", "'2'"), (True, "True")]],  # 1e10 overflows
        ("timeout", 10**400, "webhook timeout .*got 1000"),
        *[("backoff", v, rf"webhook backoff must be a finite number in \[0, 3600\], got {v}")
          for v in (math.nan, -0.5, math.inf)],
        *[("retries", v, rf"webhook retries must be an integer in \[0, 100\], got {v}")
          for v in (-1, 10**9, 1.5, True)],
        ("max_queue", 0, r"webhook max_queue must be an integer in \[1, 1000000\], got 0"),
        ("max_queue", 2.0, "webhook max_queue .*got 2.0"),
        ("max_queue", None, "webhook max_queue .*got None"),
    ],
)
def test_webhook_numbers_must_be_finite_and_in_range(option: str, value: Any,
                                                     message: str) -> None:
    for build in (WebhookSink, lambda url, **kw: WebhookConfig(url=url, **kw)):
        with pytest.raises(ConfigurationError, match=message):
            build("http://127.0.0.1:9/", **{option: value})
    sink = WebhookSink("http://127.0.0.1:9/")
    with pytest.raises(ConfigurationError, match="close timeout must be a finite number >= 0"):
        sink.close(timeout=math.nan)
    sink.close(timeout=5)
    assert not sink._thread.is_alive()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-A": "secret\r\nInjected: 1"},
         r"header 'X-A': the value must be printable ASCII, found '\\r'"),
        ({"X-A": "secret\nInjected: 1"}, r"found '\\n'"),
        ({"X-A": "secret\x00"}, r"found '\\x00'"),
        ({"X-A": "secret\u00e9"}, r"found '\u00e9'"),
        ({"Bad Name": "v"}, "header name 'Bad Name' is not a valid HTTP header name"),
        ({"X-A\r\nY": "v"}, "is not a valid HTTP header name"),
        ({"": "v"}, "header name '' is not a valid"),
        ({"X-A": 1}, "header 'X-A': the value must be a string, got int"),
        ({"Content-Length": "5"}, "'Content-Length' is set by the sender"),
        ({"X-A": "1", "x-a": "2"}, "header 'x-a' is given twice"),
    ],
)
def test_webhook_headers_refuse_injection(headers: dict[str, Any], message: str) -> None:
    for build in (lambda: WebhookSink("http://127.0.0.1:9/", headers=headers),
                  lambda: WebhookConfig(url="http://h/", headers=tuple(headers.items()))):
        with pytest.raises(ConfigurationError, match=message) as err:
            build()
        assert "secret" not in str(err.value)  # a header value may be a token: never echoed


def test_webhook_thread_survives_an_unexpected_error_and_sends_the_next_alert(
    receiver: str, caplog: pytest.LogCaptureFixture
) -> None:
    _Receiver.fail_first = 0
    sink = WebhookSink(receiver, timeout=2.0, retries=0)
    real_post, calls = sink._post, []

    def post(body: bytes) -> bool:  # the first POST meets an error nobody planned for
        calls.append(body)
        if len(calls) == 1:
            raise KeyError("unexpected")
        return real_post(body)

    sink._post = post  # type: ignore[method-assign]
    manager = AlertManager([AlertRule(name="drift")], [sink])
    with caplog.at_level(logging.WARNING, logger="bastion.alerts"):
        manager.process([result("ks", alarm=True)])
        manager.process([result("mmd", alarm=True)])
        manager.close()
    assert [b["monitor"] for b in _Receiver.bodies] == ["mmd"]
    assert (sink.sent, sink.failed) == (1, 1) and len(calls) == 2
    assert any("alert not sent: KeyError" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        *[({"condition": "statistic_above", "value": v}, f"value must be a finite number, got {m}")
          for v, m in [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), ("3", "'3'")]],
        *[({"cooldown_s": v}, f"cooldown_s must be a finite number >= 0, got {v}")
          for v in (math.nan, math.inf, -1, None)],
        ({"consecutive": "2"}, "consecutive must be an integer, got '2'"),
        ({"consecutive": True}, "consecutive must be an integer, got True"),
        ({"condition": "above"}, "unknown alert condition 'above'"),
        ({"severity": "high"}, "unknown alert severity 'high'"),
        ({"severity": 3}, "unknown alert severity 3"),
        ({"monitors": None}, "monitors must be a tuple of names, not NoneType"),
        ({"monitors": ("ks", "")}, "monitor names must be non-empty strings"),
        ({"monitors": ("ks", "mmd", "ks")}, r"monitor\(s\) \['ks'\] listed more than once"),
        ({"name": 5}, "an alert rule needs a name"),
    ],
)
def test_rule_refuses_what_a_file_would_refuse(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"name": "r", **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        AlertRule(**arguments)


def test_rule_parses_enum_strings_like_a_file_does() -> None:
    rule = AlertRule(name="r", condition="statistic_above", value=2, severity="Critical",
                     monitors=["ks"])  # type: ignore[arg-type]
    assert (rule.condition, rule.severity, rule.value, rule.monitors) == (
        Condition.STATISTIC_ABOVE, Severity.CRITICAL, 2.0, ("ks",))
    (alert,) = AlertManager([rule]).process([result("ks", alarm=False, statistic=3.0)])
    assert alert.severity is Severity.CRITICAL and alert.message.startswith("[critical] r:")
    alarm = AlertRule(name="a", condition="alarm")  # type: ignore[arg-type]
    assert len(AlertManager([alarm]).process([result(alarm=True)])) == 1


def test_config_refuses_duplicates_and_wrong_objects() -> None:
    url = "https://h.example/hook?token=secret"
    with pytest.raises(ConfigurationError,
                       match=r"webhook urls must be unique; repeated: \['https://h.example/hook'\]"
                       ) as err:
        AlertConfig.from_dict({"webhooks": [{"url": url}, {"url": url, "timeout": 1}]})
    assert "secret" not in str(err.value)
    with pytest.raises(ConfigurationError, match=r"rules\[0\] \('r'\): monitor\(s\) \['a'\]"):
        AlertConfig.from_dict({"rules": [{"name": "r", "monitors": ["a", "b", "a"]}]})
    with pytest.raises(ConfigurationError, match="rules must hold AlertRule objects, got str"):
        AlertConfig(rules=("r",))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rules must be AlertRule objects, got str"):
        AlertManager(["r"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="sinks must be AlertSink objects"):
        AlertManager([AlertRule(name="r")], ["sink"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="CollectorRegistry, got str"):
        PrometheusSink("registry")


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_deeply_nested_alerts_file_is_a_configuration_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"alerts{suffix}"
    depth = 100_000
    path.write_text("[" * depth + "]" * depth if suffix == ".json"
                    else "rules = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigurationError, match=str(path)):
        AlertConfig.load(path)
