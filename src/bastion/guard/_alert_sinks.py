"""Alert sinks that leave the process: a webhook and Prometheus metrics (see ``alerts``)."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bastion.core.errors import ConfigurationError

if TYPE_CHECKING:
    from bastion.guard.alerts import Alert
    from bastion.guard.monitors import MonitorResult

__all__ = ["AlertSink", "PrometheusSink", "WebhookSink"]

_log = logging.getLogger("bastion.alerts")


class AlertSink:
    """Where alerts go. Override :meth:`emit`; :meth:`observe` sees every batch of results."""

    def emit(self, alert: Alert) -> None:
        """Deliver one alert; must not block for long."""
        raise NotImplementedError

    def observe(self, results: Sequence[MonitorResult]) -> None:
        """See every monitor result (metrics sinks use it); no-op by default."""

    def resolve(self, alert: Alert) -> None:
        """An active alert's condition stopped holding; no-op by default."""

    def close(self) -> None:
        """Release resources and flush pending alerts."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # never re-send the payload (or its headers) to another address


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class WebhookSink(AlertSink):
    """POST each alert as JSON to ``url`` from a background thread.

    ``emit`` only enqueues, so the request path never waits on the network; each POST has a
    bounded ``timeout`` and at most ``retries`` retries (on connection errors and 5xx). When the
    queue is full the alert is dropped and counted. The body is the alert's ``to_dict()`` — monitor
    numbers, never input data; the URL's query and credentials are never logged. Redirects are
    not followed.

    Args:
        url: ``http://`` or ``https://`` endpoint.
        timeout: seconds per attempt.
        retries: extra attempts after a failure.
        backoff: seconds before the first retry, doubled each time.
        headers: extra headers (e.g. a token the receiver expects).
        max_queue: alerts held while the receiver is slow.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.2,
        headers: Mapping[str, str] | None = None,
        max_queue: int = 1000,
    ) -> None:
        self.check(url, timeout=timeout, retries=retries, backoff=backoff, max_queue=max_queue)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._thread = threading.Thread(target=self._run, name="bastion-webhook", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"WebhookSink({_redacted(self.url)!r})"

    @staticmethod
    def check(url: str, *, timeout: float, retries: int, backoff: float, max_queue: int) -> None:
        """Raise ConfigurationError unless the settings are valid (no thread is started)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"webhook url must be http(s)://host/..., got {_redacted(url)!r}"
            )
        if timeout <= 0 or retries < 0 or backoff < 0 or max_queue < 1:
            raise ConfigurationError(
                "timeout must be > 0, retries and backoff >= 0, max_queue >= 1"
            )

    @staticmethod
    def redact(url: str) -> str:
        """``url`` without credentials, query or fragment (what logs may show)."""
        return _redacted(url)

    def emit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            _log.warning("webhook %s: queue full, alert dropped", _redacted(self.url))

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        bound = (self.timeout + self.backoff) * (self.retries + 1) * (self._queue.qsize() + 1)
        self._thread.join(bound if timeout is None else timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            if self._post(json.dumps(alert.to_dict()).encode("utf-8")):
                self.sent += 1
            else:
                self.failed += 1

    def _post(self, body: bytes) -> bool:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    if 200 <= resp.status < 300:
                        return True
            except urllib.error.HTTPError as err:
                if err.code < 500:  # the receiver refuses it; retrying will not help
                    _log.warning("webhook %s refused alert: HTTP %s", _redacted(self.url), err.code)
                    return False
            except (OSError, ValueError) as err:
                _log.warning(
                    "webhook %s attempt %d failed: %s",
                    _redacted(self.url),
                    attempt + 1,
                    type(err).__name__,
                )
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        return False


class PrometheusSink(AlertSink):
    """Monitor gauges and alert counters in a caller-provided ``CollectorRegistry``.

    Metrics (label ``monitor``; alerts also ``rule`` and ``severity``):
    ``bastion_monitor_statistic``, ``bastion_monitor_threshold``, ``bastion_monitor_p_value``
    (NaN when the test has none), ``bastion_monitor_alarm`` (0/1),
    ``bastion_monitor_samples_seen``, ``bastion_alerts_total`` (alerts fired) and
    ``bastion_alerts_active`` (1 while an alert is active, 0 once resolved).

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; never the global one, so several
            servers (or tests) in one process do not collide.

    Raises:
        ConfigurationError: ``prometheus-client`` is not installed.
    """

    def __init__(self, registry: Any) -> None:
        try:
            from prometheus_client import Counter, Gauge
        except ImportError:
            raise ConfigurationError(
                "PrometheusSink needs prometheus-client: pip install 'bastion[serve]' "
                "(or pip install prometheus-client)"
            ) from None
        if registry is None:
            raise ConfigurationError("PrometheusSink needs an explicit CollectorRegistry")
        self.registry = registry

        def gauge(name: str, doc: str) -> Any:
            return Gauge(f"bastion_monitor_{name}", doc, ["monitor"], registry=registry)

        self._statistic = gauge("statistic", "Last tested window statistic of each monitor.")
        self._threshold = gauge("threshold", "Calibrated alarm threshold of each monitor.")
        self._p_value = gauge("p_value", "p-value of the last test (NaN when none).")
        self._alarm = gauge("alarm", "1 when the last tested window alarmed, else 0.")
        self._seen = gauge("samples_seen", "Samples fed to each monitor since fitting.")
        self._alerts = Counter(
            "bastion_alerts",
            "Alerts fired, by rule, monitor and severity.",
            ["rule", "monitor", "severity"],
            registry=registry,
        )
        self._active = Gauge(
            "bastion_alerts_active",
            "1 while an alert is active (its condition still holds), 0 once it resolved.",
            ["rule", "monitor", "severity"],
            registry=registry,
        )

    def observe(self, results: Sequence[MonitorResult]) -> None:
        for r in results:
            self._statistic.labels(r.name).set(r.statistic)
            self._threshold.labels(r.name).set(r.threshold)
            self._p_value.labels(r.name).set(math.nan if r.p_value is None else r.p_value)
            self._alarm.labels(r.name).set(1.0 if r.alarm else 0.0)
            self._seen.labels(r.name).set(r.samples_seen)

    def emit(self, alert: Alert) -> None:
        self._alerts.labels(alert.rule, alert.monitor, alert.severity.value).inc()
        self._active.labels(alert.rule, alert.monitor, alert.severity.value).set(1.0)

    def resolve(self, alert: Alert) -> None:
        self._active.labels(alert.rule, alert.monitor, alert.severity.value).set(0.0)
