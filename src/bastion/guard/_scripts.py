"""A script heuristic from Unicode character names, for mixed-script (confusable) detection.

The standard library has no ``Script`` property, but each letter's Unicode name starts with its
script (``"CYRILLIC SMALL LETTER A"``, ``"GREEK CAPITAL LETTER ALPHA"``), which is enough to tell
the scripts that attackers mix to imitate Latin words. No dependency is added for this.
"""

from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["mixed_script_words", "script_of"]

_TWO_WORD = frozenset({"OLD", "LINEAR", "CANADIAN", "TAI", "NEW", "MEETEI", "NKO", "SORA",
                       "PAU", "MASARAM", "GUNJALA", "HANIFI", "ZANABAZAR", "NYIAKENG"})
_ALIASES = {"CJK": "Han", "HIRAGANA": "Han", "KATAKANA": "Han", "HANGUL": "Han",
            "IDEOGRAPHIC": "Han", "BOPOMOFO": "Han"}
# Name prefixes that are not scripts: these letters count as "Common".
_COMMON = frozenset({"MODIFIER", "SMALL", "FULLWIDTH", "HALFWIDTH", "MATHEMATICAL", "LETTERLIKE",
                     "CIRCLED", "PARENTHESIZED", "SQUARED", "NEGATIVE", "DOUBLE-STRUCK",
                     "SCRIPT", "BLACK-LETTER", "TURNED", "REVERSED", "INVERTED", "COMBINING",
                     "LATIN-1", "SUPERSCRIPT", "SUBSCRIPT", "NUMERO", "OUTLINED"})
# Mixing Latin with the CJK family inside one word is ordinary (for example "Tシャツ").
_COMPATIBLE = (frozenset({"Latin", "Han"}),)
_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=4096)
def script_of(char: str) -> str:
    """The script of one letter, from its Unicode name (``"Latin"``, ``"Cyrillic"``, ...).

    Non-letters and letters whose name does not start with a script are ``"Common"``;
    unnamed code points are ``"Unknown"``. The Han, kana and Hangul family is ``"Han"``.

    Example:
        >>> script_of("a"), script_of("а"), script_of("α"), script_of("1")
        ('Latin', 'Cyrillic', 'Greek', 'Common')
    """
    if not unicodedata.category(char).startswith("L"):
        return "Common"
    name = unicodedata.name(char, "")
    if not name:
        return "Unknown"
    words = name.split(" ")
    head = words[0]
    if head in _COMMON:
        return "Common"
    if head in _ALIASES:
        return _ALIASES[head]
    if head in _TWO_WORD and len(words) > 1:
        head = f"{head} {words[1]}"
    return head.title()


def mixed_script_words(text: str) -> list[tuple[int, dict[str, int]]]:
    """Words (runs of ``\\w``) whose letters come from more than one script.

    Returns:
        ``(start index, {script: number of letters})`` per mixed word, in text order.

    Example:
        >>> mixed_script_words("pay раypal now")
        [(4, {'Cyrillic': 2, 'Latin': 4})]
    """
    found: list[tuple[int, dict[str, int]]] = []
    for match in _WORD.finditer(text):
        word = match.group()
        if word.isascii():
            continue  # ASCII letters are all Latin
        counts: dict[str, int] = {}
        for char in word:
            script = script_of(char)
            if script != "Common":
                counts[script] = counts.get(script, 0) + 1
        scripts = frozenset(counts)
        if len(scripts) > 1 and not any(scripts <= group for group in _COMPATIBLE):
            found.append((match.start(), dict(sorted(counts.items()))))
    return found
