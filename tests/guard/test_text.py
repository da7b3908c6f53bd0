"""Text sanitisation: each attack class is found and cleaned, and no input makes it raise."""

from __future__ import annotations

import dataclasses
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.errors import ConfigurationError
from bastion.guard import ChangeKind, TextPolicy, sanitize_text

# Independent of the implementation: the characters the cleaned text must never contain.
BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"}


def _forbidden(text: str) -> list[str]:
    return [
        c for c in text
        if c in BIDI or c in ZERO_WIDTH or unicodedata.category(c) in ("Cf", "Zl", "Zp")
        or (unicodedata.category(c) == "Cc" and c not in "\n\t")
    ]


def _kinds(result) -> list[str]:
    return [c.kind.value for c in result.changes]


def test_clean_text_is_unchanged() -> None:
    result = sanitize_text("Hello, world.\n\tfine")
    assert result.text == "Hello, world.\n\tfine" and result.changes == ()
    assert not result.rejected and result.counts == {}


def test_trojan_source_bidi_overrides_are_removed() -> None:
    # CVE-2021-42574: the RLO/LRI/PDI make a reviewer see the return inside the comment.
    code = (
        'access_level = "user"\n'
        'if access_level != "user\u202e \u2066// Check if admin\u2069 \u2066":'
    )
    result = sanitize_text(code)
    assert not any(c in BIDI for c in result.text)
    assert _kinds(result) == ["bidi"] * 4
    assert [c.position for c in result.changes] == [i for i, c in enumerate(code) if c in BIDI]
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in result.changes[0].detail
    strict = sanitize_text(code, policy=TextPolicy(bidi="reject"))
    assert strict.rejected and strict.text == "" and strict.reasons == ("4 bidi character(s)",)


def test_zero_width_inside_a_keyword_is_removed() -> None:
    result = sanitize_text("DR\u200bOP TABLE users; ad\u200dmin\u2060 \ufeffok")
    assert result.text == "DROP TABLE users; admin ok"
    assert result.counts == {"zero_width": 4}
    assert result.changes[0].position == 2


def test_homoglyph_with_cyrillic_letters_is_reported() -> None:
    result = sanitize_text("login to раypal now")  # "р" and "а" are Cyrillic
    assert result.text == "login to раypal now" and not result.rejected
    (change,) = result.changes
    assert change.kind is ChangeKind.MIXED_SCRIPT and change.position == 9
    assert "Cyrillic (2)" in change.detail and "Latin (4)" in change.detail
    assert sanitize_text("раypal", policy=TextPolicy(mixed_script="reject")).rejected
    assert sanitize_text("Tシャツ and Ελληνικά and русский").changes == ()


def test_invalid_utf8_is_replaced_or_rejected() -> None:
    data = b"ok \xff\xfe then \xe2\x82 end \xed\xa0\x80"  # bad bytes, truncated, surrogate
    result = sanitize_text(data)
    assert result.text.count("\ufffd") == 7 and result.text.startswith("ok ")
    assert result.counts["invalid_utf8"] == 7
    assert [c.position for c in result.changes if c.kind is ChangeKind.INVALID_UTF8] == [3, 11, 18]
    assert "ff fe" in result.changes[0].detail
    rejected = sanitize_text(data, policy=TextPolicy(invalid_utf8="reject"))
    assert rejected.rejected and rejected.reasons == ("7 invalid UTF-8 byte(s)",)


def test_lone_surrogates_in_str_count_as_invalid() -> None:
    result = sanitize_text("a\ud800b")
    assert result.text == "a\ufffd\ufffd\ufffdb" and result.counts == {"invalid_utf8": 3}


def test_control_characters_are_removed_except_newline_and_tab() -> None:
    result = sanitize_text("a\x00b\x1b[31mc\r\n\td\x7f\x85\u2028")
    assert result.text == "ab[31mc\n\td"
    assert result.counts == {"control": 6}
    keep_cr = sanitize_text("a\r\nb", policy=TextPolicy(keep_controls="\r\n"))
    assert keep_cr.text == "a\r\nb"


def test_nfkc_normalisation() -> None:
    result = sanitize_text("ｆｕｌｌ𝐛𝐨𝐥𝐝 ﬁ")
    assert result.text == "fullbold fi" and _kinds(result) == ["normalized"]
    assert sanitize_text("ｆ", policy=TextPolicy(normalize=False)).text == "ｆ"


def test_length_limits_reject_or_truncate() -> None:
    assert sanitize_text("x" * 11, policy=TextPolicy(max_chars=10)).rejected
    cut = sanitize_text("x" * 11, policy=TextPolicy(max_chars=10, too_long="truncate"))
    assert cut.text == "x" * 10 and _kinds(cut) == ["truncated"]
    big = sanitize_text(b"y" * 100, policy=TextPolicy(max_bytes=50))
    assert big.rejected and "100 bytes" in big.reasons[0]
    # truncating bytes never splits a character: "é" is two bytes
    cut_bytes = sanitize_text("é" * 10, policy=TextPolicy(max_bytes=5, too_long="truncate"))
    assert cut_bytes.text == "éé" and "invalid_utf8" not in cut_bytes.counts


def test_reported_changes_are_capped_but_counted() -> None:
    result = sanitize_text("\u200b" * 50, policy=TextPolicy(max_reported=5))
    assert len(result.changes) == 5 and result.counts == {"zero_width": 50}


def test_to_dict_carries_a_digest_not_the_text() -> None:
    result = sanitize_text("secret token\u200b")
    data = result.to_dict()
    assert "text" not in data and data["length"] == 12 and len(data["sha256"]) == 64
    assert "secret" not in json.dumps(data)


def test_policy_fields_are_parsed_and_checked() -> None:
    assert TextPolicy(bidi="REJECT").bidi.value == "reject"
    with pytest.raises(ConfigurationError, match="bidi must be one of remove, reject"):
        TextPolicy(bidi="truncate")
    with pytest.raises(ConfigurationError, match="max_chars"):
        TextPolicy(max_chars=0)


def test_wrong_type_is_a_rejection_not_a_crash() -> None:
    result = sanitize_text(123)  # type: ignore[arg-type]
    assert result.rejected and "got int" in result.reasons[0]


def _check_clean(result) -> None:
    if result.rejected:
        assert result.text == "" and result.reasons
        return
    assert _forbidden(result.text) == []
    assert unicodedata.is_normalized("NFKC", result.text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_come_out_clean(data: bytes) -> None:
    _check_clean(sanitize_text(data))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=100))
def test_arbitrary_strings_never_raise_and_come_out_clean(text: str) -> None:
    _check_clean(sanitize_text(text))
    _check_clean(sanitize_text(text, policy=TextPolicy(max_chars=7, too_long="truncate")))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_reported", "x", r"max_reported must be an int >= 0, got 'x'"),
        ("max_reported", -1, r"max_reported must be an int >= 0, got -1"),
        ("max_reported", True, r"max_reported must be an int >= 0, got True"),
        ("max_bytes", 2.5, r"max_bytes must be an int >= 1 or None, got 2.5"),
        ("keep_controls", None, r"keep_controls must be a string of control characters"),
        ("keep_controls", ["\n"], r"keep_controls must be a string"),
        ("keep_controls", "ab", r"keep_controls must be a string of control characters"),
        ("normalize", "no", r"normalize must be True or False, got 'no'"),
        ("normalize", 0, r"normalize must be True or False, got 0"),
        ("too_long", None, r"too_long must be one of reject, truncate; got None"),
    ],
)
def test_every_policy_field_is_checked(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        TextPolicy(**{field: value})  # type: ignore[arg-type]


def test_zero_reported_changes_still_counts_them() -> None:
    result = sanitize_text("a\u200bb\u200b", policy=TextPolicy(max_reported=0))
    assert result.changes == () and result.counts == {"zero_width": 2} and result.text == "ab"


@pytest.mark.parametrize("policy", ["strict", {"max_chars": 3}, 5])
def test_a_wrong_policy_argument_is_a_configuration_error(policy: object) -> None:
    with pytest.raises(ConfigurationError, match="policy must be a TextPolicy or None"):
        sanitize_text("abc", policy=policy)  # type: ignore[arg-type]


_anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) \
    | st.sampled_from(["reject", "remove", "replace", "report", "truncate", "\n", "\x00\r"]) \
    | st.lists(st.integers(), max_size=2) | st.binary(max_size=2)
_FIELDS = [f.name for f in dataclasses.fields(TextPolicy)]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _anything, max_size=4))
def test_any_field_values_build_a_policy_or_raise_configuration_error(
    fields: dict[str, object]
) -> None:
    try:
        policy = TextPolicy(**fields)  # type: ignore[arg-type]
    except ConfigurationError:
        return
    result = sanitize_text("x\u202e\u200b\x00ｆ", policy=policy)  # usable as built
    kept = [c for c in _forbidden(result.text) if c not in policy.keep_controls]
    assert result.rejected or (kept == [] and result.text.startswith("x"))
