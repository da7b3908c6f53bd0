"""Small batches of logits judged in plain Python: softmax, top-1, confidence and margin.

A server answers batches of one or a few samples. There, each torch op costs far more than its
arithmetic: 2-5 µs of dispatch when called in a loop, and 15-20 µs inside a server, where the
request's other work (HTTP parsing, JSON, the model) has evicted the op's code from the caches
since the last request. A softmax over ten logits is a few microseconds of Python. So the output
checks and the answer of a small batch are computed here from ``tolist()``, and the tensor path
(:meth:`OutputChecker.check <bastion.guard.outputs.OutputChecker.check>`) decides whatever this
is not sure of (see :func:`judge_rows`).
"""

from __future__ import annotations

import array
import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from bastion.guard.outputs import OutputReport

__all__ = ["DOUBT", "SMALL", "OutputVerdict", "RowJudgement", "answer", "judge_rows"]

SMALL = 64
"""Outputs with at most this many values are judged here first."""
DOUBT = 1e-5
"""How close to a threshold (or a tie for top-1) a row may come before :func:`judge_rows`
defers to the tensor path: far above the float32-vs-float64 softmax difference (about 1e-7)."""


@dataclasses.dataclass(frozen=True, eq=False)
class RowJudgement:
    """Per-row results of a batch of finite logits (lists of plain Python values).

    ``probabilities`` are the float64 softmax rounded to float32 (the tensor path's dtype; the
    two differ by at most a unit in the last place of float32).
    """

    probabilities: list[list[float]]
    predictions: list[int]
    low_confidence: list[bool]
    low_margin: list[bool]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class OutputVerdict:
    """The output checks of one batch as a service needs them
    (:meth:`~bastion.guard.outputs.OutputChecker.verdict`).

    Attributes:
        ok: the batch may be answered (:attr:`~bastion.guard.outputs.OutputReport.ok`).
        problems: batch-level problems (rank, class count).
        counts: how many samples carry each flag of :data:`~bastion.guard.outputs.FLAGS`.
        flagged: the indices of the flagged samples, for each flag raised at least once.
        probabilities: per sample, the softmax of the logits (or the outputs themselves) as
            float32 values; None when there are problems.
        predictions: per sample, the top-1 class (-1 for rows with non-finite values); None
            when there are problems.
    """

    ok: bool
    problems: tuple[str, ...]
    counts: dict[str, int]
    flagged: dict[str, list[int]]
    probabilities: list[list[float]] | None
    predictions: list[int] | None

    @classmethod
    def of(cls, report: OutputReport) -> OutputVerdict:
        """The verdict of a full report."""
        counts = report.counts
        return cls(
            ok=report.ok, problems=report.problems, counts=counts,
            flagged={flag: getattr(report, flag).nonzero()[:, 0].tolist()
                     for flag, n in counts.items() if n},
            probabilities=None if report.probabilities is None
            else report.probabilities.float().tolist(),
            predictions=None if report.predictions is None else report.predictions.tolist(),
        )

    @classmethod
    def of_rows(cls, judged: RowJudgement) -> OutputVerdict:
        """The verdict of rows judged in plain Python (finite, no value out of range)."""
        low_confidence, low_margin = judged.low_confidence, judged.low_margin
        flagged = {}
        if any(low_confidence):
            flagged["low_confidence"] = [i for i, r in enumerate(low_confidence) if r]
        if any(low_margin):
            flagged["low_margin"] = [i for i, r in enumerate(low_margin) if r]
        return cls(
            ok=True, problems=(),
            counts={"non_finite": 0, "out_of_range": 0, "off_simplex": 0,
                    "low_confidence": sum(low_confidence), "low_margin": sum(low_margin)},
            flagged=flagged, probabilities=judged.probabilities, predictions=judged.predictions,
        )

    def to_dict(self) -> dict[str, Any]:
        """The checks as JSON values, without the answer: ok, problems, counts, flagged."""
        return {"ok": self.ok, "problems": list(self.problems), "counts": dict(self.counts),
                "flagged": {flag: list(i) for flag, i in self.flagged.items()}}


def _softmax(row: list[float]) -> tuple[list[float], int]:
    """A finite row's softmax (float64) and the index of its first maximal value."""
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)  # in [1, C]: no cancellation, rounding far below DOUBT
    return [e / total for e in exps], row.index(top)


def judge_rows(
    rows: list[list[float]],
    *,
    low: float,
    high: float,
    min_confidence: float,
    min_margin: float,
) -> RowJudgement | None:
    """The judgement of finite rows of logits (at least two classes each), or None when in
    doubt, so that the exact tensor path decides.

    Gives up on anything but the plain case: a non-finite value, a value within :data:`DOUBT`
    of the range ``[low, high]``, a top-1 tie within :data:`DOUBT`, or a confidence or margin
    within :data:`DOUBT` of its threshold. Otherwise every flag equals the tensor path's.
    """
    probabilities: list[list[float]] = []
    predictions: list[int] = []
    low_confidence: list[bool] = []
    low_margin: list[bool] = []
    ranged = low != -math.inf or high != math.inf
    for row in rows:
        if not math.isfinite(sum(row)):  # NaN, an infinity, or so large that the sum overflows
            return None
        if ranged and (min(row) - low < DOUBT or high - max(row) < DOUBT):
            return None
        probs, first = _softmax(row)
        confidence = probs[first]
        margin = confidence - sorted(probs)[-2]
        if (margin < DOUBT or abs(confidence - min_confidence) < DOUBT
                or abs(margin - min_margin) < DOUBT):
            return None
        probabilities.append(array.array("f", probs).tolist())
        predictions.append(first)
        low_confidence.append(confidence < min_confidence)
        low_margin.append(margin < min_margin)
    return RowJudgement(probabilities, predictions, low_confidence, low_margin)


def answer(logits: Tensor) -> tuple[list[list[float]], list[int]] | None:
    """The softmax probabilities (float32 values) and top-1 class of each row of real
    ``(B, C)`` logits, as lists; None when the float64 softmax is not finite (a NaN or +inf
    logit). What a server without output checks answers: plain Python for small batches of
    finite logits, one float64 softmax otherwise."""
    if logits.numel() <= SMALL:
        rows = logits.tolist()
        # a row with a non-finite sum (a NaN, an infinity, or values too large to add): torch
        if all(math.isfinite(sum(row)) for row in rows):
            judged = [_softmax(row) for row in rows]
            return ([array.array("f", probs).tolist() for probs, _ in judged],
                    [first for _, first in judged])
    probabilities = torch.softmax(logits.double(), dim=-1)
    if not bool(torch.isfinite(probabilities).all()):
        return None
    return probabilities.float().tolist(), logits.argmax(dim=-1).tolist()  # (ties in the softmax)
