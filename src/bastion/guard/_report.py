"""Violations and validation reports of :class:`~bastion.guard.schema.TensorSchema`."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from bastion.core.errors import ConfigurationError
from bastion.core.results import Result

__all__ = [
    "DEFAULT_MAX_VIOLATIONS",
    "Rule",
    "ValidationReport",
    "Violation",
    "check_max_violations",
]

DEFAULT_MAX_VIOLATIONS = 1000
"""How many violations a report lists; the per-rule totals in ``counts`` are always complete."""


def check_max_violations(value: object) -> int:
    """``value`` if it is an int >= 1 (not a bool): a report (and a rejection) must list at
    least the first violation."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"max_violations must be an int >= 1, got {value!r}")
    return value


class Rule(str, enum.Enum):
    """The rule a violation breaks. Batch-level: type, dtype, rank, shape, named_dim; per sample:
    non_finite, min, max, zscore."""

    TYPE = "type"
    DTYPE = "dtype"
    RANK = "rank"
    SHAPE = "shape"
    NAMED_DIM = "named_dim"
    NON_FINITE = "non_finite"
    MIN = "min"
    MAX = "max"
    ZSCORE = "zscore"

    @property
    def structural(self) -> bool:
        """True for rules about the whole tensor (no sample index, cannot be repaired)."""
        return self in (Rule.TYPE, Rule.DTYPE, Rule.RANK, Rule.SHAPE, Rule.NAMED_DIM)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Violation:
    """One way a batch breaks a schema.

    Attributes:
        field: what is wrong: ``"input"`` (values), ``"input.dtype"``, ``"input.shape[2]"``.
        rule: the rule broken.
        value: the offending value: the dtype name, the size or shape, or the most extreme value
            of the sample (the z-score for :attr:`Rule.ZSCORE`).
        sample_index: the sample (index along dimension 0), or None for batch-level rules.
        message: one sentence saying what is wrong and where.
    """

    field: str
    rule: Rule
    value: float | int | str | tuple[int, ...] | None
    sample_index: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN/inf: keep what it was as text
        return {
            "field": self.field,
            "rule": self.rule.value,
            "value": list(value) if isinstance(value, tuple) else value,
            "sample_index": self.sample_index,
            "message": self.message,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidationReport(Result):
    """Every violation of one batch. ``counts`` holds complete totals per rule.

    Attributes:
        schema_name: the schema's name.
        num_samples: size of dimension 0, or None for a 0-d tensor.
        violations: the violations, batch-level first, then per rule by sample (capped).
        invalid_samples: indices of the samples that break at least one value rule.
        counts: per rule (its value string), how many samples (or batch-level problems) break it.
        truncated: how many violations were left out of ``violations`` by the cap.
    """

    schema_name: str
    num_samples: int | None
    violations: tuple[Violation, ...]
    invalid_samples: tuple[int, ...]
    counts: dict[str, int]
    truncated: int = 0

    @property
    def ok(self) -> bool:
        """True when the batch satisfies the schema."""
        return not self.counts

    @property
    def structural(self) -> tuple[Violation, ...]:
        """The batch-level violations (dtype, rank, shape, named dimension)."""
        return tuple(v for v in self.violations if v.rule.structural)

    def summary(self) -> str:
        """One line without any input value: ``"3 violation(s): max x2, dtype x1"``."""
        if self.ok:
            return "valid"
        parts = ", ".join(f"{rule} x{n}" for rule, n in sorted(self.counts.items()))
        return f"{sum(self.counts.values())} violation(s): {parts}"
