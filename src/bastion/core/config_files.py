"""Reading the TOML and JSON files users hand bastion (schemas, alert rules, scan policies).

One reader so that every such file fails the same way: a :class:`ConfigurationError` naming the
file and what is wrong with it (missing, unreadable, not UTF-8, not valid TOML/JSON), never a
parser traceback.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from bastion.core.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MAX_CONFIG_BYTES", "read_config_file"]

MAX_CONFIG_BYTES = 16 << 20
"""Largest configuration file read (a schema with per-feature statistics of a large input is a
few MB); a FIFO, a device or a bigger file is refused before it is read."""


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
        text = _read_regular(file, what)
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


def _read_regular(file: Path, what: str) -> str:
    """The UTF-8 text of a regular file of at most :data:`MAX_CONFIG_BYTES` (opened without
    blocking, so a FIFO cannot hang the reader, and read to one byte past the cap)."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise ConfigurationError(f"{what} file {file} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigurationError(
            f"{what} file {file} is larger than {MAX_CONFIG_BYTES >> 20} MiB; not read"
        )
    return data.decode("utf-8")
