"""Reading and writing :class:`~bastion.guard.schema.TensorSchema` as dicts, JSON and TOML.

Every error names the offending key, so a user can find the line to fix. TOML is written by a
small emitter of our own: a schema holds only strings, numbers, booleans, flat lists and one
``[stats]`` table, and the standard library only reads TOML.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bastion.core.config_files import read_config_file
from bastion.core.errors import ConfigurationError

__all__ = [
    "DTYPES",
    "check_type",
    "dtype_name",
    "dump_toml",
    "parse_dim",
    "parse_dtype",
    "read_schema_file",
    "require",
]

DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
"""The dtype names a schema file may use."""

ANY_DIM = "*"
"""How a file writes a dimension of any size (TOML has no null)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def dtype_name(dtype: torch.dtype) -> str:
    """The file name of a torch dtype: ``torch.float32`` -> ``"float32"``."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ConfigurationError(f"dtype {dtype} is not supported; use one of {sorted(DTYPES)}")


def parse_dtype(value: object, key: str = "dtype") -> torch.dtype:
    """A torch dtype from a dtype or one of the names in :data:`DTYPES`."""
    if isinstance(value, torch.dtype):
        dtype_name(value)  # refuses complex and other unsupported dtypes
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
        return DTYPES[value.removeprefix("torch.")]
    raise ConfigurationError(
        f"{key!r} must name a dtype, one of {sorted(DTYPES)}; got {value!r}"
    )


def parse_dim(value: object, key: str) -> int | str | None:
    """One dimension: a size >= 0, a name (an identifier), or ``None`` / ``"*"`` for any size."""
    if value is None or value == ANY_DIM:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _NAME.match(value):
        return value
    raise ConfigurationError(
        f"{key!r}: each dimension must be a size >= 0, a name such as \"batch\" (letters, digits, "
        f"underscore) or {ANY_DIM!r} for any size; got {value!r}"
    )


def require(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    """``data[key]`` if present and of ``kinds`` (a bool is no number), else ConfigurationError."""
    if key not in data:
        raise ConfigurationError(f"{where}: missing required key {key!r}")
    return check_type(data[key], key, kinds, where)


def check_type(value: Any, key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is one of ``kinds`` (a bool never counts as a number)."""
    numeric = kinds in (int, float) or (isinstance(kinds, tuple) and float in kinds)
    if isinstance(value, bool) and numeric and kinds is not bool:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        types = (kinds,) if isinstance(kinds, type) else kinds
        names = " or ".join(k.__name__ for k in types)
        raise ConfigurationError(f"{where}: key {key!r} must be {names}, got {value!r}")
    return value


def read_schema_file(path: Path) -> dict[str, Any]:
    """The top-level table of a ``.toml`` or ``.json`` schema file."""
    data = read_config_file(path, "schema")
    if not isinstance(data, dict):
        raise ConfigurationError(f"schema file {path}: the top level must be a table / object")
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigurationError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for a flat mapping whose values may include one level of sub-tables.

    ``None`` values are left out (TOML has no null); readers treat a missing key as ``None``.
    """
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"
