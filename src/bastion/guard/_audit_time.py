"""The audit log's timestamps: UTC, millisecond ISO 8601 text, made cheaply on every request.

``datetime.now(timezone.utc).isoformat(timespec="milliseconds")`` builds a datetime object and
formats every field each time; a server's request path does it once per answered request. The
text only changes its seconds once per second, so they are formatted once per second here and
the milliseconds appended. The text is exactly ``datetime``'s (tested against it).
"""

from __future__ import annotations

import time

__all__ = ["format_time", "now_text"]

_second: tuple[int, str] = (-1, "")  # (unix second, its text): replaced whole, never mutated


def format_time(ns: int) -> str:
    """``ns`` nanoseconds since the epoch (>= 0) as ``YYYY-MM-DDTHH:MM:SS.mmm+00:00``
    (truncated to the millisecond, as ``isoformat(timespec="milliseconds")`` does)."""
    global _second
    second, ms = divmod(ns // 1_000_000, 1000)
    cached = _second
    if cached[0] != second:
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _second = cached
    return f"{cached[1]}.{ms:03d}+00:00"


def now_text() -> str:
    """The current UTC time as the audit log stores it."""
    return format_time(time.time_ns())
