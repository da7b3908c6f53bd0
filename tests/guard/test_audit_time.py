"""The audit log's timestamp text is exactly datetime's ISO 8601 at millisecond precision."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from bastion.guard._audit_time import format_time, now_text

# 1970 .. 9999-12-31 23:59:58 (a second to spare): the years ISO 8601 writes in four digits
_NS = st.integers(min_value=0, max_value=253_402_300_798_999_999_999)


def _reference(ns: int) -> str:
    ms = ns // 1_000_000
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds")


@given(_NS)
def test_format_time_is_datetimes_isoformat(ns: int) -> None:
    assert format_time(ns) == _reference(ns)


@given(st.lists(_NS, min_size=2, max_size=6))
def test_the_cached_second_never_leaks_into_another(values: list[int]) -> None:
    # the same second twice, then others: each text is its own
    for ns in [values[0], values[0] + 1_000_000, *values[1:], values[0]]:
        assert format_time(ns) == _reference(ns)


def test_now_text_is_the_current_utc_time() -> None:
    before = dt.datetime.now(dt.timezone.utc)
    got = dt.datetime.fromisoformat(now_text())
    after = dt.datetime.now(dt.timezone.utc)
    assert got.utcoffset() == dt.timedelta(0)
    assert before - dt.timedelta(milliseconds=1) <= got <= after
