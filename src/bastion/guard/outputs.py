"""Checks of a model's outputs after inference: nothing implausible leaves unnoticed.

:class:`OutputChecker` looks at a batch of classifier outputs ``(B, C)`` and flags, per sample:
non-finite values, values outside a declared range, rows off the probability simplex (when
probabilities are expected) and predictions with low confidence (top-1 probability) or low
margin (top-1 minus top-2 probability; softmax of the logits when logits are expected).
Batch-level problems (wrong rank, wrong class count) are reported, not raised: a check never
crashes the service that calls it.

Example:
    >>> import torch
    >>> checker = OutputChecker(3, min_confidence=0.6)
    >>> nan = float("nan")
    >>> report = checker.check(torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.9], [nan, 0, 0]]))
    >>> report.predictions.tolist(), report.low_confidence.tolist(), report.non_finite.tolist()
    ([0, 0, -1], [False, True, False], [False, False, True])
    >>> report.counts
    {'non_finite': 1, 'out_of_range': 0, 'off_simplex': 0, 'low_confidence': 1, 'low_margin': 1}
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.results import Result, to_jsonable
from bastion.guard._convert import numpy_tensor
from bastion.guard._output_rows import SMALL, OutputVerdict, RowJudgement, judge_rows

__all__ = ["FLAGS", "OutputChecker", "OutputKind", "OutputReport", "OutputVerdict"]

FLAGS = ("non_finite", "out_of_range", "off_simplex", "low_confidence", "low_margin")
"""The per-sample flags of an :class:`OutputReport`, in the order of its ``counts``."""
_FLAGS = FLAGS

_SMALL = SMALL
"""Outputs with at most this many values are checked in plain Python first (see ``_judge``)."""


class OutputKind(str, enum.Enum):
    """What a model's outputs are: raw logits or probabilities."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"

    @classmethod
    def parse(cls, value: str | OutputKind) -> OutputKind:
        """The kind named ``value``: ``"logits"`` or ``"probabilities"``."""
        return parse_enum(cls, value, "output kind (expect)")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class OutputReport(Result):
    """Per-sample checks of one batch of outputs.

    Attributes:
        expect: what the outputs were checked as.
        num_samples: B.
        num_classes: C, or None when the shape is wrong.
        problems: batch-level problems (rank, class count); when any, the per-sample flags are
            all False and ``probabilities``/``predictions``/``confidence``/``margin`` are None.
        non_finite, out_of_range, off_simplex, low_confidence, low_margin: (B,) bool flags.
            Low confidence and margin are only judged on finite rows.
        probabilities: (B, C) float: the softmax of logits, or the outputs themselves.
        predictions: (B,) int64 top-1 class, -1 for rows with non-finite values.
        confidence: (B,) top-1 probability (NaN for non-finite rows).
        margin: (B,) top-1 minus top-2 probability (NaN for non-finite rows).
    """

    expect: OutputKind
    num_samples: int
    num_classes: int | None
    problems: tuple[str, ...]
    non_finite: Tensor
    out_of_range: Tensor
    off_simplex: Tensor
    low_confidence: Tensor
    low_margin: Tensor
    probabilities: Tensor | None
    predictions: Tensor | None
    confidence: Tensor | None
    margin: Tensor | None

    @property
    def invalid(self) -> Tensor:
        """(B,) bool: the sample's output is not usable (non-finite, out of range, off simplex)."""
        return self.non_finite | self.out_of_range | self.off_simplex

    @property
    def flagged(self) -> Tensor:
        """(B,) bool: any flag is set."""
        return self.invalid | self.low_confidence | self.low_margin

    @property
    def ok(self) -> bool:
        """No batch-level problem and no invalid sample (low confidence alone is not invalid)."""
        counts = self.counts
        return not self.problems and not (
            counts["non_finite"] or counts["out_of_range"] or counts["off_simplex"])

    @functools.cached_property
    def counts(self) -> dict[str, int]:
        """How many samples carry each flag (one reduction for all five, computed once)."""
        totals = torch.stack([getattr(self, flag) for flag in _FLAGS]).sum(1).tolist()
        return dict(zip(_FLAGS, totals, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON values: counts, flagged sample indices per flag, and the per-sample values."""
        def listed(t: Tensor | None) -> Any:
            return None if t is None else to_jsonable(t.detach().cpu().tolist())

        return {
            "schema_version": self.schema_version,
            "expect": self.expect.value,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "ok": self.ok,
            "problems": list(self.problems),
            "counts": self.counts,
            "flagged": {f: getattr(self, f).nonzero()[:, 0].tolist() for f in _FLAGS},
            "predictions": listed(self.predictions),
            "confidence": listed(self.confidence),
            "margin": listed(self.margin),
            "probabilities": listed(self.probabilities),
        }


def _range(value: object) -> tuple[float, float]:
    """``(low, high)``: two numbers (not bools), neither NaN, low < high."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    bounds: list[float] = []
    for v in pair:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                bounds.append(float(v))
            except OverflowError:  # an int beyond a float: same as +-inf
                bounds.append(math.copysign(math.inf, v))
    if not (len(pair) == len(bounds) == 2 and not math.isnan(bounds[0])
            and not math.isnan(bounds[1]) and bounds[0] < bounds[1]):
        raise ConfigurationError(f"OutputChecker: range must be (low, high), two numbers with "
                                 f"low < high, got {value!r:.80}")
    return bounds[0], bounds[1]


def _fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigurationError(f"OutputChecker: {name} must be in [0, 1], got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class OutputChecker:
    """Checks a classifier's outputs; see the module docstring.

    Args:
        num_classes: the expected C, or None to accept any C >= 2.
        min_confidence: flag samples whose top-1 probability is below this.
        min_margin: flag samples whose top-1 minus top-2 probability is below this.
        range: ``(low, high)`` every raw output value must lie in, or None.
        expect: ``"logits"`` or ``"probabilities"``.
        tol: tolerance of the simplex check (values in ``[-tol, 1 + tol]``, rows summing to
            ``1 +- tol``).

    Raises:
        ConfigurationError: an argument is out of its range.
    """

    num_classes: int | None = None
    _: dataclasses.KW_ONLY
    min_confidence: float = 0.5
    min_margin: float = 0.1
    range: tuple[float, float] | None = None
    expect: OutputKind | str = OutputKind.LOGITS
    tol: float = 1e-3

    def __post_init__(self) -> None:
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
            or self.num_classes < 2
        ):
            raise ConfigurationError(f"OutputChecker: num_classes must be >= 2, got "
                                     f"{self.num_classes!r}")
        object.__setattr__(self, "min_confidence", _fraction(self.min_confidence,
                                                             "min_confidence"))
        object.__setattr__(self, "min_margin", _fraction(self.min_margin, "min_margin"))
        object.__setattr__(self, "expect", OutputKind.parse(self.expect))
        if self.range is not None:
            object.__setattr__(self, "range", _range(self.range))
        if not (isinstance(self.tol, (int, float)) and 0 < self.tol < 1):
            raise ConfigurationError(f"OutputChecker: tol must be in (0, 1), got {self.tol!r}")

    def check(self, outputs: Tensor | np.ndarray) -> OutputReport:
        """Check a batch of outputs ``(B, C)``; never raises for any tensor or numeric array.

        Example:
            >>> probs = torch.tensor([[0.7, 0.3], [0.9, 0.3]])
            >>> OutputChecker(expect="probabilities").check(probs).off_simplex.tolist()
            [False, True]
        """
        prepared = self._prepare(outputs)
        if isinstance(prepared, OutputReport):
            return prepared
        out, batch, classes = prepared
        if out.numel() <= _SMALL and self.expect is OutputKind.LOGITS:
            fast = self._small(out, batch, classes)
            if fast is not None:
                return fast
        return self._tensor_check(out, batch, classes)

    __call__ = check

    def verdict(self, outputs: Tensor | np.ndarray) -> OutputVerdict:
        """What a service needs of :meth:`check`, in plain Python values: whether the batch
        may be answered, the flag counts and flagged samples, and the answer (probabilities
        and top-1 class per sample). Never raises for any tensor or numeric array.

        Small batches of logits (the common request of a server) are judged in plain Python,
        without building the per-sample tensors of a report; the flags are always
        :meth:`check`'s.

        Example:
            >>> v = OutputChecker(3).verdict(torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.9]]))
            >>> v.ok, v.predictions, v.flagged
            (True, [0, 0], {'low_confidence': [1], 'low_margin': [1]})
        """
        prepared = self._prepare(outputs)
        if not isinstance(prepared, OutputReport):
            out, batch, classes = prepared
            if out.numel() <= _SMALL and self.expect is OutputKind.LOGITS:
                judged = self._judge(out)
                if judged is not None:
                    return OutputVerdict.of_rows(judged)
            prepared = self._tensor_check(out, batch, classes)
        return OutputVerdict.of(prepared)

    def _prepare(self, outputs: object) -> OutputReport | tuple[Tensor, int, int]:
        """The outputs as a float32/64 ``(B, C)`` tensor with B and C, or the report of a
        batch-level problem."""
        expect = self.expect
        assert isinstance(expect, OutputKind)  # (parsed when constructed)
        out: object = outputs
        if isinstance(outputs, np.ndarray) and outputs.dtype.kind in "iuf":
            out = numpy_tensor(outputs)  # (a big-endian array: a native copy, same values)
        if not isinstance(out, Tensor) or out.dtype == torch.bool or out.is_complex():
            kind = type(outputs).__name__ if not isinstance(out, Tensor) else str(out.dtype)
            return self._broken(expect, 0, None, f"outputs must be a real tensor, got {kind}")
        if out.layout is not torch.strided or out.is_meta:  # no values to check in place
            kind = "meta" if out.is_meta else str(out.layout).removeprefix("torch.")
            return self._broken(expect, 0, None, f"outputs must be a dense tensor, got {kind}")
        batch = int(out.shape[0]) if out.dim() else 0
        if out.dim() != 2:
            return self._broken(expect, batch, None,
                                f"outputs must have shape (B, C), got {tuple(out.shape)}")
        classes = int(out.shape[1])
        if classes < 2 or (self.num_classes is not None and classes != self.num_classes):
            want = self.num_classes if self.num_classes is not None else ">= 2"
            return self._broken(expect, batch, classes,
                                f"outputs have {classes} classes, expected {want}")
        if out.requires_grad:
            out = out.detach()
        if out.dtype not in (torch.float32, torch.float64):
            out = out.float()
        return out, batch, classes

    def _tensor_check(self, out: Tensor, batch: int, classes: int) -> OutputReport:
        """The exact checks, in tensor ops (any batch, any row)."""
        expect = self.expect
        assert isinstance(expect, OutputKind)
        # Few ops on the common path (every row finite): at batch size 1 each torch op costs
        # more than its arithmetic, and this runs on every request of a server.

        all_finite = bool(torch.isfinite(out).all())
        none = torch.zeros(batch, dtype=torch.bool, device=out.device)  # read-only, shared
        non_finite = none if all_finite else ~torch.isfinite(out).all(1)
        out_of_range = none
        if self.range is not None:
            out_of_range = ((out < self.range[0]) | (out > self.range[1])).any(1)
        if expect is OutputKind.PROBABILITIES:
            probs = out
            off = ((out < -self.tol) | (out > 1 + self.tol)).any(1)
            off_simplex = off | ((out.sum(1) - 1).abs() > self.tol)
        else:
            probs = torch.softmax(out, dim=1)
            off_simplex = none
        if all_finite:  # the common case: no row to mask
            top = probs.topk(2, dim=1)
            confidence, second = top.values.unbind(1)
            margin = confidence - second
            predictions = top.indices[:, 0]
            low_confidence = confidence < self.min_confidence
            low_margin = margin < self.min_margin
        else:
            finite = ~non_finite
            probs = torch.where(finite[:, None], probs, torch.full_like(probs, math.nan))
            top = torch.where(finite[:, None], probs, torch.zeros_like(probs)).topk(2, dim=1)
            nan = torch.full_like(top.values[:, 0], math.nan)
            confidence = torch.where(finite, top.values[:, 0], nan)
            margin = torch.where(finite, top.values[:, 0] - top.values[:, 1], nan)
            predictions = torch.where(finite, top.indices[:, 0],
                                      torch.full_like(top.indices[:, 0], -1))
            low_confidence = finite & (confidence < self.min_confidence)
            low_margin = finite & (margin < self.min_margin)
        return OutputReport(
            expect=expect, num_samples=batch, num_classes=classes, problems=(),
            non_finite=non_finite, out_of_range=out_of_range, off_simplex=off_simplex,
            low_confidence=low_confidence, low_margin=low_margin,
            probabilities=probs, predictions=predictions, confidence=confidence, margin=margin,
        )

    def _judge(self, out: Tensor) -> RowJudgement | None:
        """The rows judged in plain Python (see :func:`~bastion.guard._output_rows.judge_rows`);
        None when in doubt."""
        low, high = self.range if self.range is not None else (-math.inf, math.inf)
        return judge_rows(out.tolist(), low=low, high=high,
                          min_confidence=self.min_confidence, min_margin=self.min_margin)

    def _small(self, out: Tensor, batch: int, classes: int) -> OutputReport | None:
        """The report of a small batch of finite logits, its flags judged in plain Python; None
        when in doubt, and the tensor path (the exact one) decides.

        At batch 1 each torch op costs 5-10 µs of dispatch whatever its size, and the tensor
        path takes a dozen; here one ``tolist`` and a softmax in float64 decide every flag. The
        returned tensors are the tensor path's: softmax and top-2 in float32.
        """
        judged = self._judge(out)
        if judged is None:
            return None
        low_confidence, low_margin = judged.low_confidence, judged.low_margin
        probs = torch.softmax(out, dim=1)
        top2 = probs.topk(2, dim=1)
        confidence, second = top2.values.unbind(1)
        none = torch.zeros(batch, dtype=torch.bool, device=out.device)
        report = OutputReport(
            expect=OutputKind.LOGITS, num_samples=batch, num_classes=classes, problems=(),
            non_finite=none, out_of_range=none, off_simplex=none,
            low_confidence=torch.tensor(low_confidence) if any(low_confidence) else none,
            low_margin=torch.tensor(low_margin) if any(low_margin) else none,
            probabilities=probs, predictions=top2.indices.select(1, 0), confidence=confidence,
            margin=confidence - second,
        )
        # known without a reduction: seed the cached property
        report.__dict__["counts"] = {"non_finite": 0, "out_of_range": 0, "off_simplex": 0,
                                     "low_confidence": sum(low_confidence),
                                     "low_margin": sum(low_margin)}
        return report

    @staticmethod
    def _broken(expect: OutputKind, batch: int, classes: int | None, problem: str) -> OutputReport:
        none = torch.zeros(batch, dtype=torch.bool)
        return OutputReport(
            expect=expect, num_samples=batch, num_classes=classes, problems=(problem,),
            non_finite=none, out_of_range=none, off_simplex=none, low_confidence=none,
            low_margin=none, probabilities=None, predictions=None, confidence=None, margin=None,
        )
