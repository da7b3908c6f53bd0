"""What to do with a batch that breaks its schema: reject it, repair it, or substitute samples.

:class:`InputGuard` pairs a :class:`~bastion.guard.schema.TensorSchema` with an
:class:`InvalidDataPolicy`:

- ``reject`` (the default) raises :class:`~bastion.core.errors.InputValidationError` carrying
  every violation;
- ``repair`` replaces NaN and +-inf (by the bound, a declared ``fill`` value, or the feature
  mean), clips values into ``[min, max]`` and clips features of samples whose z-score is too
  high into ``mean +- z_limit * std``. Wrong dtype, rank or shape cannot be repaired: rejected;
- ``substitute`` replaces every invalid sample by a declared safe ``default`` sample, itself
  checked against the schema when the guard is built. Batch-level problems are rejected.

Every action (each rejected violation, each repaired or substituted sample and rule) is returned
in :attr:`GuardResult.actions` and logged on the ``bastion.guard`` logger with the schema, sample
index, rule and reason - never with input values. The same guard cleans training data through
:func:`guard_dataset`.

Example:
    >>> import torch
    >>> from bastion.guard.schema import TensorSchema
    >>> guard = InputGuard(TensorSchema(shape=("batch", 2), min=0.0, max=1.0), policy="repair")
    >>> result = guard.guard(torch.tensor([[0.5, 2.0], [float("nan"), 0.5]]))
    >>> result.x.tolist(), [(a.sample_index, a.rule.value, a.action.value) for a in result.actions]
    ([[0.5, 1.0], [0.0, 0.5]], [(0, 'max', 'clip'), (1, 'non_finite', 'fill')])
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.results import Result
from bastion.guard import _checks
from bastion.guard._convert import as_tensor
from bastion.guard._fast_validator import fast_validator
from bastion.guard._guard_args import check_fill, check_logger, default_sample
from bastion.guard._report import (
    DEFAULT_MAX_VIOLATIONS,
    Rule,
    ValidationReport,
    check_max_violations,
)
from bastion.guard.schema import TensorSchema

__all__ = [
    "Action",
    "ActionKind",
    "GuardResult",
    "InputGuard",
    "InvalidDataPolicy",
]

LOGGER_NAME = "bastion.guard"
_SHRINK = 1.0 - 1e-4  # z-band clipping stays just inside the limit despite rounding


class InvalidDataPolicy(str, enum.Enum):
    """What an :class:`InputGuard` does with invalid data."""

    REJECT = "reject"
    REPAIR = "repair"
    SUBSTITUTE = "substitute"

    @classmethod
    def parse(cls, value: str | InvalidDataPolicy) -> InvalidDataPolicy:
        """The policy named ``value`` (case-insensitive).

        Example:
            >>> InvalidDataPolicy.parse("Repair")
            <InvalidDataPolicy.REPAIR: 'repair'>
        """
        return parse_enum(cls, value, "invalid-data policy")


class ActionKind(str, enum.Enum):
    """What was done: the batch refused, values filled or clipped, a sample substituted."""

    REJECT = "reject"
    FILL = "fill"
    CLIP = "clip"
    SUBSTITUTE = "substitute"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Action:
    """One thing the guard did, and why. ``detail`` never holds input values."""

    sample_index: int | None
    rule: Rule
    action: ActionKind
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"sample_index": self.sample_index, "rule": self.rule.value,
                "action": self.action.value, "detail": self.detail}


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GuardResult(Result):
    """The guarded batch and what happened to it.

    Attributes:
        x: the batch to use (repaired or substituted; the input tensor itself when valid or
            rejected).
        report: the validation report of the input *before* any change.
        actions: every action taken, in order.
        rejected: True when the batch must not be used (only returned, not raised, when
            ``guard(x, raise_on_reject=False)``).
    """

    x: Tensor
    report: ValidationReport
    actions: tuple[Action, ...]
    rejected: bool

    @property
    def changed_samples(self) -> tuple[int, ...]:
        """Indices of the samples that were repaired or substituted."""
        return tuple(sorted({a.sample_index for a in self.actions
                             if a.sample_index is not None and a.action is not ActionKind.REJECT}))

    def to_dict(self) -> dict[str, Any]:
        """JSON values; the tensor itself is summarised by its shape and dtype."""
        return {
            "schema_version": self.schema_version,
            "shape": list(self.x.shape),
            "dtype": str(self.x.dtype).removeprefix("torch."),
            "report": self.report.to_dict(),
            "actions": [a.to_dict() for a in self.actions],
            "rejected": self.rejected,
        }


_RULE_TEXT = {
    Rule.NON_FINITE: "non-finite values",
    Rule.MIN: "values below the minimum",
    Rule.MAX: "values above the maximum",
    Rule.ZSCORE: "feature z-score above the limit",
}


@dataclasses.dataclass(frozen=True, eq=False)
class InputGuard:
    """A schema with its invalid-data policy; see the module docstring.

    Args:
        schema: the schema every batch must satisfy.
        policy: ``"reject"``, ``"repair"`` or ``"substitute"`` (or an :class:`InvalidDataPolicy`).
        default: the safe sample (shape ``schema.shape[1:]``) for ``substitute``: a tensor, a
            numeric numpy array or nested lists of numbers.
        logger: where actions are logged (a ``logging.Logger`` or ``LoggerAdapter``); default
            the ``bastion.guard`` logger.
        fill: for ``repair``, the value that replaces NaN (and +-inf without a bound); default
            the feature mean when the schema has stats, else 0 clipped into the range.
        max_violations: how many violations a report (and a rejection) lists, >= 1.

    Raises:
        ConfigurationError: unknown policy, a missing or invalid default, a fill value outside
            the range (or beyond a floating dtype of the schema), a logger that is not one, or
            ``max_violations`` not an int >= 1.
    """

    schema: TensorSchema
    _: dataclasses.KW_ONLY
    policy: InvalidDataPolicy | str = InvalidDataPolicy.REJECT
    default: Tensor | None = None
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None
    fill: float | None = None
    max_violations: int = DEFAULT_MAX_VIOLATIONS
    _fast: Callable[[object], bool] | None = dataclasses.field(
        init=False, repr=False, compare=False, default=None)  # see passes()

    def __post_init__(self) -> None:
        if not isinstance(self.schema, TensorSchema):
            raise ConfigurationError(f"InputGuard needs a TensorSchema, got {self.schema!r}")
        policy = InvalidDataPolicy.parse(self.policy)
        object.__setattr__(self, "policy", policy)
        check_max_violations(self.max_violations)
        if self.logger is None:
            object.__setattr__(self, "logger", logging.getLogger(LOGGER_NAME))
        check_logger(self.logger)
        if self.fill is not None:
            check_fill(self.fill, self.schema)
        if policy is InvalidDataPolicy.SUBSTITUTE:
            if self.default is None:
                raise ConfigurationError("policy 'substitute' needs a default sample")
            default = default_sample(self.default)
            report = self.schema.validate(default.unsqueeze(0))
            if not report.ok:
                problems = "; ".join(v.message for v in report.violations[:3])
                raise ConfigurationError(f"the default sample breaks the schema: {problems}")
            object.__setattr__(self, "default", default)
        object.__setattr__(self, "_fast", fast_validator(self.schema))

    def passes(self, x: object) -> bool:
        """True when :meth:`guard` would hand ``x`` back unchanged, with no violation and no
        action: decided in a few operations for a server's common case (a valid float32 batch
        on the CPU). False only means that :meth:`guard` must decide.

        Example:
            >>> from bastion.guard.schema import TensorSchema
            >>> guard = InputGuard(TensorSchema(shape=("batch", 2), min=0.0, max=1.0))
            >>> guard.passes(torch.tensor([[0.5, 1.0]])), guard.passes(torch.tensor([[0.5, 2.0]]))
            (True, False)
        """
        fast = self._fast
        return fast is not None and fast(x)

    def guard(self, x: object, *, raise_on_reject: bool = True) -> GuardResult:
        """Validate ``x`` and apply the policy.

        Args:
            x: a tensor, numeric numpy array or nested lists (see :func:`as_tensor`).
            raise_on_reject: raise on rejection (default); otherwise return a result with
                ``rejected=True``.

        Returns:
            The batch to use, the report of the input, and every action taken.

        Raises:
            InputValidationError: the batch is rejected (policy ``reject``, or a problem the
                policy cannot fix), with every listed violation in ``violations``; always when
                ``x`` cannot be converted to a tensor.
        """
        if self.passes(x):
            assert isinstance(x, Tensor)
            report = _checks.valid_report(self.schema, x)
            return GuardResult(x=x, report=report, actions=(), rejected=False)
        try:
            tensor = as_tensor(x, self.schema)
        except InputValidationError as error:
            self._log(Action(sample_index=None, rule=Rule.TYPE, action=ActionKind.REJECT,
                             detail=str(error)))
            raise
        if _checks.certainly_valid(self.schema, tensor):  # the common case, in a few ops
            report = _checks.valid_report(self.schema, tensor)
            return GuardResult(x=tensor, report=report, actions=(), rejected=False)
        inspection = _checks.inspect(self.schema, tensor)
        report = _checks.build_report(self.schema, inspection, self.max_violations)
        if report.ok:
            return GuardResult(x=tensor, report=report, actions=(), rejected=False)
        if self.policy is InvalidDataPolicy.REJECT or inspection.structural:
            return self._reject(tensor, report, raise_on_reject)
        if self.policy is InvalidDataPolicy.REPAIR:
            fixed, actions = self._repair(tensor, inspection)
        else:
            fixed, actions = self._substitute(tensor, inspection)
        after = self.schema.validate(fixed)
        if not after.ok:  # cannot happen for float32/64 data; half precision may round back out
            return self._reject(tensor, report, raise_on_reject,
                                note=f"repair left {after.summary()}")
        for action in actions:
            self._log(action)
        return GuardResult(x=fixed, report=report, actions=tuple(actions), rejected=False)

    __call__ = guard

    def _log(self, action: Action) -> None:
        assert self.logger is not None
        self.logger.warning(
            "input guard %s (%s): %s sample=%s rule=%s: %s",
            self.schema.name, getattr(self.policy, "value", self.policy), action.action.value,
            action.sample_index, action.rule.value, action.detail,
            extra={"bastion_guard": action.to_dict()},
        )

    def _reject(self, tensor: Tensor, report: ValidationReport, raise_on_reject: bool,
                note: str = "") -> GuardResult:
        why = "" if self.policy is InvalidDataPolicy.REJECT else (
            f"; policy {getattr(self.policy, 'value', self.policy)} cannot fix "
            + ("it" if note else "the dtype or shape") + (f" ({note})" if note else ""))
        actions = tuple(
            Action(sample_index=v.sample_index, rule=v.rule, action=ActionKind.REJECT,
                   detail=(v.message if v.rule.structural else _RULE_TEXT[v.rule]) + why)
            for v in report.violations
        )
        for action in actions:
            self._log(action)
        if raise_on_reject:
            first = report.violations[0]
            indices = [v.sample_index for v in report.violations if v.sample_index is not None]
            raise InputValidationError(
                f"{self.schema.name} rejected: {report.summary()}{why}. First: {first.message}",
                sample_index=indices[0] if indices else None,
                violations=report.violations,
            )
        return GuardResult(x=tensor, report=report, actions=actions, rejected=True)

    def _nan_fill(self, flat: Tensor) -> Tensor:
        schema = self.schema
        if self.fill is not None:
            return torch.full_like(flat[:1], self.fill)
        if schema.stats is not None:
            return schema.stats.mean.to(flat.device, flat.dtype)[None, :]
        low = -math.inf if schema.min is None else schema.min
        high = math.inf if schema.max is None else schema.max
        return torch.full_like(flat[:1], min(max(0.0, low), high))

    def _repair(self, x: Tensor, inspection: _checks.Inspection) -> tuple[Tensor, list[Action]]:
        schema = self.schema
        flat = x.reshape(x.shape[0], -1).clone()
        hits = {hit.rule: hit for hit in inspection.hits}
        actions: list[Action] = []
        if Rule.NON_FINITE in hits:
            fill = self._nan_fill(flat).expand_as(flat)
            low, high = self._bounds(flat)
            top = fill if high is None else torch.full_like(flat, high)
            bottom = fill if low is None else torch.full_like(flat, low)
            flat = torch.where(torch.isnan(flat), fill, flat)
            flat = torch.where(flat == math.inf, top, torch.where(flat == -math.inf, bottom, flat))
            actions += _actions(hits[Rule.NON_FINITE], ActionKind.FILL,
                                "replaced {n} non-finite value(s) (NaN by the fill value, "
                                "+-inf by the bound)")
        flat = self._clamp_range(flat)
        for rule, where in ((Rule.MIN, "up to the minimum"), (Rule.MAX, "down to the maximum")):
            if rule in hits:
                actions += _actions(hits[rule], ActionKind.CLIP, f"clipped {{n}} value(s) {where}")
        stats = schema.stats
        if stats is not None and tuple(x.shape[1:]) == schema.sample_shape():
            z = stats.zscores(flat)
            bad = z.pow(2).mean(1).sqrt() > stats.z_limit
            if bool(bad.any()):
                mean = stats.mean.to(flat.device, flat.dtype)
                band = (stats.z_limit * _SHRINK) * stats.std.to(flat.device, flat.dtype)
                clipped = torch.minimum(torch.maximum(flat, mean - band), mean + band)
                flat = self._clamp_range(torch.where(bad[:, None], clipped, flat))
                count = (z.abs() > stats.z_limit * _SHRINK).sum(1)
                hit = _checks.RuleHits(Rule.ZSCORE, bad, count, count.double(), count)
                actions += _actions(hit, ActionKind.CLIP,
                                    "clipped {n} feature(s) into mean +- z_limit * std")
        actions.sort(key=lambda a: a.sample_index or 0)
        return flat.reshape(x.shape), actions

    def _bounds(self, flat: Tensor) -> tuple[float | None, float | None]:
        """The schema's range as bounds of ``flat``'s dtype (one of the schema's dtypes, whose
        range the schema checked when built; see :func:`_checks.clamp_bounds`)."""
        bounds = _checks.clamp_bounds(flat.dtype, self.schema.min, self.schema.max)
        assert bounds is not None
        return bounds

    def _clamp_range(self, flat: Tensor) -> Tensor:
        low, high = self._bounds(flat)
        if low is None and high is None:
            return flat
        return flat.clamp(min=low, max=high)

    def _substitute(self, x: Tensor, inspection: _checks.Inspection) -> tuple[Tensor, list[Action]]:
        assert isinstance(self.default, Tensor)
        invalid = inspection.invalid_mask()
        assert invalid is not None
        invalid = invalid.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        fixed = torch.where(invalid, self.default.to(x.device, x.dtype).unsqueeze(0), x)
        actions: list[Action] = []
        for hit in inspection.hits:
            actions += _actions(hit, ActionKind.SUBSTITUTE,
                                f"{_RULE_TEXT[hit.rule]} ({{n}}): sample replaced by the default")
        actions.sort(key=lambda a: a.sample_index or 0)
        return fixed, actions


def _actions(hit: _checks.RuleHits, kind: ActionKind, template: str) -> list[Action]:
    indices = hit.mask.nonzero()[:, 0]
    return [
        Action(sample_index=index, rule=hit.rule, action=kind, detail=template.format(n=n))
        for index, n in zip(indices.tolist(), hit.count[indices].tolist(), strict=True)
    ]
