"""The vectorised checks behind :meth:`TensorSchema.validate` and :class:`InputGuard`.

:func:`inspect` runs every check on a batch at once and keeps, per value rule, a boolean mask over
the samples with the count, the most extreme value and its position in each sample. Both the
report (:func:`build_report`) and the repair/substitute policies read the same masks, so what is
reported is exactly what is acted on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bastion.guard._report import Rule, ValidationReport, Violation
from bastion.guard._schema_io import dtype_name

if TYPE_CHECKING:
    from bastion.guard.schema import TensorSchema

__all__ = [
    "Inspection",
    "RuleHits",
    "build_report",
    "certainly_valid",
    "clamp_bounds",
    "inspect",
    "valid_report",
]

_VALUE_KINDS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def clamp_bounds(
    dtype: torch.dtype, low: float | None, high: float | None
) -> tuple[float | None, float | None] | None:
    """The bounds that clamp a tensor of ``dtype`` into ``[low, high]``, as values of the dtype.

    ``torch.clamp`` raises when a bound lies beyond a floating dtype's range (``70000.0`` for
    float16) and wraps an integer one silently (``min=-5`` clamps uint8 to 251). So each bound is
    moved inside the dtype's range: the largest finite value for floats (no finite value of the
    dtype lies beyond it anyway), rounded inwards and cut to the range for integers. Returns None
    when no value of the dtype lies in ``[low, high]`` (such a schema is refused when built). A
    None bound stays None.

    Example:
        >>> clamp_bounds(torch.float16, -1.0, 70000.0), clamp_bounds(torch.uint8, -5.0, 2.5)
        ((-1.0, 65504.0), (0, 2))
        >>> clamp_bounds(torch.int64, 0.2, 0.8) is None
        True
    """
    if dtype == torch.bool:
        return None, None  # no value rule applies to bool tensors
    if dtype.is_floating_point:
        finfo = torch.finfo(dtype)
        if (low is not None and low > finfo.max) or (high is not None and high < finfo.min):
            return None
        return (None if low is None else max(low, finfo.min),
                None if high is None else min(high, finfo.max))
    iinfo = torch.iinfo(dtype)
    lowest = iinfo.min if low is None else max(math.ceil(low), iinfo.min)
    highest = iinfo.max if high is None else min(math.floor(high), iinfo.max)
    if lowest > highest:
        return None
    return None if low is None else lowest, None if high is None else highest


@dataclasses.dataclass(frozen=True)
class RuleHits:
    """One value rule over a batch: which samples break it, how often, and the worst value."""

    rule: Rule
    mask: Tensor  # (B,) bool: the sample breaks the rule
    count: Tensor  # (B,) int64: how many values break it (features, for the z-score)
    value: Tensor  # (B,) float64: the offending value reported
    position: Tensor  # (B,) int64: flat index of that value inside the sample


@dataclasses.dataclass(frozen=True)
class Inspection:
    """Everything :func:`inspect` found: batch-level violations and per-sample rule hits."""

    structural: tuple[Violation, ...]
    hits: tuple[RuleHits, ...]
    num_samples: int | None
    sample_shape: tuple[int, ...]

    def invalid_mask(self) -> Tensor | None:
        """(B,) bool: the sample breaks at least one value rule; None without a batch dim."""
        if self.num_samples is None:
            return None
        mask = torch.zeros(self.num_samples, dtype=torch.bool)
        for hit in self.hits:
            mask = mask | hit.mask.cpu()
        return mask


def _structural(schema: TensorSchema, x: Tensor) -> list[Violation]:
    found: list[Violation] = []
    if x.dtype not in schema.dtypes:
        allowed = ", ".join(dtype_name(d) for d in schema.dtypes)
        found.append(
            Violation(
                field=f"{schema.name}.dtype",
                rule=Rule.DTYPE,
                value=str(x.dtype).removeprefix("torch."),
                sample_index=None,
                message=f"{schema.name}: dtype {str(x.dtype).removeprefix('torch.')} is not "
                f"allowed; expected {allowed}",
            )
        )
    if x.dim() != len(schema.shape):
        found.append(
            Violation(
                field=f"{schema.name}.shape",
                rule=Rule.RANK,
                value=tuple(x.shape),
                sample_index=None,
                message=f"{schema.name}: expected {len(schema.shape)} dimensions "
                f"{schema.describe_shape()}, got {x.dim()} with shape {tuple(x.shape)}",
            )
        )
        return found
    bound: dict[str, tuple[int, int]] = {}
    for axis, (want, got) in enumerate(zip(schema.shape, x.shape, strict=True)):
        field = f"{schema.name}.shape[{axis}]"
        if isinstance(want, int) and want != got:
            found.append(
                Violation(
                    field=field,
                    rule=Rule.SHAPE,
                    value=got,
                    sample_index=None,
                    message=f"{schema.name}: dimension {axis} must be {want}, got {got} "
                    f"(shape {tuple(x.shape)}, expected {schema.describe_shape()})",
                )
            )
        elif isinstance(want, str):
            if want not in bound:
                bound[want] = (axis, got)
            elif bound[want][1] != got:
                first_axis, size = bound[want]
                found.append(
                    Violation(
                        field=field,
                        rule=Rule.NAMED_DIM,
                        value=got,
                        sample_index=None,
                        message=f"{schema.name}: dimension {axis} is named {want!r}, which "
                        f"dimension {first_axis} binds to {size}; got {got} "
                        f"(shape {tuple(x.shape)})",
                    )
                )
    return found


def _extreme(flat: Tensor, bad: Tensor, *, largest: bool) -> tuple[Tensor, Tensor]:
    """Per row, the most extreme value among the ``bad`` entries and its flat position."""
    fill = -math.inf if largest else math.inf
    masked = torch.where(bad, flat.double(), torch.full_like(flat, fill, dtype=torch.float64))
    position = masked.argmax(1) if largest else masked.argmin(1)
    return masked.gather(1, position[:, None])[:, 0], position


def _located(rule: Rule, flat: Tensor, bad: Tensor, largest: bool | None) -> RuleHits:
    """Per-sample hits of one value rule; the offending value is located only when there is one.

    ``largest`` picks the most extreme offending value (True: maximum, False: minimum); None
    picks the first one. A clean batch (the common case) skips the search.
    """
    mask = bad.any(1)
    if not bool(mask.any()):
        zeros = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        return RuleHits(rule, mask, zeros, zeros.double(), zeros)
    if largest is None:
        position = bad.to(torch.uint8).argmax(1)
        value = flat.gather(1, position[:, None])[:, 0].double()
    else:
        value, position = _extreme(flat, bad, largest=largest)
    return RuleHits(rule, mask, bad.sum(1), value, position)


def _value_hits(schema: TensorSchema, x: Tensor) -> list[RuleHits]:
    if not (x.is_floating_point() or x.dtype in _VALUE_KINDS) or x.dim() == 0:
        return []
    if x.numel() == 0:
        return []  # no values to check (an empty batch, or samples with no elements)
    flat = x.reshape(x.shape[0], -1)
    hits: list[RuleHits] = []
    if schema.finite and x.is_floating_point():
        bad = ~torch.isfinite(flat)
        hits.append(_located(Rule.NON_FINITE, flat, bad, None))
    # The bounds as values of x's dtype: torch rounds a bound beyond the dtype to +-inf (70000
    # is inf in float16, and inf > inf is False), so +inf would pass a float16 max of 70000.
    low, high = clamp_bounds(x.dtype, schema.min, schema.max) or (schema.min, schema.max)
    if low is not None:
        hits.append(_located(Rule.MIN, flat, flat < low, False))
    if high is not None:
        hits.append(_located(Rule.MAX, flat, flat > high, True))
    stats = schema.stats
    if stats is not None and tuple(x.shape[1:]) == schema.sample_shape():
        z = stats.zscores(flat)
        rms = z.pow(2).mean(1).sqrt()
        bad_sample = rms > stats.z_limit
        position = z.abs().argmax(1)
        count = (z.abs() > stats.z_limit).sum(1)
        hits.append(RuleHits(Rule.ZSCORE, bad_sample, count, rms.double(), position))
    return hits


MARGIN = 1e-4  # relative: a z-score this close to its limit takes the exact (slow) path


def _structurally_ok(schema: TensorSchema, x: Tensor) -> bool:
    if x.dtype not in schema.dtypes or x.dim() != len(schema.shape) or x.dim() == 0:
        return False
    bound: dict[str, int] = {}
    for want, got in zip(schema.shape, x.shape, strict=True):
        if isinstance(want, int):
            if want != got:
                return False
        elif isinstance(want, str) and bound.setdefault(want, got) != got:
            return False
    return True


def certainly_valid(schema: TensorSchema, x: Tensor) -> bool:
    """True only when ``x`` satisfies every rule of ``schema``, checked in a handful of ops.

    The common case of a server is a valid batch; :func:`inspect` locates every problem and
    costs several times more. This fast check answers True only when it is sure: the batch
    range (one ``aminmax``, which propagates NaN) lies within ``[min, max]``, every value is
    finite, and the largest root-mean-square z-score is below the limit with a margin for
    rounding. Anything else (including a z-score within ``1e-4`` of the limit) returns False,
    and the caller runs the exact checks, so the verdict is always :func:`inspect`'s.
    """
    if not _structurally_ok(schema, x) or x.numel() == 0:
        return False
    if not (x.is_floating_point() or x.dtype in _VALUE_KINDS):
        return True  # bool tensors: no value rules apply
    flat = x.detach().reshape(x.shape[0], -1)  # (no warning converting a grad tensor's range)
    if schema.min is not None or schema.max is not None or (
            schema.finite and x.is_floating_point()):
        low, high = torch.aminmax(flat)
        low_v, high_v = float(low), float(high)
        if math.isnan(low_v) or math.isnan(high_v):
            return False
        if schema.finite and x.is_floating_point() and not (
                math.isfinite(low_v) and math.isfinite(high_v)):
            return False
        if (schema.min is not None and low_v < schema.min) or (
                schema.max is not None and high_v > schema.max):
            return False
    stats = schema.stats
    if stats is not None and tuple(x.shape[1:]) == schema.sample_shape():
        worst = stats.max_rms(flat)
        if not worst < stats.z_limit * (1.0 - MARGIN):
            return False
    return True


def valid_report(schema: TensorSchema, x: Tensor) -> ValidationReport:
    """The report of a batch :func:`certainly_valid` accepted: no violation."""
    return ValidationReport(
        schema_name=schema.name,
        num_samples=int(x.shape[0]),
        violations=(),
        invalid_samples=(),
        counts={},
        truncated=0,
    )


def inspect(schema: TensorSchema, x: Tensor) -> Inspection:
    """Run every check of ``schema`` on the tensor ``x`` (one pass per rule, no sample loops)."""
    structural = _structural(schema, x)
    return Inspection(
        structural=tuple(structural),
        hits=tuple(_value_hits(schema, x)),
        num_samples=int(x.shape[0]) if x.dim() else None,
        sample_shape=tuple(x.shape[1:]),
    )


def _position(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for size in reversed(shape):
        flat_index, rest = divmod(flat_index, max(size, 1))
        out.append(rest)
    return tuple(reversed(out))


def _message(schema: TensorSchema, hit_rule: Rule, index: int, count: int, value: float,
             where: tuple[int, ...]) -> str:
    head = f"{schema.name}: sample {index}:"
    if hit_rule is Rule.NON_FINITE:
        return f"{head} {count} non-finite value(s), the first ({value}) at position {where}"
    if hit_rule is Rule.MIN:
        return (f"{head} {count} value(s) below the minimum {schema.min}; the smallest is "
                f"{value} at position {where}")
    if hit_rule is Rule.MAX:
        return (f"{head} {count} value(s) above the maximum {schema.max}; the largest is "
                f"{value} at position {where}")
    assert schema.stats is not None
    return (f"{head} feature z-score {value:.4g} (root mean square over the features) exceeds "
            f"the limit {schema.stats.z_limit:.4g}; {count} feature(s) exceed it alone, the "
            f"furthest at position {where}")


def build_report(
    schema: TensorSchema, inspection: Inspection, max_violations: int
) -> ValidationReport:
    """Turn an :class:`Inspection` into a report listing up to ``max_violations`` violations."""
    violations: list[Violation] = list(inspection.structural)
    counts: dict[str, int] = {}
    for violation in inspection.structural:
        counts[violation.rule.value] = counts.get(violation.rule.value, 0) + 1
    for hit in inspection.hits:
        indices = hit.mask.nonzero()[:, 0]
        if not len(indices):
            continue
        counts[hit.rule.value] = int(len(indices))
        room = max(max_violations - len(violations), 0)
        shown = indices[:room]
        rows = zip(
            shown.tolist(),
            hit.count[shown].tolist(),
            hit.value[shown].tolist(),
            hit.position[shown].tolist(),
            strict=True,
        )
        for index, count, value, flat_index in rows:
            where = _position(flat_index, inspection.sample_shape)
            violations.append(
                Violation(
                    field=schema.name,
                    rule=hit.rule,
                    value=value,
                    sample_index=index,
                    message=_message(schema, hit.rule, index, count, value, where),
                )
            )
    invalid = inspection.invalid_mask()
    invalid_samples = () if invalid is None else tuple(invalid.nonzero()[:, 0].tolist())
    return ValidationReport(
        schema_name=schema.name,
        num_samples=inspection.num_samples,
        violations=tuple(violations[:max_violations]),
        invalid_samples=invalid_samples,
        counts=counts,
        truncated=sum(counts.values()) - min(len(violations), max_violations),
    )
