"""Alert rules and sinks from a TOML or JSON file (``bastion serve --alerts FILE``).

The file, in TOML (JSON has the same structure)::

    log = true                          # log alerts on the bastion.alerts logger (default)

    [[rules]]
    name = "input_drift"                # unique; appears in every alert and metric
    monitors = ["input_mmd", "input_psi"]   # default: every monitor
    condition = "alarm"                 # or "statistic_above" with a value
    consecutive = 2                     # tested windows in a row (default 1)
    cooldown_s = 300                    # quiet time after firing (default 0)
    severity = "critical"               # info, warning (default) or critical

    [[webhooks]]
    url = "https://hooks.example.com/bastion"
    timeout = 2.0
    retries = 2
    headers = { Authorization = "Bearer ..." }

Every error names the file and the key. Prometheus metrics are not configured here: the server
always exposes them on ``/metrics``.

Example:
    >>> config = AlertConfig.from_dict({"rules": [{"name": "drift", "consecutive": 2}]})
    >>> [(r.name, r.consecutive, r.severity.value) for r in config.rules]
    [('drift', 2, 'warning')]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bastion.core.config_files import read_config_file
from bastion.core.errors import ConfigurationError
from bastion.guard.alerts import (
    AlertManager,
    AlertRule,
    AlertSink,
    Condition,
    LogSink,
    PrometheusSink,
    Severity,
    WebhookSink,
    default_rules,
)

__all__ = ["AlertConfig", "WebhookConfig"]

_TOP = {"log", "rules", "webhooks"}
_RULE = {"name", "monitors", "condition", "value", "consecutive", "cooldown_s", "severity"}
_HOOK = {"url", "timeout", "retries", "backoff", "headers", "max_queue"}


def _type_name(kinds: tuple[type, ...]) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number",
                        "bool": "true/false", "list": "a list", "dict": "a table"}[k.__name__]
                       for k in kinds)


def _get(data: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str,
         default: Any = None) -> Any:
    if key not in data:
        return default
    value = data[key]
    is_bool = isinstance(value, bool)
    if (is_bool and bool not in kinds) or not isinstance(value, kinds):
        raise ConfigurationError(f"{where}: {key!r} must be {_type_name(kinds)}, got {value!r}")
    return value


def _unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ConfigurationError(
            f"{where}: unknown key(s) {extra}; expected {', '.join(sorted(allowed))}"
        )


def _rule(data: object, where: str) -> AlertRule:
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{where}: each rule must be a table / object, got {data!r}")
    _unknown(data, _RULE, where)
    name = _get(data, "name", (str,), where)
    if not name:
        raise ConfigurationError(f"{where}: 'name' is required")
    where = f"{where} ({name!r})"
    monitors = _get(data, "monitors", (list,), where, [])
    if not all(isinstance(m, str) and m for m in monitors):
        raise ConfigurationError(f"{where}: 'monitors' must be a list of monitor names")
    value = _get(data, "value", (int, float), where)
    condition = _get(data, "condition", (str,), where, "alarm")
    consecutive = _get(data, "consecutive", (int,), where, 1)
    cooldown = _get(data, "cooldown_s", (int, float), where, 0.0)
    severity = _get(data, "severity", (str,), where, "warning")
    try:
        return AlertRule(
            name=name,
            monitors=tuple(monitors),
            condition=Condition.parse(condition),
            value=value,
            consecutive=consecutive,
            cooldown_s=cooldown,
            severity=Severity.parse(severity),
        )
    except ConfigurationError as err:
        raise ConfigurationError(f"{where}: {err}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    """One webhook sink's settings (see :class:`~bastion.guard.alerts.WebhookSink`)."""

    url: str
    timeout: float = 2.0
    retries: int = 2
    backoff: float = 0.2
    headers: tuple[tuple[str, str], ...] = ()
    max_queue: int = 1000

    def __post_init__(self) -> None:
        # the URL, headers and numbers are checked now, so a bad file (or a bad Python
        # config) stops the server before it starts instead of failing every POST later
        if not isinstance(self.headers, tuple):
            raise ConfigurationError("webhook headers must be a tuple of (name, value) pairs")
        WebhookSink.check(self.url, timeout=self.timeout, retries=self.retries,
                          backoff=self.backoff, max_queue=self.max_queue, headers=self.headers)
        object.__setattr__(self, "timeout", float(self.timeout))
        object.__setattr__(self, "backoff", float(self.backoff))

    def __repr__(self) -> str:  # the URL and headers may carry tokens
        return f"WebhookConfig(url={WebhookSink.redact(self.url)!r}, headers=<{len(self.headers)}>)"

    def build(self) -> WebhookSink:
        """The sink (its background thread starts now)."""
        return WebhookSink(self.url, timeout=self.timeout, retries=self.retries,
                           backoff=self.backoff, headers=dict(self.headers),
                           max_queue=self.max_queue)


def _webhook(data: object, where: str) -> WebhookConfig:
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{where}: each webhook must be a table / object, got {data!r}")
    _unknown(data, _HOOK, where)
    url = _get(data, "url", (str,), where)
    if not url:
        raise ConfigurationError(f"{where}: 'url' is required")
    headers = _get(data, "headers", (dict,), where, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ConfigurationError(f"{where}: 'headers' must map names to strings")
    try:
        return WebhookConfig(
            url=url,
            timeout=_get(data, "timeout", (int, float), where, 2.0),
            retries=_get(data, "retries", (int,), where, 2),
            backoff=_get(data, "backoff", (int, float), where, 0.2),
            headers=tuple(sorted(headers.items())),
            max_queue=_get(data, "max_queue", (int,), where, 1000),
        )
    except ConfigurationError as err:
        raise ConfigurationError(f"{where}: {err}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertConfig:
    """Alert rules and the sinks alerts go to.

    Attributes:
        rules: the rules (unique names); :func:`~bastion.guard.alerts.default_rules` by default.
        log: send alerts to the ``bastion.alerts`` logger.
        webhooks: webhook sinks, each URL once.
        source: where the settings came from, for messages (``alerts file PATH``).
    """

    rules: tuple[AlertRule, ...] = dataclasses.field(default_factory=default_rules)
    log: bool = True
    webhooks: tuple[WebhookConfig, ...] = ()
    source: str = dataclasses.field(default="alerts", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", _all_of(self.rules, AlertRule, "rules"))
        object.__setattr__(self, "webhooks", _all_of(self.webhooks, WebhookConfig, "webhooks"))
        if not isinstance(self.log, bool):
            raise ConfigurationError(f"log must be true or false, got {self.log!r}")
        names = [r.name for r in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigurationError(f"alert rule names must be unique; repeated: {repeated}")
        urls = [h.url for h in self.webhooks]  # two sinks on one URL would post each alert twice
        twice = sorted({WebhookSink.redact(u) for u in urls if urls.count(u) > 1})
        if twice:
            raise ConfigurationError(f"webhook urls must be unique; repeated: {twice}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "alerts") -> AlertConfig:
        """Read the structure of the module docstring; errors name ``where`` and the key."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: the top level must be a table / object")
        _unknown(data, _TOP, where)
        rules = _get(data, "rules", (list,), where)
        if rules is not None and not rules:
            raise ConfigurationError(f"{where}: 'rules' is empty; leave it out for the defaults")
        hooks = _get(data, "webhooks", (list,), where, [])
        try:
            return cls(
                rules=default_rules() if rules is None else tuple(
                    _rule(r, f"{where}: rules[{i}]") for i, r in enumerate(rules)),
                log=_get(data, "log", (bool,), where, True),
                webhooks=tuple(_webhook(h, f"{where}: webhooks[{i}]") for i, h in enumerate(hooks)),
                source=where,
            )
        except ConfigurationError as err:
            message = str(err)
            raise ConfigurationError(
                message if message.startswith(where) else f"{where}: {message}") from None

    @classmethod
    def load(cls, path: str | Path) -> AlertConfig:
        """Read a ``.toml`` or ``.json`` alerts file.

        Raises:
            ConfigurationError: the file is missing, unreadable, not TOML/JSON, or a key is
                wrong (the message names the file and the key).
        """
        file = Path(path)
        try:  # a hostile file nested thousands deep must not escape as a RecursionError
            data = read_config_file(file, "alerts")
            return cls.from_dict(data, where=f"alerts file {file}")
        except RecursionError:
            raise ConfigurationError(
                f"alerts file {file} is nested too deeply to read; an alerts file needs only "
                "a few levels (tables of rules and webhooks)") from None

    def check_monitors(self, names: Iterable[str]) -> None:
        """Refuse rules that watch a monitor the server does not run (a typo would never fire).

        Raises:
            ConfigurationError: naming the rule, the unknown monitor and the known ones.
        """
        known = sorted(names)
        for rule in self.rules:
            for monitor in rule.monitors:
                if monitor not in known:
                    raise ConfigurationError(
                        f"{self.source}: rule {rule.name!r} watches unknown monitor "
                        f"{monitor!r}; the monitors are {', '.join(known)}"
                    )

    def build(self, registry: Any = None) -> AlertManager:
        """An :class:`~bastion.guard.alerts.AlertManager` with these rules and sinks.

        Args:
            registry: a ``prometheus_client.CollectorRegistry`` to add a
                :class:`~bastion.guard.alerts.PrometheusSink` to (the server's), or None.
        """
        sinks: list[AlertSink] = []
        if self.log:
            sinks.append(LogSink())
        if registry is not None:
            sinks.append(PrometheusSink(registry))
        sinks.extend(hook.build() for hook in self.webhooks)
        return AlertManager(self.rules, sinks)

    def to_dict(self) -> dict[str, Any]:
        """JSON values; webhook URLs are redacted and headers left out (they may hold tokens)."""
        return {
            "log": self.log,
            "rules": [_rule_dict(r) for r in self.rules],
            "webhooks": [WebhookSink.redact(h.url) for h in self.webhooks],
        }


def _all_of(items: object, kind: type, what: str) -> tuple[Any, ...]:
    """``items`` as a tuple, refusing a lone string / object or an item of another type."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise ConfigurationError(f"{what} must be a tuple of {kind.__name__}, got {items!r}")
    values = tuple(items)
    bad = next((v for v in values if not isinstance(v, kind)), None)
    if bad is not None:
        raise ConfigurationError(
            f"{what} must hold {kind.__name__} objects, got {type(bad).__name__}")
    return values


def _rule_dict(rule: AlertRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "monitors": list(rule.monitors),
        "condition": rule.condition.value,
        "value": rule.value,
        "consecutive": rule.consecutive,
        "cooldown_s": rule.cooldown_s,
        "severity": rule.severity.value,
    }
