"""What callers hand the audit log: digests that mean one thing, time filters parsed to UTC."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard._audit_inputs import digest_input, since_text
from bastion.guard.audit_log import AuditRecord


def test_object_and_void_arrays_cannot_be_digested() -> None:
    equal = [np.array([[1, "a"]], dtype=object), np.array([[1, "a"]], dtype=object)]
    assert np.array_equal(*equal)  # equal values, different pointers: no canonical bytes
    for arr in (equal[0], np.zeros(2, dtype="V4"), np.zeros(1, dtype=[("a", "i4"), ("b", "O")])):
        with pytest.raises(InputValidationError, match=re.escape(f"numpy dtype {arr.dtype}")):
            digest_input(arr)
    with pytest.raises(InputValidationError, match="numpy dtype object"):
        AuditRecord.create(inputs=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (None, None),
        ("2024-05-01T14:00:00.1234+02:00", "2024-05-01T12:00:00.123+00:00"),
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000+00:00"),
        (dt.datetime(2024, 5, 1, 7, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
         "2024-05-01T12:00:00.000+00:00"),
    ],
)
def test_since_becomes_the_stored_utc_text(since: object, expected: str | None) -> None:
    assert since_text(since) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("since", "match"),
    [
        (12345, r"since must be a timezone-aware datetime or an ISO-8601 string, got 12345"),
        (dt.date(2024, 5, 1), r"since must be a timezone-aware datetime"),
        ("garbage", r"since must be an ISO-8601 time with an offset.*got 'garbage'"),
        ("2024-05-01T12:00:00", r"since must be timezone-aware"),
        ("2024-05-01", r"since must be timezone-aware"),
        (dt.datetime(2024, 5, 1), r"since must be timezone-aware"),
    ],
)
def test_since_refuses_anything_but_an_aware_time(since: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        since_text(since)  # type: ignore[arg-type]
