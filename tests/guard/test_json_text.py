"""Records built from pre-encoded pieces (JsonText) are the records built from the values."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.guard._json_text import JsonText, canonical_text, object_text
from bastion.guard.audit_log import AuditRecord, Outcome

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
    pre_encoded=st.sets(st.sampled_from(_fields)),
    api_key=st.none() | st.text(max_size=5),
    reason=st.none() | st.text(max_size=5),
)
def test_pre_encoded_pieces_give_the_same_record(
    values: dict[str, Any], pre_encoded: set[str], api_key: str | None, reason: str | None
) -> None:
    common = dict(request_id="r\u2028\"x", time="2026-11-23T00:00:00.000+00:00",
                  input_digest="d" * 64, api_key=api_key, outcome=Outcome.REFUSED, reason=reason)
    plain = AuditRecord(**common, **values)
    spliced = AuditRecord(
        **common,
        **{name: JsonText.of(v) if name in pre_encoded else v for name, v in values.items()},
    )
    assert spliced.stored_text() == plain.stored_text()
    assert spliced.to_dict() == plain.to_dict()
    # what is stored is the sorted JSON of what the record holds, NaN and infinities as null
    assert plain.stored_text() == json.dumps(plain.to_dict(), sort_keys=True, allow_nan=False)


@given(_values)
def test_canonical_text_round_trips_to_the_json_value(value: Any) -> None:
    text = canonical_text(value)
    decoded = json.loads(text)
    assert canonical_text(decoded) == text  # canonical: encoding the decoded value changes nothing
    assert "NaN" not in text and "Infinity" not in text

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


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))
def test_of_ints_is_of_for_int_lists(values: list[int]) -> None:
    fast, slow = JsonText.of_ints(values), JsonText.of(values)
    assert (fast.text, fast.value) == (slow.text, slow.value)
