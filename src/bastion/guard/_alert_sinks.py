"""Alert sinks that leave the process: a webhook and Prometheus metrics (see ``alerts``).

A webhook's settings are checked in full when it is built (URL, headers, every number), so a bad
setting stops a server before it starts instead of making every POST fail later; and its sender
thread survives anything one alert can throw at it, so a bad alert never silences the next ones.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import numbers
import queue
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bastion.core.errors import ConfigurationError

if TYPE_CHECKING:
    from bastion.guard.alerts import Alert
    from bastion.guard.monitors import MonitorResult

__all__ = ["AlertSink", "PrometheusSink", "WebhookSink"]

_log = logging.getLogger("bastion.alerts")

_MAX_SECONDS = 3600.0  # timeout, backoff and the longest retry delay (sockets overflow past ~1e9)
_MAX_RETRIES = 100
_MAX_QUEUE = 1_000_000
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_HOST = re.compile(r"[\w.-]+")  # letters (IDN too), digits, '-', '.', '_'
_PORT = re.compile(r"[0-9]*")
_COMPUTED = frozenset({"content-length", "transfer-encoding"})  # urllib sets these itself


def check_real(value: object, field: str, *, low: float, high: float = math.inf,
               low_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in range; else ConfigurationError.

    Booleans, strings, nan, infinities and integers too large for a float are refused, with a
    message naming ``field``, the range and the value.
    """
    if math.isinf(high):
        span = "" if math.isinf(low) else f" {'>' if low_open else '>='} {low:g}"
    else:
        span = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and (number > low or (not low_open and number == low)) \
                and number <= high:
            return number
    raise ConfigurationError(f"{field} must be a finite number{span}, got {_shown(value)}")


def check_int(value: object, field: str, *, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``; else ConfigurationError."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
            and low <= int(value) and (high is None or int(value) <= high):
        return int(value)
    span = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ConfigurationError(f"{field} must be an integer {span}, got {_shown(value)}")


def _shown(value: object) -> str:
    """``repr(value)`` cut to 60 characters, for messages (a huge int cannot even be printed)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. ValueError past the int-to-str digit limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else f"{text[:57]}..."


def _redacted(url: object) -> str:
    """``url`` without credentials, query or fragment; never raises, whatever ``url`` is."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2].lower()
    return f"{scheme.lower()}{sep}{authority}{slash}{path}"


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be POSTed to, or None when it can (ASCII outside the host)."""
    bad = next((c for c in url if c.isspace() or unicodedata.category(c).startswith("C")), None)
    if bad is not None:
        return f"it contains the whitespace or control character {bad!r}"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as err:
        return f"it cannot be parsed ({err})"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if "@" in parts.netloc:
        return "credentials in the URL are not sent; put them in a header (Authorization)"
    if not (parts.path + parts.query).isascii():
        return "the path and query must be ASCII (percent-encode other characters)"
    netloc = parts.netloc
    if netloc.startswith("["):
        literal, close, port = netloc[1:].partition("]")
        try:
            if "%" in literal:  # a zone id never reaches getaddrinfo intact
                raise ValueError(literal)
            ipaddress.IPv6Address(literal)
        except ValueError:
            return f"{literal!r} is not an IPv6 address (zone ids are not supported)"
        if not close or (port and not port.startswith(":")):
            return "an IPv6 address must be written [address] or [address]:port"
        port = port[1:]
    else:
        host, _, port = netloc.partition(":")
        if not _HOST.fullmatch(host):
            return "the host is missing or has characters a host name cannot have"
    if not _PORT.fullmatch(port) or (port and not 1 <= int(port) <= 65535):
        return f"the port must be a number from 1 to 65535, got {port!r}"
    return None


def _check_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers as a dict, refusing names and values that would corrupt the request."""
    try:
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    except TypeError:
        raise ConfigurationError(
            f"webhook headers must map names to strings, got {type(headers).__name__}") from None
    seen: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ConfigurationError("webhook headers must map names (strings) to strings")
        name, value = pair
        if not isinstance(value, str):  # never echo a value: it may be a token
            raise ConfigurationError(
                f"webhook header {name!r}: the value must be a string, got {type(value).__name__}")
        if not _TOKEN.fullmatch(name):
            raise ConfigurationError(
                f"webhook header name {name!r} is not a valid HTTP header name "
                "(letters, digits and !#$%&'*+-.^_`|~ only)")
        if name.lower() in _COMPUTED:
            raise ConfigurationError(f"webhook header {name!r} is set by the sender; leave it out")
        if name.lower() in seen:
            raise ConfigurationError(
                f"webhook header {name!r} is given twice (as {seen[name.lower()]!r} too)")
        bad = next((c for c in value if not (" " <= c <= "~" or c == "\t")), None)
        if bad is not None:  # CR/LF would inject headers; other bytes break every POST
            raise ConfigurationError(
                f"webhook header {name!r}: the value must be printable ASCII, found {bad!r}")
        seen[name.lower()] = name
    return dict(pairs)


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


def _warn(message: str, *args: object) -> None:
    """Log on the sender thread; a broken handler or filter must not end the thread."""
    try:
        _log.warning(message, *args)
    except Exception:  # noqa: BLE001 - nothing else can be done about it here
        pass


class WebhookSink(AlertSink):
    """POST each alert as JSON to ``url`` from a background thread.

    ``emit`` only enqueues, so the request path never waits on the network; each POST has a
    bounded ``timeout`` and at most ``retries`` retries (on connection errors and 5xx). When the
    queue is full the alert is dropped and counted. The body is the alert's ``to_dict()`` — monitor
    numbers, never input data; the URL's query and credentials are never logged. Redirects are
    not followed. An alert that cannot be sent, for whatever reason, is logged and counted in
    ``failed``; the thread goes on with the next one.

    Args:
        url: ``http://`` or ``https://`` endpoint: a host, an optional port (1–65535), a path
            and query in ASCII, no credentials, no whitespace or control characters.
        timeout: seconds per attempt, in (0, 3600].
        retries: extra attempts after a failure, 0 to 100.
        backoff: seconds before the first retry, doubled each time (at most 3600), in [0, 3600].
        headers: extra headers (e.g. a token the receiver expects): HTTP token names, values of
            printable ASCII (no CR/LF), each name once.
        max_queue: alerts held while the receiver is slow, 1 to 1,000,000.

    Raises:
        ConfigurationError: any of these is invalid (the message redacts the URL).
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
        self.check(url, timeout=timeout, retries=retries, backoff=backoff, max_queue=max_queue,
                   headers=headers or {})
        self.url, self.timeout, self.retries = url, float(timeout), retries
        self.backoff = float(backoff)
        self.headers = {"Content-Type": "application/json", **_check_headers(headers or {})}
        self.sent = self.failed = self.dropped = 0
        self._name = _redacted(url)  # computed once: nothing on the sender thread parses the URL
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._thread = threading.Thread(target=self._run, name="bastion-webhook", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"WebhookSink({self._name!r})"

    @staticmethod
    def check(
        url: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        max_queue: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> None:
        """Raise ConfigurationError unless the settings are valid (no thread is started)."""
        if not isinstance(url, str):
            raise ConfigurationError(f"webhook url must be a string, got {type(url).__name__}")
        problem = _url_problem(url)
        if problem is not None:
            raise ConfigurationError(
                f"webhook url must be http(s)://host[:port]/path, got {_redacted(url)!r}: "
                f"{problem}")
        check_real(timeout, "webhook timeout", low=0.0, high=_MAX_SECONDS, low_open=True)
        check_int(retries, "webhook retries", low=0, high=_MAX_RETRIES)
        check_real(backoff, "webhook backoff", low=0.0, high=_MAX_SECONDS)
        check_int(max_queue, "webhook max_queue", low=1, high=_MAX_QUEUE)
        _check_headers(headers)

    @staticmethod
    def redact(url: str) -> str:
        """``url`` without credentials, query or fragment (what logs may show)."""
        return _redacted(url)

    def emit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            _log.warning("webhook %s: queue full, alert dropped", self._name)

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop the thread."""
        if timeout is not None:
            timeout = check_real(timeout, "close timeout", low=0.0)
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        bound = (self.timeout + self.backoff) * (self.retries + 1) * (self._queue.qsize() + 1)
        self._thread.join(min(bound if timeout is None else timeout, threading.TIMEOUT_MAX))

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                ok = self._post(json.dumps(alert.to_dict()).encode("utf-8"))
            except Exception as err:  # noqa: BLE001 - the thread must outlive any one alert
                ok = False
                _warn("webhook %s: alert not sent: %s", self._name, type(err).__name__)
            if ok:
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
                    _warn("webhook %s refused alert: HTTP %s", self._name, err.code)
                    return False
            except Exception as err:  # noqa: BLE001 - OSError, a bad reply (http.client), ...
                _warn("webhook %s attempt %d failed: %s", self._name, attempt + 1,
                      type(err).__name__)
            if attempt < self.retries:
                time.sleep(delay)
                delay = min(2 * delay, _MAX_SECONDS)
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
        if not callable(getattr(registry, "register", None)):  # None: never the global one
            raise ConfigurationError(
                "PrometheusSink needs an explicit CollectorRegistry, "
                f"got {type(registry).__name__}")
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
