"""Parsing enums at the boundary: one function, one error message shape for every option."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TypeVar

from bastion.core.errors import ConfigurationError

__all__ = ["parse_enum"]

E = TypeVar("E", bound=enum.Enum)


def parse_enum(
    cls: type[E],
    value: E | str,
    what: str,
    *,
    aliases: Mapping[str, E] | None = None,
    normalise: Callable[[str], str] | None = None,
) -> E:
    """The member of ``cls`` named by ``value`` (case-insensitive; ``_`` and ``-`` alike).

    Raises:
        ConfigurationError: ``unknown <what> '<value>': use one of <choices>``.

    Example:
        >>> class Colour(enum.Enum):
        ...     DARK_RED = "dark-red"
        >>> parse_enum(Colour, " Dark_Red ", "colour")
        <Colour.DARK_RED: 'dark-red'>
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if normalise is not None:
            text = normalise(text)
        if aliases and text in aliases:
            return aliases[text]
        for candidate in (text, text.replace("_", "-"), text.replace("-", "_")):
            for member in cls:
                if member.value == candidate:
                    return member
    choices = ", ".join(str(m.value) for m in cls)
    raise ConfigurationError(f"unknown {what} {value!r}: use one of {choices}")
