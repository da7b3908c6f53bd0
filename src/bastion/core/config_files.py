"""Reading the TOML and JSON files users hand bastion (schemas, alert rules, scan policies).

One reader so that every such file fails the same way: a :class:`ConfigurationError` naming the
file and what is wrong with it (missing, unreadable, not UTF-8, not valid TOML/JSON), never a
parser traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bastion.core.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["read_config_file"]


def read_config_file(path: str | Path, what: str, *, json_allowed: bool = True) -> Any:
    """The parsed content of the ``what`` file at ``path`` (e.g. ``what="schema"``).

    With ``json_allowed`` the suffix picks the format (``.toml`` or ``.json``; anything else is
    refused); without it the file is TOML whatever its name.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "rules.toml"
        >>> _ = p.write_text("window = 200")
        >>> read_config_file(p, "alerts")
        {'window': 200}
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if json_allowed and suffix not in (".toml", ".json"):
        raise ConfigurationError(
            f"{what} file {file}: unknown format {file.suffix!r}; use a .toml or .json file"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"{what} file {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"{what} file {file} cannot be read: {err}") from None
    as_json = json_allowed and suffix == ".json"
    try:
        return json.loads(text) if as_json else tomllib.loads(text)
    except (ValueError, RecursionError) as err:  # decode errors are ValueErrors; so is an
        # integer past Python's digit limit; nesting past the recursion limit is its own error
        kind = "JSON" if as_json else "TOML"
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ConfigurationError(f"{what} file {file} is not valid {kind}: {reason}") from None
