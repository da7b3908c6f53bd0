"""The server's settings: one frozen dataclass, checked once, with safe defaults.

Example:
    >>> config = ServeConfig(rate_per_second=5.0, burst=10)
    >>> config.host, config.max_body_bytes
    ('127.0.0.1', 4194304)
"""

from __future__ import annotations

import dataclasses
import math

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
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_body_bytes": self.max_body_bytes > 0,
            "max_batch": self.max_batch > 0,
            "rate_per_second": self.rate_per_second > 0 and math.isfinite(self.rate_per_second),
            "burst": self.burst >= 1,
            "timeout_seconds": self.timeout_seconds > 0 and math.isfinite(self.timeout_seconds),
            "workers": self.workers >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigurationError(
                    f"{name} must be positive (port 0-65535), got {getattr(self, name)!r}"
                )
