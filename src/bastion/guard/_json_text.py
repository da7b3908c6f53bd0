"""JSON values encoded once and reused: the audit records of a busy server share most of theirs.

A server's audit rows repeat the same pieces: the validation result of a valid batch is the same
dict every time, the output checks of an unflagged batch too, and the monitors' verdict changes only
when the monitors' thread finishes an update (one per half second or per 256 batches), not per
request. Encoding them for every row was most of a row's cost (the floats of four monitors'
statistics alone take ~30 µs through the codec). :class:`JsonText` holds a value with its canonical
text (sorted keys, NaN and infinities as null, as the log stores records) so that a record built
from it splices the text in instead of encoding it again, and keeps the canonical value (the text
decoded) as its field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from bastion.core.results import to_jsonable

__all__ = ["JsonText", "canonical_text", "object_text"]


_string_text = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (C)


def canonical_text(value: Any) -> str:
    """The stored JSON of ``value``: sorted keys, values through ``to_jsonable`` where the codec
    cannot take them, NaN and infinities as null."""
    if value is None:  # a record's scalar fields: skip the encoder's set-up
        return "null"
    if type(value) is str:
        return _string_text(value)
    if type(value) is int:
        return str(value)
    try:
        return json.dumps(value, default=to_jsonable, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):  # NaN, infinities or keys that are not strings: the walk
        return json.dumps(to_jsonable(value), sort_keys=True, allow_nan=False)


@dataclasses.dataclass(frozen=True, eq=False)
class JsonText:
    """A JSON value and its canonical text; build with :meth:`of`.

    ``value`` is the text decoded (plain dicts, lists, strings, numbers, None): treat it as
    read-only, it is shared by every record built from this object.
    """

    value: Any
    text: str

    @classmethod
    def of(cls, value: Any) -> JsonText:
        text = canonical_text(value)
        return cls(json.loads(text), text)

    def listed(self) -> JsonText:
        """``[value]``: its text is this one's in brackets (no second encoding)."""
        return JsonText([self.value], f"[{self.text}]")

    @classmethod
    def of_ints(cls, values: list[int]) -> JsonText:
        """A list of Python ints (``Tensor.tolist()`` of an integer tensor): already canonical,
        so no round trip."""
        return cls(values, json.dumps(values))


def object_text(items: Iterable[tuple[str, str]]) -> str:
    """The JSON object text of ``(key, value text)`` pairs, keys sorted: what
    ``json.dumps(obj, sort_keys=True)`` gives for the decoded object (same separators)."""
    return "{" + ", ".join(f"{_string_text(k)}: {t}" for k, t in sorted(items)) + "}"
