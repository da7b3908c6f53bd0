"""The server's settings: one frozen dataclass, checked once, with safe defaults.

Example:
    >>> config = ServeConfig(rate_per_second=5.0, burst=10)
    >>> config.host, config.max_body_bytes
    ('127.0.0.1', 4194304)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from bastion.core.errors import ConfigurationError

__all__ = ["ServeConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Limits and addresses of ``bastion serve``.

    Attributes:
        host: the address to bind; loopback by default, so nothing is exposed by accident.
        port: the TCP port (0 lets the system choose).
        max_body_bytes: largest request body accepted (checked on ``Content-Length`` and while
            reading, so a larger body is never read whole).
        max_batch: largest number of samples in one request.
        rate_per_second: sustained requests per second allowed per API key (token bucket).
        burst: requests a key may send at once before the rate applies (bucket size).
        timeout_seconds: longest a request may spend in the model and its guard.
        workers: threads running inference (a model stuck past its timeout holds one).

    Raises:
        ConfigurationError: a field of the wrong type or out of range (the message names it).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 4 << 20
    max_batch: int = 256
    rate_per_second: float = 50.0
    burst: int = 100
    timeout_seconds: float = 10.0
    workers: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or not self.host.isprintable():
            raise ConfigurationError(f"host must be a non-empty address or name, got {self.host!r}")
        _integer(self, "port", 0, "an integer 0-65535", high=65535)
        for name in ("max_body_bytes", "max_batch", "burst", "workers"):
            _integer(self, name, 1, "an integer >= 1")
        for name in ("rate_per_second", "timeout_seconds"):
            value: Any = getattr(self, name)
            number = _as_float(value)
            if number is None or not (math.isfinite(number) and number > 0):
                raise ConfigurationError(f"{name} must be a finite number > 0, got {_show(value)}")
            object.__setattr__(self, name, number)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_float(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not a bool); inf when too large."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return math.inf


def _integer(config: ServeConfig, name: str, low: int, what: str, high: int | None = None) -> None:
    """Check one integer field (bools and floats are refused, numpy ints become ints)."""
    value: Any = getattr(config, name)
    integral = not isinstance(value, bool) and isinstance(value, numbers.Integral)
    if not (integral and low <= int(value) and (high is None or int(value) <= high)):
        raise ConfigurationError(f"{name} must be {what}, got {_show(value)}")
    object.__setattr__(config, name, int(value))
