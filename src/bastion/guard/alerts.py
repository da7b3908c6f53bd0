"""Alert rules over monitor results, and the sinks alerts go to.

A rule names the monitors it watches and a condition (the monitor's own calibrated alarm, or its
statistic above a fixed value) that must hold for ``consecutive`` tested windows in a row; after
it fires, it stays quiet for ``cooldown_s`` seconds. :class:`AlertManager` applies the rules to each
batch of results and hands alerts (and, to sinks that want them, every result) to its sinks. A
failing sink is logged and never breaks the caller's request.

An alert is *active* from the window that fires it until a tested window of the same monitor no
longer meets the rule's condition; sinks are told when it resolves (:meth:`AlertSink.resolve`).

Sinks: :class:`LogSink` (logger ``bastion.alerts``), :class:`WebhookSink` (JSON POST from a
background thread) and :class:`PrometheusSink` (gauges and counters in a caller's registry).
Rules and sinks can be read from a TOML or JSON file
(:class:`bastion.guard.AlertConfig`); without one, a server uses :func:`default_rules`.

Example:
    >>> from bastion.guard.alerts import AlertManager, AlertRule, Condition
    >>> from bastion.guard.monitors import MonitorResult
    >>> rule = AlertRule(name="drift", condition=Condition.ALARM, consecutive=2)
    >>> manager = AlertManager([rule], sinks=[])
    >>> hit = MonitorResult(name="input_ks", statistic=9.0, threshold=1.0, p_value=1e-9,
    ...                     alarm=True, evaluated=True, samples_seen=200)
    >>> manager.process([hit]), [a.rule for a in manager.process([hit])]
    ([], ['drift'])
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.results import Result
from bastion.guard._alert_sinks import (
    AlertSink,
    PrometheusSink,
    WebhookSink,
    check_real,
)
from bastion.guard.monitors import MonitorResult

__all__ = [
    "Alert",
    "AlertManager",
    "AlertRule",
    "AlertSink",
    "Condition",
    "LogSink",
    "PrometheusSink",
    "Severity",
    "WebhookSink",
    "default_rules",
]

_log = logging.getLogger("bastion.alerts")
_SINK_METHODS = ("emit", "observe", "resolve", "close")


class Condition(enum.Enum):
    """When a monitor result counts towards a rule."""

    ALARM = "alarm"  # the monitor's calibrated alarm
    STATISTIC_ABOVE = "statistic_above"  # statistic > AlertRule.value

    @classmethod
    def parse(cls, value: str | Condition) -> Condition:
        """The condition named ``value``: ``"alarm"`` or ``"statistic_above"``."""
        return parse_enum(cls, value, "alert condition")


class Severity(enum.Enum):
    """How urgent an alert is; maps onto logging levels."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def log_level(self) -> int:
        return {"info": logging.INFO, "warning": logging.WARNING}.get(self.value, logging.CRITICAL)

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        """The severity named ``value``: ``"info"``, ``"warning"`` or ``"critical"``."""
        return parse_enum(cls, value, "alert severity")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertRule:
    """One alert rule.

    Attributes:
        name: the rule's name (appears in every alert and metric).
        monitors: monitor names watched (each once); empty means every monitor. Each monitor is
            tracked separately.
        condition: what counts as a hit (a :class:`Condition` or its name, e.g. ``"alarm"``).
        value: the statistic threshold for :attr:`Condition.STATISTIC_ABOVE` (finite).
        consecutive: hits needed in a row (on tested windows) before the rule fires.
        cooldown_s: seconds after firing during which the rule stays quiet for that monitor
            (finite, >= 0).
        severity: carried by the alert (a :class:`Severity` or its name).

    Raises:
        ConfigurationError: any field is invalid; the same checks as an alerts file gets.
    """

    name: str
    monitors: tuple[str, ...] = ()
    condition: Condition = Condition.ALARM
    value: float | None = None
    consecutive: int = 1
    cooldown_s: float = 0.0
    severity: Severity = Severity.WARNING

    def __post_init__(self) -> None:
        # Python callers get the checks a file gets: strings become enums, numbers are finite.
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"an alert rule needs a name (a string), got {self.name!r}")
        set_ = object.__setattr__  # the dataclass is frozen
        set_(self, "monitors", _monitor_names(self.monitors))
        set_(self, "condition", Condition.parse(self.condition))
        set_(self, "severity", Severity.parse(self.severity))
        if not isinstance(self.consecutive, int) or isinstance(self.consecutive, bool):
            raise ConfigurationError(f"consecutive must be an integer, got {self.consecutive!r}")
        if self.consecutive < 1:
            raise ConfigurationError(f"consecutive must be at least 1, got {self.consecutive}")
        set_(self, "cooldown_s", check_real(self.cooldown_s, "cooldown_s", low=0.0))
        if (self.condition is Condition.STATISTIC_ABOVE) != (self.value is not None):
            raise ConfigurationError(
                "value is required with Condition.STATISTIC_ABOVE and meaningless otherwise"
            )
        if self.value is not None:
            set_(self, "value", check_real(self.value, "value", low=-math.inf))

    def watches(self, monitor: str) -> bool:
        return not self.monitors or monitor in self.monitors

    def hit(self, result: MonitorResult) -> bool:
        if self.condition is Condition.ALARM:
            return result.alarm
        assert self.value is not None
        return not math.isnan(result.statistic) and result.statistic > self.value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Alert(Result):
    """A fired rule: what, where, how bad, and the numbers behind it (never any input data)."""

    rule: str
    monitor: str
    severity: Severity
    time: str
    statistic: float
    threshold: float
    p_value: float | None
    consecutive: int
    message: str


class LogSink(AlertSink):
    """Log each alert on ``logger`` (default ``bastion.alerts``) at its severity's level."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or _log

    def emit(self, alert: Alert) -> None:
        self.logger.log(
            alert.severity.log_level, "%s", alert.message, extra={"alert": alert.to_dict()}
        )

    def resolve(self, alert: Alert) -> None:
        self.logger.info(
            "resolved: %s (monitor %s)", alert.rule, alert.monitor, extra={"alert": alert.to_dict()}
        )


class AlertManager:
    """Apply rules to monitor results and dispatch alerts to sinks; thread-safe.

    Args:
        rules: the alert rules; names must be unique.
        sinks: where alerts go, in order.
        clock: monotonic seconds, for cooldowns (injectable for tests).
    """

    def __init__(
        self,
        rules: Sequence[AlertRule],
        sinks: Sequence[AlertSink] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        rules, sinks = tuple(rules), tuple(sinks)
        # caught here, not as an AttributeError on the request path
        bad_rule = next((r for r in rules if not isinstance(r, AlertRule)), None)
        if bad_rule is not None:
            raise ConfigurationError(
                f"rules must be AlertRule objects, got {type(bad_rule).__name__}")
        bad_sink = next((s for s in sinks if not all(
            callable(getattr(s, m, None)) for m in _SINK_METHODS)), None)
        if bad_sink is not None:
            raise ConfigurationError(
                f"sinks must be AlertSink objects ({', '.join(_SINK_METHODS)}), "
                f"got {type(bad_sink).__name__}")
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"alert rule names must be unique, got {names}")
        self.rules = tuple(rules)
        self.sinks = tuple(sinks)
        self._clock = clock
        self._streak: dict[tuple[str, str], int] = {}
        self._last_fired: dict[tuple[str, str], float] = {}
        self._active: dict[tuple[str, str], Alert] = {}
        self.fired_total = 0
        self._lock = threading.Lock()

    def process(self, results: Iterable[MonitorResult]) -> list[Alert]:
        """Update rule state with ``results``; return (and dispatch) the alerts fired.

        Sinks see every result (:meth:`AlertSink.observe`), each fired alert
        (:meth:`AlertSink.emit`) and each active alert whose condition stopped holding
        (:meth:`AlertSink.resolve`).
        """
        results = list(results)
        fired: list[Alert] = []
        resolved: list[Alert] = []
        with self._lock:
            now = self._clock()
            for rule in self.rules:
                for res in results:
                    if not (res.evaluated and rule.watches(res.name)):
                        continue
                    key = (rule.name, res.name)
                    streak = self._streak.get(key, 0) + 1 if rule.hit(res) else 0
                    self._streak[key] = streak
                    if streak == 0 and key in self._active:
                        resolved.append(self._active.pop(key))
                    last = self._last_fired.get(key)
                    cooling = last is not None and now - last < rule.cooldown_s
                    if streak >= rule.consecutive and not cooling:
                        self._last_fired[key] = now
                        alert = _make_alert(rule, res, streak)
                        self._active[key] = alert
                        fired.append(alert)
            self.fired_total += len(fired)
        for sink in self.sinks:
            self._safely(sink.observe, results)
            for alert in resolved:
                self._safely(sink.resolve, alert)
            for alert in fired:
                self._safely(sink.emit, alert)
        return fired

    def active(self) -> tuple[Alert, ...]:
        """The alerts whose condition still held on their monitor's last tested window."""
        with self._lock:
            return tuple(self._active.values())

    def state(self) -> dict[str, Any]:
        """JSON state for ``GET /v1/monitor``: the rules, the active alerts and a fired count."""
        with self._lock:
            active = [a.to_dict() for a in self._active.values()]
            total = self.fired_total
        return {
            "rules": [r.name for r in self.rules],
            "active": active,
            "fired_total": total,
        }

    def close(self) -> None:
        """Close every sink (flushes background senders)."""
        for sink in self.sinks:
            self._safely(sink.close)

    @staticmethod
    def _safely(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a sink must never break the request path
            _log.exception("alert sink %s failed", getattr(fn, "__self__", fn))


def default_rules() -> tuple[AlertRule, ...]:
    """The rules a server uses without an alerts file: any monitor's calibrated alarm alerts.

    One rule, ``monitor_alarm``: every monitor, on its own alarm, on the first tested window
    that alarms (``consecutive=1``), at most once per monitor every 5 minutes (``cooldown_s``),
    severity warning. Each monitor's alarm is calibrated to its false-alarm rate per tested
    window, so a clean stream still raises one now and then; the cooldown bounds how often.

    Example:
        >>> [(r.name, r.condition.value, r.consecutive) for r in default_rules()]
        [('monitor_alarm', 'alarm', 1)]
    """
    return (
        AlertRule(
            name="monitor_alarm",
            condition=Condition.ALARM,
            consecutive=1,
            cooldown_s=300.0,
            severity=Severity.WARNING,
        ),
    )


def _monitor_names(monitors: object) -> tuple[str, ...]:
    """``monitors`` as a tuple of distinct non-empty names (any iterable but a lone string)."""
    if isinstance(monitors, str) or not isinstance(monitors, Iterable):
        raise ConfigurationError(
            f"monitors must be a tuple of names, not {type(monitors).__name__} "
            "(use () for every monitor)")
    names = tuple(monitors)
    bad = [m for m in names if not (isinstance(m, str) and m)]
    if bad:
        raise ConfigurationError(f"monitor names must be non-empty strings, got {bad!r}")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ConfigurationError(f"monitor(s) {repeated} listed more than once")
    return names


def _make_alert(rule: AlertRule, res: MonitorResult, streak: int) -> Alert:
    what = "alarm" if rule.condition is Condition.ALARM else f"statistic > {rule.value:g}"
    return Alert(
        rule=rule.name,
        monitor=res.name,
        severity=rule.severity,
        time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        statistic=res.statistic,
        threshold=res.threshold,
        p_value=res.p_value,
        consecutive=streak,
        message=(
            f"[{rule.severity.value}] {rule.name}: monitor {res.name} {what} for {streak} "
            f"window(s) (statistic {res.statistic:.4g}, threshold {res.threshold:.4g})"
        ),
    )
