"""Tensor schemas: declare what a model's input must look like; find every way a batch breaks it.

A :class:`TensorSchema` declares dtype(s), a shape whose dimensions are fixed sizes, names
(``"batch"``, bound to one size across the tensor) or ``None`` (any size), a value range,
finiteness and, optionally, per-feature statistics of reference data with a z-score limit.
Dimension 0 is the sample (batch) dimension: every value violation names the sample it is in.

:meth:`TensorSchema.validate` never stops at the first problem: the
:class:`ValidationReport` lists every violation (up to a cap, with totals per rule). Schemas are
written in Python, read from TOML or JSON (:meth:`TensorSchema.load`) or inferred from reference
data (:meth:`TensorSchema.infer`).

Example:
    >>> import torch
    >>> schema = TensorSchema(shape=("batch", 3), min=0.0, max=1.0)
    >>> report = schema.validate(torch.tensor([[0.1, 0.2, 0.3], [0.5, float("nan"), 7.0]]))
    >>> report.ok, [(v.rule.value, v.sample_index) for v in report.violations]
    (False, [('non_finite', 1), ('max', 1)])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bastion.core.atomic import atomic_write_text
from bastion.core.errors import ConfigurationError
from bastion.guard import _checks
from bastion.guard._convert import as_tensor, to_tensor
from bastion.guard._feature_stats import FeatureStats
from bastion.guard._report import (
    DEFAULT_MAX_VIOLATIONS,
    Rule,
    ValidationReport,
    Violation,
    check_max_violations,
)
from bastion.guard._schema_io import (
    check_type,
    dtype_name,
    dump_toml,
    parse_dim,
    parse_dtype,
    read_schema_file,
    require,
)

__all__ = [
    "FeatureStats",
    "Rule",
    "TensorSchema",
    "ValidationReport",
    "Violation",
    "as_tensor",
]


def _number(value: float | None, key: str) -> float | None:
    if value is None:
        return None
    check_type(value, key, (int, float), "schema")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range (JSON and TOML allow any size)
        raise ConfigurationError(f"schema: key {key!r} must be a finite number, got an int of "
                                 f"{int(value).bit_length()} bits") from None
    if not math.isfinite(number):
        raise ConfigurationError(f"schema: key {key!r} must be finite, got {value!r}")
    return number


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSchema:
    """What a batch must look like; see the module docstring.

    Attributes:
        shape: one entry per dimension, dimension 0 being the samples: an int (fixed size), a
            name (same size wherever it appears) or None (any size; ``"*"`` in files).
        dtype: the allowed dtype or dtypes (stored as a tuple; also :attr:`dtypes`).
        min: smallest allowed value, or None.
        max: largest allowed value, or None.
        finite: refuse NaN and +-inf (floating dtypes).
        stats: per-feature statistics with a z-score limit, or None.
        name: the tensor's name in messages and violation fields.

    Raises:
        ConfigurationError: an argument is invalid (the message names it).
    """

    shape: tuple[int | str | None, ...]
    dtype: torch.dtype | tuple[torch.dtype, ...] = torch.float32
    min: float | None = None
    max: float | None = None
    finite: bool = True
    stats: FeatureStats | None = None
    name: str = "input"

    def __post_init__(self) -> None:
        if isinstance(self.shape, (str, bytes)) or not isinstance(self.shape, Sequence):
            raise ConfigurationError(f"schema: 'shape' must be a list of dims, got {self.shape!r}")
        shape = tuple(parse_dim(d, "shape") for d in self.shape)
        if not shape:
            raise ConfigurationError("schema: 'shape' needs at least the sample dimension")
        raw = self.dtype if isinstance(self.dtype, (tuple, list)) else (self.dtype,)
        dtypes = tuple(dict.fromkeys(parse_dtype(d) for d in raw))
        if not dtypes:
            raise ConfigurationError("schema: 'dtype' must name at least one dtype")
        low, high = _number(self.min, "min"), _number(self.max, "max")
        if low is not None and high is not None and low > high:
            raise ConfigurationError(f"schema: 'min' ({low}) must not exceed 'max' ({high})")
        check_type(self.finite, "finite", bool, "schema")
        check_type(self.name, "name", str, "schema")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtypes)
        object.__setattr__(self, "min", low)
        object.__setattr__(self, "max", high)
        for dtype in dtypes:  # a range no value of an allowed dtype lies in cannot be repaired into
            if dtype != torch.bool and _checks.clamp_bounds(dtype, low, high) is None:
                raise ConfigurationError(
                    f"schema: no {dtype_name(dtype)} value lies within ['min', 'max'] = "
                    f"[{low}, {high}]; widen the range or drop that dtype"
                )
        if self.stats is not None:
            self._check_stats(self.stats)

    def _check_stats(self, stats: FeatureStats) -> None:
        if not isinstance(stats, FeatureStats):
            raise ConfigurationError(f"schema: 'stats' must be FeatureStats, got {stats!r}")
        sample = self.shape[1:]
        if not all(isinstance(d, int) for d in sample):
            raise ConfigurationError(
                f"schema: 'stats' needs fixed sample dimensions, got shape {self.describe_shape()}"
            )
        if len(stats.mean) != math.prod(self.sample_shape()):
            raise ConfigurationError(
                f"schema: 'stats' has {len(stats.mean)} features but a sample of shape "
                f"{self.sample_shape()} has {math.prod(self.sample_shape())}"
            )
        low = -math.inf if self.min is None else self.min
        high = math.inf if self.max is None else self.max
        if bool(((stats.mean < low) | (stats.mean > high)).any()):
            raise ConfigurationError("schema: 'stats' mean lies outside ['min', 'max']")
        for dtype in self.dtypes:
            if dtype.is_floating_point and bool(
                    (stats.mean.abs() > torch.finfo(dtype).max).any()):
                raise ConfigurationError(
                    f"schema: 'stats' mean lies outside the range of {dtype_name(dtype)}")

    @property
    def dtypes(self) -> tuple[torch.dtype, ...]:
        """The allowed dtypes, first one preferred (used by :func:`as_tensor`)."""
        assert isinstance(self.dtype, tuple)
        return self.dtype

    def sample_shape(self) -> tuple[int, ...]:
        """The fixed shape of one sample; ConfigurationError if a sample dimension is not fixed."""
        sample = self.shape[1:]
        if not all(isinstance(d, int) for d in sample):
            raise ConfigurationError(f"schema {self.name!r}: sample shape {sample} is not fixed")
        return tuple(d for d in sample if isinstance(d, int))

    def describe_shape(self) -> str:
        """The shape as text: ``(batch, 1, 28, 28)``, with ``*`` for any size."""
        return "(" + ", ".join("*" if d is None else str(d) for d in self.shape) + ")"

    def validate(
        self, x: Tensor | np.ndarray, *, max_violations: int = DEFAULT_MAX_VIOLATIONS
    ) -> ValidationReport:
        """Check a batch against every rule and report every violation.

        Args:
            x: a torch tensor or numpy array (non-numeric numpy dtypes raise).
            max_violations: how many violations to list; ``counts`` stays complete.

        Returns:
            The report; ``report.ok`` is True when the batch satisfies the schema.

        Raises:
            InputValidationError: ``x`` is neither a tensor nor a numeric numpy array.
            ConfigurationError: ``max_violations`` is not an int >= 1.

        Example:
            >>> schema = TensorSchema(shape=("batch", "n", "n"))
            >>> [v.rule.value for v in schema.validate(torch.zeros(2, 3, 4)).violations]
            ['named_dim']
        """
        check_max_violations(max_violations)
        tensor = to_tensor(x)
        if _checks.certainly_valid(self, tensor):
            return _checks.valid_report(self, tensor)
        return _checks.build_report(self, _checks.inspect(self, tensor), max_violations)

    @classmethod
    def infer(
        cls,
        reference: Tensor,
        *,
        name: str = "input",
        batch_dim: str = "batch",
        stats: bool = True,
        bounds: tuple[float, float] | None = None,
        z_limit: float | None = None,
        min_std: float | None = None,
    ) -> TensorSchema:
        """A schema that accepts ``reference`` (N, ...) and refuses data unlike it.

        Args:
            reference: reference samples, finite, N >= 2 when ``stats``.
            name: the schema's name.
            batch_dim: the name of dimension 0; the other dimensions are fixed.
            stats: add per-feature statistics.
            bounds: the value range; None uses the observed min and max.
            z_limit: the stats limit; None uses twice the largest value seen on ``reference``
                (at least 3).
            min_std: floor for each feature's std; None uses 1% of the value range.

        Example:
            >>> ref = torch.rand(100, 4)
            >>> schema = TensorSchema.infer(ref, bounds=(0.0, 1.0))
            >>> schema.shape, schema.validate(ref).ok, schema.validate(ref + 2).ok
            (('batch', 4), True, False)
        """
        ref = to_tensor(reference).detach().cpu()
        if ref.dim() < 1 or ref.shape[0] < (2 if stats else 1) or ref.numel() == 0:
            raise ConfigurationError(
                f"infer: reference needs shape (N, ...) with N >= 2, got {tuple(ref.shape)}"
            )
        if ref.is_floating_point() and not bool(torch.isfinite(ref).all()):
            raise ConfigurationError("infer: reference data holds NaN or inf; clean it first")
        if bounds is not None and not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise ConfigurationError(f"infer: bounds must be (min, max), got {bounds!r:.80}")
        wide = ref.reshape(ref.shape[0], -1).double()
        low, high = bounds if bounds is not None else (float(wide.min()), float(wide.max()))
        feature_stats = None
        if stats:
            floor = min_std if min_std is not None else max(0.01 * (high - low), 1e-6)
            mean, std = wide.mean(0), wide.std(0).clamp_min(floor)
            base = FeatureStats(mean=mean, std=std, z_limit=1.0)
            rms = base.zscores(wide.float()).pow(2).mean(1).sqrt().max()
            limit = z_limit if z_limit is not None else max(3.0, 2.0 * float(rms))
            feature_stats = FeatureStats(mean=mean, std=std, z_limit=limit)
        return cls(shape=(batch_dim, *ref.shape[1:]), dtype=ref.dtype, min=low, max=high,
                   stats=feature_stats, name=name)

    def to_dict(self) -> dict[str, Any]:
        """JSON values; :meth:`from_dict` reads them back."""
        return {
            "name": self.name,
            "dtype": [dtype_name(d) for d in self.dtypes],
            "shape": ["*" if d is None else d for d in self.shape],
            "min": self.min,
            "max": self.max,
            "finite": self.finite,
            "stats": None if self.stats is None else self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "schema") -> TensorSchema:
        """Build a schema from a mapping like :meth:`to_dict`'s; errors name the bad key.

        Example:
            >>> TensorSchema.from_dict({"shape": ["batch", 3], "dtype": "float32"}).shape
            ('batch', 3)
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: expected a table / object, got {data!r}")
        unknown = set(data) - {"name", "dtype", "shape", "min", "max", "finite", "stats"}
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown key(s) {sorted(unknown)}; expected name, dtype, shape, min, "
                "max, finite, stats"
            )
        shape = require(data, "shape", list, where)
        dtype = data.get("dtype", "float32")
        dtypes = dtype if isinstance(dtype, list) else [dtype]
        stats = data.get("stats")
        if stats is not None:
            check_type(stats, "stats", dict, where)
            extra = set(stats) - {"mean", "std", "z_limit"}
            if extra:
                raise ConfigurationError(f"{where}: unknown key(s) in 'stats': {sorted(extra)}")
            for key in ("mean", "std"):
                values = require(stats, key, list, f"{where} [stats]")
                for v in values:
                    check_type(v, f"stats.{key}", (int, float), where)
            require(stats, "z_limit", (int, float), f"{where} [stats]")
        try:  # every error below names the file (``where``) too
            if stats is not None:
                stats = FeatureStats(mean=stats["mean"], std=stats["std"],
                                     z_limit=stats["z_limit"])
            return cls(
                shape=tuple(shape),
                dtype=tuple(parse_dtype(d) for d in dtypes),
                min=data.get("min"),
                max=data.get("max"),
                finite=data.get("finite", True),
                stats=stats,
                name=data.get("name", "input"),
            )
        except ConfigurationError as error:
            raise ConfigurationError(f"{where}: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TensorSchema:
        """Read a schema from a ``.toml`` or ``.json`` file.

        Raises:
            ConfigurationError: the file is missing, unreadable, not TOML/JSON, or a key is wrong
                (the message names the file and the key).
        """
        file = Path(path)
        return cls.from_dict(read_schema_file(file), where=f"schema file {file}")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the schema atomically as TOML or JSON, chosen by the file's suffix."""
        file = Path(path)
        if file.suffix.lower() == ".toml":
            atomic_write_text(file, dump_toml(self.to_dict()))
        elif file.suffix.lower() == ".json":
            atomic_write_text(file, json.dumps(self.to_dict(), indent=2) + "\n")
        else:
            raise ConfigurationError(f"save: use a .toml or .json file name, got {file.name!r}")
