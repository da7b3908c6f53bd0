"""Text sanitisation before tokenisation: nothing that fools a tokenizer or a human reviewer.

:func:`sanitize_text` takes untrusted ``bytes`` or ``str`` and, in this order:

1. enforces the byte limit (reject, or cut at a character boundary);
2. decodes UTF-8, replacing each invalid byte by U+FFFD or rejecting;
3. removes (or rejects) control characters (``\\n`` and ``\\t`` kept by default), line and
   paragraph separators, zero-width and other invisible format characters (ZWSP, ZWNJ, ZWJ,
   WORD JOINER, BOM, soft hyphen, tag characters, ...) and bidirectional controls (U+202A-U+202E,
   U+2066-U+2069, LRM/RLM/ALM): the "Trojan Source" attack, CVE-2021-42574, hides code from
   reviewers by reordering its display;
4. normalises to NFKC (repeating 3-4 until stable), so fullwidth and styled letters become
   plain ones and the result is NFKC-normal;
5. enforces the character limit (reject or truncate);
6. reports (or rejects) words that mix scripts, such as Cyrillic letters in a Latin word
   ("раypal"), the classic homoglyph spoof.

It never raises on any input: problems are in :attr:`TextResult.changes` and rejections in
:attr:`TextResult.reasons`. Positions are indices into the decoded text before removals (steps
2-3) or into the cleaned text (steps 4-6); byte limits give byte offsets.

Example:
    >>> result = sanitize_text("if (admin\\u202e) {")
    >>> result.text, [c.kind.value for c in result.changes]
    ('if (admin) {', ['bidi'])
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import re
import unicodedata
from typing import Any

from bastion.core.errors import ConfigurationError
from bastion.core.results import Result
from bastion.guard._scripts import mixed_script_words

__all__ = ["Change", "ChangeKind", "TextAction", "TextPolicy", "TextResult", "sanitize_text"]

_LOGGER = logging.getLogger("bastion.guard")

BIDI_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c"]
)
"""Bidirectional embeddings, overrides, isolates and marks."""

INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad\u115f\u1160\u3164\uffa0")
"""Zero-width and invisible characters, on top of every other format (Cf) character."""

_ESCAPED = re.compile("[\udc80-\udcff]+")  # invalid bytes after decoding with surrogateescape


class TextAction(str, enum.Enum):
    """What to do about one kind of problem (each policy field accepts a subset)."""

    REJECT = "reject"
    REPLACE = "replace"
    REMOVE = "remove"
    REPORT = "report"
    TRUNCATE = "truncate"

    @classmethod
    def parse(
        cls, value: str | TextAction, field: str, allowed: tuple[TextAction, ...]
    ) -> TextAction:
        """``value`` as an action allowed for ``field``; ConfigurationError names the choices."""
        member = value if isinstance(value, cls) else next(
            (m for m in cls if isinstance(value, str) and m.value == value.strip().lower()), None)
        if member not in allowed:
            choices = ", ".join(a.value for a in allowed)
            raise ConfigurationError(f"TextPolicy.{field} must be one of {choices}; got {value!r}")
        return member


class ChangeKind(str, enum.Enum):
    """The kind of a change or finding."""

    INVALID_UTF8 = "invalid_utf8"
    CONTROL = "control"
    ZERO_WIDTH = "zero_width"
    BIDI = "bidi"
    NORMALIZED = "normalized"
    MIXED_SCRIPT = "mixed_script"
    TRUNCATED = "truncated"
    TOO_LONG = "too_long"


_REMOVABLE = (TextAction.REMOVE, TextAction.REJECT)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextPolicy:
    """How :func:`sanitize_text` treats each problem; strings are parsed into :class:`TextAction`.

    Attributes:
        invalid_utf8: ``replace`` (each bad byte by U+FFFD) or ``reject``.
        normalize: apply NFKC.
        controls: ``remove`` or ``reject`` control characters other than ``keep_controls``.
        keep_controls: the control characters that stay (default newline and tab).
        zero_width: ``remove`` or ``reject`` zero-width / invisible format characters.
        bidi: ``remove`` or ``reject`` bidirectional controls.
        mixed_script: ``report`` or ``reject`` words mixing scripts.
        max_chars: largest length of the cleaned text in code points, or None.
        max_bytes: largest input size in UTF-8 bytes, or None.
        too_long: ``reject`` or ``truncate`` over-long input.
        max_reported: how many changes are listed, >= 0 (``counts`` stays complete).

    Raises:
        ConfigurationError: a field is not of its type (a bool for ``normalize``, a string of
            control characters for ``keep_controls``, ints for the limits) or not one of its
            actions; the message names the field and the value.
    """

    invalid_utf8: TextAction | str = TextAction.REPLACE
    normalize: bool = True
    controls: TextAction | str = TextAction.REMOVE
    keep_controls: str = "\n\t"
    zero_width: TextAction | str = TextAction.REMOVE
    bidi: TextAction | str = TextAction.REMOVE
    mixed_script: TextAction | str = TextAction.REPORT
    max_chars: int | None = 100_000
    max_bytes: int | None = 1_000_000
    too_long: TextAction | str = TextAction.REJECT
    max_reported: int = 1000

    def __post_init__(self) -> None:
        choices = {
            "invalid_utf8": (TextAction.REPLACE, TextAction.REJECT),
            "controls": _REMOVABLE,
            "zero_width": _REMOVABLE,
            "bidi": _REMOVABLE,
            "mixed_script": (TextAction.REPORT, TextAction.REJECT),
            "too_long": (TextAction.REJECT, TextAction.TRUNCATE),
        }
        for field, allowed in choices.items():
            object.__setattr__(self, field, TextAction.parse(getattr(self, field), field, allowed))
        for field, least, optional in (("max_chars", 1, True), ("max_bytes", 1, True),
                                       ("max_reported", 0, False)):
            limit = getattr(self, field)
            if (limit is None and optional) or (isinstance(limit, int) and not isinstance(
                    limit, bool) and limit >= least):
                continue
            also = " or None" if optional else ""
            raise ConfigurationError(
                f"TextPolicy.{field} must be an int >= {least}{also}, got {limit!r:.80}")
        if not isinstance(self.normalize, bool):
            raise ConfigurationError(
                f"TextPolicy.normalize must be True or False, got {self.normalize!r:.80}")
        keep = self.keep_controls
        if not (isinstance(keep, str) and all(unicodedata.category(c) == "Cc" for c in keep)):
            raise ConfigurationError(f"TextPolicy.keep_controls must be a string of control "
                                     f"characters (such as '\\n\\t'), got {keep!r:.80}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Change:
    """One change made (or finding reported): its kind, where, and what."""

    kind: ChangeKind
    position: int | None
    detail: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextResult(Result):
    """The cleaned text and what was done. ``text`` is ``""`` when ``rejected``.

    ``to_dict()`` leaves the text out (it gives its length and SHA-256), so results can be
    logged and audited without copying user input.
    """

    text: str
    changes: tuple[Change, ...]
    rejected: bool
    reasons: tuple[str, ...]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        del out["text"]
        out["length"] = len(self.text)
        out["sha256"] = hashlib.sha256(self.text.encode("utf-8")).hexdigest()
        return out


class _Recorder:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.changes: list[Change] = []
        self.counts: dict[str, int] = {}
        self.reasons: list[str] = []

    def add(self, kind: ChangeKind, position: int | None, detail: str, n: int = 1) -> None:
        self.counts[kind.value] = self.counts.get(kind.value, 0) + n
        if len(self.changes) < self.limit:
            self.changes.append(Change(kind=kind, position=position, detail=detail))

    def result(self, text: str) -> TextResult:
        rejected = bool(self.reasons)
        if rejected or self.counts:
            _LOGGER.warning("text sanitizer: %s; changes %s", "rejected" if rejected else
                            "cleaned", dict(sorted(self.counts.items())))
        return TextResult(text="" if rejected else text, changes=tuple(self.changes),
                          rejected=rejected, reasons=tuple(self.reasons), counts=self.counts)


def _classify(char: str, keep: str) -> ChangeKind | None:
    if char in BIDI_CONTROLS:
        return ChangeKind.BIDI
    category = unicodedata.category(char)
    if category == "Cc":
        return None if char in keep else ChangeKind.CONTROL
    if category in ("Zl", "Zp", "Cs"):
        return ChangeKind.CONTROL
    if category == "Cf" or char in INVISIBLE:
        return ChangeKind.ZERO_WIDTH
    return None


def _to_bytes(data: object, policy: TextPolicy, rec: _Recorder) -> bytes | None:
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")  # lone surrogates become invalid bytes
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        rec.reasons.append(f"expected str or bytes, got {type(data).__name__}")
        return None
    limit = policy.max_bytes
    if limit is not None and len(raw) > limit:
        if policy.too_long is TextAction.REJECT:
            rec.add(ChangeKind.TOO_LONG, limit, f"input is {len(raw):,} bytes, over {limit:,}")
            rec.reasons.append(f"input is {len(raw):,} bytes, more than the limit of {limit:,}")
            return None
        cut = limit
        while cut > 0 and limit - cut < 3 and raw[cut] & 0xC0 == 0x80:
            cut -= 1  # do not split a multi-byte character
        rec.add(ChangeKind.TRUNCATED, cut, f"cut from {len(raw):,} to {cut:,} bytes")
        raw = raw[:cut]
    return raw


def _decode(raw: bytes, policy: TextPolicy, rec: _Recorder) -> str:
    text = raw.decode("utf-8", "surrogateescape")  # each invalid byte -> U+DC80..U+DCFF
    bad = 0
    for match in _ESCAPED.finditer(text):
        run = bytes(ord(c) - 0xDC00 for c in match.group()[:8]).hex(" ")
        more = " ..." if len(match.group()) > 8 else ""
        rec.add(ChangeKind.INVALID_UTF8, match.start(),
                f"{len(match.group())} invalid UTF-8 byte(s) {run}{more}", len(match.group()))
        bad += len(match.group())
    if bad and policy.invalid_utf8 is TextAction.REJECT:
        rec.reasons.append(f"{bad} invalid UTF-8 byte(s)")
    return _ESCAPED.sub(lambda m: "\ufffd" * len(m.group()), text) if bad else text


def _strip(text: str, policy: TextPolicy, rec: _Recorder) -> str:
    """Remove forbidden characters, recording each; add a reason for each kind set to reject."""
    found = {c: kind for c in set(text) if (kind := _classify(c, policy.keep_controls))}
    if not found:
        return text
    actions = {ChangeKind.BIDI: policy.bidi, ChangeKind.CONTROL: policy.controls,
               ChangeKind.ZERO_WIDTH: policy.zero_width}
    pattern = re.compile("[" + "".join(re.escape(c) for c in sorted(found)) + "]")
    for match in pattern.finditer(text):
        if len(rec.changes) >= rec.limit:
            break
        char = match.group()
        name = unicodedata.name(char, "control character")
        rec.changes.append(Change(kind=found[char], position=match.start(),
                                  detail=f"removed U+{ord(char):04X} {name}"))
    totals: dict[ChangeKind, int] = {}
    for char, kind in found.items():
        totals[kind] = totals.get(kind, 0) + text.count(char)
    for kind, total in totals.items():
        rec.counts[kind.value] = rec.counts.get(kind.value, 0) + total
        if actions[kind] is TextAction.REJECT:
            rec.reasons.append(f"{total} {kind.value.replace('_', '-')} character(s)")
    return pattern.sub("", text)


def _clean(text: str, policy: TextPolicy, rec: _Recorder) -> str | None:
    for _ in range(4):  # removal and NFKC each could, in principle, undo the other
        text = _strip(text, policy, rec)
        if not policy.normalize:
            return text
        normal = unicodedata.normalize("NFKC", text)
        if normal != text:
            first = next((i for i, (a, b) in enumerate(zip(text, normal, strict=False)) if a != b),
                         min(len(text), len(normal)))
            rec.add(ChangeKind.NORMALIZED, first,
                    f"NFKC normalisation ({len(text):,} -> {len(normal):,} characters)")
        if not any(_classify(c, policy.keep_controls) for c in set(normal)):
            return normal
        text = normal
    rec.reasons.append("the text does not reach a stable NFKC form without forbidden characters")
    return None


def _limit_chars(text: str, policy: TextPolicy, rec: _Recorder) -> str:
    limit = policy.max_chars
    if limit is None or len(text) <= limit:
        return text
    if policy.too_long is TextAction.REJECT:
        rec.add(ChangeKind.TOO_LONG, limit, f"{len(text):,} characters, over {limit:,}")
        rec.reasons.append(f"text is {len(text):,} characters, more than the limit of {limit:,}")
        return text
    rec.add(ChangeKind.TRUNCATED, limit, f"cut from {len(text):,} to {limit:,} characters")
    text = text[:limit]
    while policy.normalize and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)[:limit]  # a prefix stays normal; be sure
    return text


_DEFAULT_POLICY = TextPolicy()


def sanitize_text(data: bytes | str, *, policy: TextPolicy | None = None) -> TextResult:
    """Clean untrusted text and say what was changed; see the module docstring for the steps.

    Args:
        data: UTF-8 bytes or a string (lone surrogates count as invalid UTF-8).
        policy: what to do about each problem; default :class:`TextPolicy()`.

    Returns:
        The result; never raises for any ``data``. When ``rejected``, ``text`` is empty and
        ``reasons`` says why, while ``changes`` lists what was found.

    Raises:
        ConfigurationError: ``policy`` is not a :class:`TextPolicy` (a wrong argument of the
            caller, not of the text).

    Example:
        >>> r = sanitize_text(b"pay\\xff " + "раypal\\u200b".encode())
        >>> r.text, sorted(r.counts)
        ('pay\\ufffd раypal', ['invalid_utf8', 'mixed_script', 'zero_width'])
        >>> sanitize_text("x" * 10, policy=TextPolicy(max_chars=4)).reasons
        ('text is 10 characters, more than the limit of 4',)
    """
    if policy is None:
        policy = _DEFAULT_POLICY
    elif not isinstance(policy, TextPolicy):
        raise ConfigurationError(f"sanitize_text: policy must be a TextPolicy or None, got "
                                 f"{policy!r:.80}")
    rec = _Recorder(policy.max_reported)
    raw = _to_bytes(data, policy, rec)
    if raw is None:
        return rec.result("")
    text = _decode(raw, policy, rec)
    cleaned = _clean(text, policy, rec)
    if cleaned is None or rec.reasons:
        return rec.result("")
    cleaned = _limit_chars(cleaned, policy, rec)
    for start, scripts in mixed_script_words(cleaned):
        mix = ", ".join(f"{name} ({n})" for name, n in scripts.items())
        rec.add(ChangeKind.MIXED_SCRIPT, start, f"a word mixes scripts: {mix}")
        if policy.mixed_script is TextAction.REJECT:
            rec.reasons.append(f"word at {start} mixes scripts {', '.join(scripts)}")
    return rec.result(cleaned)
