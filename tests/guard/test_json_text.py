"""Pre-encoded JSON pieces (JsonText) and the audit rows built from them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.guard._json_text import JsonText, canonical_text, object_text
from bastion.guard.audit_log import AuditLog, AuditRecord, Outcome, digest_input

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
    ),
    max_leaves=12,
)
_fields = ("validation", "prediction", "checks", "monitors")


@settings(max_examples=150, deadline=None)
@given(
    values=st.fixed_dictionaries({name: _values for name in _fields}),
    api_key=st.none() | st.text(max_size=5),
    reason=st.none() | st.text(max_size=5),
)
def test_a_record_stores_the_sorted_json_of_what_it_holds(
    values: dict[str, Any], api_key: str | None, reason: str | None
) -> None:
    record = AuditRecord(request_id="r\u2028\"x", time="2026-11-23T00:00:00.000+00:00",
                         input_digest="d" * 64, api_key=api_key, outcome=Outcome.REFUSED,
                         reason=reason, **values)
    # NaN and infinities as null, tuples as lists: the fields hold what is stored
    assert record.stored_text() == json.dumps(record.to_dict(), sort_keys=True, allow_nan=False)
    assert json.loads(record.stored_text())["validation"] == record.validation


@given(_values)
def test_canonical_text_round_trips_to_the_json_value(value: Any) -> None:
    text = canonical_text(value)
    decoded = json.loads(text)
    assert canonical_text(decoded) == text  # canonical: encoding the decoded value changes nothing
    constants: list[str] = []  # bare NaN / Infinity tokens (not the strings "NaN", "Infinity")
    json.loads(text, parse_constant=constants.append)
    assert constants == []

    def finite(v: Any) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, dict):
            return all(finite(x) for x in v.values())
        if isinstance(v, list):
            return all(finite(x) for x in v)
        return True

    assert finite(decoded)


def test_object_text_is_json_dumps_with_sorted_keys() -> None:
    obj = {"b": [1, 2], "a": {"y": None, "x": "\u00e9"}, "\u00e9t\u00e9": 0.5}
    text = object_text((k, canonical_text(v)) for k, v in obj.items())
    assert text == json.dumps(obj, sort_keys=True)
    assert object_text([]) == "{}"


@given(_values)
def test_listed_is_of_the_one_item_list(value: Any) -> None:
    fast, slow = JsonText.of(value).listed(), JsonText.of([value])
    assert (fast.text, fast.value) == (slow.text, slow.value)


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))
def test_of_ints_is_of_for_int_lists(values: list[int]) -> None:
    fast, slow = JsonText.of_ints(values), JsonText.of(values)
    assert (fast.text, fast.value) == (slow.text, slow.value)


_log_dir: list[Path] = []


@settings(max_examples=80, deadline=None)
@given(
    request_id=st.text(min_size=1, max_size=8),
    api_key=st.none() | st.text(max_size=5),
    body=st.binary(max_size=64),
    pieces=st.fixed_dictionaries({name: st.none() | _values
                                  for name in ("validation", "checks", "monitors")}),
    prediction=st.lists(st.integers(-5, 5), max_size=4),
)
def test_append_answered_stores_what_the_record_would(
    tmp_path_factory: pytest.TempPathFactory, request_id: str, api_key: str | None,
    body: bytes, pieces: dict[str, Any], prediction: list[int],
) -> None:
    if not _log_dir:
        _log_dir.append(tmp_path_factory.mktemp("answered") / "audit.db")
    with AuditLog.open(_log_dir[0]) as log:
        rid = f"{len(log)}-{request_id}"  # a fresh id per example
        log.append_answered(
            inputs=body, request_id=rid, api_key=api_key, prediction=JsonText.of_ints(prediction),
            **{name: None if v is None else JsonText.of(v) for name, v in pieces.items()},
        )
        (stored,) = [t for t in log._iter(None, None, None) if json.loads(t)["request_id"] == rid]
    expected = AuditRecord(
        request_id=rid, time=json.loads(stored)["time"], input_digest=digest_input(body),
        api_key=api_key, prediction=prediction, **pieces,
    )
    assert stored == expected.stored_text()
