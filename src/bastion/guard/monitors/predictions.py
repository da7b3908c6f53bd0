"""Prediction drift: the class distribution (chi-square) and confidence or entropy (KS).

These monitors watch the model's outputs: ``(B, C)`` logits or probabilities, or, for
:class:`ClassDrift`, ``(B,)`` integer predictions.

Example:
    >>> import torch
    >>> from bastion.guard.monitors import Calibration, ClassDrift
    >>> g = torch.Generator().manual_seed(0)
    >>> ref = torch.randint(0, 4, (2000,), generator=g)
    >>> mon = ClassDrift(num_classes=4, calibration=Calibration(window=100)).fit(ref)
    >>> mon.update(torch.randint(0, 4, (100,), generator=g)).alarm
    False
    >>> mon.update(torch.zeros(100, dtype=torch.long)).alarm
    True
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor

from bastion.core.checks import all_finite
from bastion.core.enums import parse_enum
from bastion.core.errors import InputValidationError
from bastion.guard.monitors._base import Monitor, Source, WindowStatistic
from bastion.guard.monitors._checks import check_int, check_reference
from bastion.guard.monitors._stats import Correction, chi_square
from bastion.guard.monitors.calibration import Calibration
from bastion.guard.monitors.drift import _ks_test

__all__ = [
    "ClassDrift",
    "ConfidenceDrift",
    "OutputSpace",
    "Uncertainty",
    "class_drift",
    "uncertainty",
]

# classes a ClassDrift counts (one float64 per class per test): an LLM's vocabulary fits, a
# stray label of 10**12 does not allocate terabytes
MAX_CLASSES = 2**20


class OutputSpace(enum.Enum):
    """What a model's output rows are."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"


class Uncertainty(enum.Enum):
    """Per-sample quantity watched by :class:`ConfidenceDrift`."""

    CONFIDENCE = "confidence"  # the top class probability
    ENTROPY = "entropy"  # Shannon entropy of the predicted distribution, in nats


def _predictions(outputs: Tensor) -> Tensor:
    if outputs.ndim == 2 and outputs.is_floating_point():
        return outputs.argmax(dim=1)
    if outputs.ndim == 1 and not outputs.is_floating_point():
        return outputs.long()
    raise InputValidationError(
        "outputs must be (B, C) float logits/probabilities or (B,) integer predictions, got "
        f"shape {tuple(outputs.shape)} and dtype {outputs.dtype}"
    )


def _class_test(window: Tensor, expected: Tensor) -> WindowStatistic:
    counts = torch.bincount(window.reshape(-1).long(), minlength=expected.numel()).double()
    stat, p = chi_square(counts.cpu(), expected.cpu())
    top = int((counts / counts.sum() - expected.to(counts.device)).abs().argmax())
    return WindowStatistic(statistic=stat, p_value=p, detail={"most_changed_class": top})


def _class_proportions(predictions: Tensor, num_classes: int) -> Tensor:
    counts = torch.bincount(predictions.reshape(-1).long(), minlength=num_classes).double()
    return (counts + 0.5) / (counts.sum() + 0.5 * num_classes)  # no class is impossible


def _reference_classes(reference: Tensor, declared: int | None, name: str) -> int:
    """The class count of a reference: its logits' width, else its top label + 1 (or
    ``declared``); refuses negative, out-of-range or non-finite references and fewer than 2
    classes, before anything is counted."""
    if reference.ndim == 2 and reference.is_floating_point():
        count = reference.shape[1]
        if not all_finite(reference):
            bad = int((~torch.isfinite(reference)).any(dim=1).nonzero()[0])
            raise InputValidationError(
                f"{name}: reference outputs have non-finite values (first at sample {bad})",
                sample_index=bad,
            )
        if declared is not None and count != declared:
            raise InputValidationError(
                f"{name}: reference outputs have {count} columns, num_classes is {declared}"
            )
    else:
        labels = _predictions(reference)
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0:
            bad = int((labels < 0).nonzero()[0])
            raise InputValidationError(
                f"{name}: reference labels must be >= 0, got {low} (first at sample {bad})",
                sample_index=bad,
            )
        limit = MAX_CLASSES if declared is None else declared
        if high >= limit:
            bad = int((labels >= limit).nonzero()[0])
            raise InputValidationError(
                f"{name}: reference label {high} is outside 0..{limit - 1} "
                + (f"(at most {MAX_CLASSES} classes)" if declared is None
                   else f"(num_classes={declared})"),
                sample_index=bad,
            )
        count = high + 1 if declared is None else declared
    if not 2 <= count <= MAX_CLASSES:
        raise InputValidationError(
            f"{name}: the reference has {count} class(es); a class distribution needs 2 to "
            f"{MAX_CLASSES} (pass num_classes when some classes are missing from it)"
        )
    return count


def class_drift(reference: Tensor, outputs: Tensor, *, num_classes: int) -> WindowStatistic:
    """Chi-square test of the predicted-class counts of ``outputs`` against ``reference``.

    Reference proportions are smoothed by half a count per class, so a class never seen in the
    reference does not make the statistic infinite.

    Example:
        >>> import torch
        >>> ref = torch.arange(1000) % 2
        >>> class_drift(ref, torch.zeros(100, dtype=torch.long), num_classes=2).p_value < 1e-10
        True
    """
    declared = check_int(num_classes, "num_classes", low=2, high=MAX_CLASSES)
    _reference_classes(check_reference(reference, "class_drift"), declared, "class_drift")
    expected = _class_proportions(_predictions(reference), declared)
    return _class_test(_predictions(outputs), expected)


class ClassDrift(Monitor):
    """Predicted class distribution of the window against the reference (Pearson chi-square).

    Args:
        num_classes: number of classes (2 to ``MAX_CLASSES``); when None, inferred at each
            ``fit`` from the reference: the width of ``(B, C)`` outputs, else the top label + 1.
        name: the monitor's name.
        calibration: window size and false-alarm rate.

    Raises:
        ConfigurationError: ``num_classes`` is not None or an integer in 2..``MAX_CLASSES``.
    """

    source = Source.OUTPUTS
    default_name = "prediction_classes"

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        name: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        if num_classes is not None:
            num_classes = check_int(num_classes, "num_classes", low=2, high=MAX_CLASSES)
        self._declared_classes = num_classes
        self.num_classes = num_classes
        self.reference_proportions = torch.empty(0)

    def fit(self, reference: Tensor) -> ClassDrift:
        """Settle the class count on the reference (validated first), then as every monitor.

        A refused reference leaves the monitor as it was.
        """
        reference = check_reference(reference, self.name)
        previous = self.num_classes
        self.num_classes = _reference_classes(reference, self._declared_classes, self.name)
        try:
            return super().fit(reference)
        except BaseException:
            self.num_classes = previous
            raise

    def _features(self, x: Tensor) -> Tensor:
        assert self.num_classes is not None  # set by fit, which every other path requires
        if x.ndim == 2 and x.shape[1] != self.num_classes:
            raise InputValidationError(
                f"{self.name}: outputs have {x.shape[1]} columns, the reference had "
                f"{self.num_classes} classes"
            )
        preds = _predictions(x)
        top = int(preds.max())
        if top >= self.num_classes or int(preds.min()) < 0:
            bad = top if top >= self.num_classes else int(preds.min())
            raise InputValidationError(
                f"{self.name}: predicted classes must be in 0..{self.num_classes - 1}, got {bad}"
            )
        return preds.reshape(-1, 1).double()

    def _fit_reference(self, features: Tensor) -> None:
        assert self.num_classes is not None
        self.reference_proportions = _class_proportions(features, self.num_classes)

    def _test(self, window: Tensor) -> WindowStatistic:
        return _class_test(window, self.reference_proportions)


def uncertainty(
    outputs: Tensor,
    kind: Uncertainty | str = Uncertainty.CONFIDENCE,
    space: OutputSpace | str = OutputSpace.LOGITS,
) -> Tensor:
    """Per-sample confidence (top probability) or entropy (nats) of ``(B, C)`` outputs.

    ``kind`` and ``space`` are members or their names (``"entropy"``, ``"probabilities"``).

    Example:
        >>> import torch
        >>> uncertainty(torch.zeros(1, 4), Uncertainty.ENTROPY)  # uniform over 4 classes
        tensor([1.3863])
    """
    return _uncertainty(outputs, parse_enum(Uncertainty, kind, "uncertainty kind"),
                        parse_enum(OutputSpace, space, "output space"))


def _uncertainty(outputs: Tensor, kind: Uncertainty, space: OutputSpace) -> Tensor:
    """:func:`uncertainty` with parsed arguments (the monitor's per-update path)."""
    if outputs.ndim != 2 or not outputs.is_floating_point():
        raise InputValidationError(
            f"outputs must be (B, C) float logits or probabilities, got shape "
            f"{tuple(outputs.shape)} and dtype {outputs.dtype}"
        )
    if space is OutputSpace.LOGITS:
        log_p = torch.log_softmax(outputs.detach(), dim=1)
    else:
        log_p = torch.log(outputs.detach().clamp_min(1e-12))
    if kind is Uncertainty.CONFIDENCE:
        return log_p.max(dim=1).values.exp()
    return -(log_p.exp() * log_p).sum(dim=1)


class ConfidenceDrift(Monitor):
    """Drift of per-sample confidence or entropy: a KS test against the reference values.

    A falling confidence (or rising entropy) is what out-of-distribution inputs and many
    evasion attempts look like from the output side.

    Args:
        kind: the per-sample quantity watched (a member or its name).
        space: whether outputs are logits or probabilities (a member or its name).
        max_reference: reference values kept, at least 2.
        name: the monitor's name.
        calibration: window size and false-alarm rate.

    Raises:
        ConfigurationError: an unknown ``kind`` or ``space``, or a ``max_reference`` that is not
            an integer >= 2.
    """

    source = Source.OUTPUTS
    default_name = "prediction_confidence"

    def __init__(
        self,
        *,
        kind: Uncertainty | str = Uncertainty.CONFIDENCE,
        space: OutputSpace | str = OutputSpace.LOGITS,
        max_reference: int = 5000,
        name: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        self.kind = parse_enum(Uncertainty, kind, "uncertainty kind")
        self.space = parse_enum(OutputSpace, space, "output space")
        self.max_reference = check_int(max_reference, "max_reference", low=2)
        self._ref_sorted = torch.empty(0)
        self.reference_mean = float("nan")

    @property
    def reference(self) -> Tensor:
        """The kept reference values as ``(n, 1)``, sorted."""
        return self._ref_sorted.t()

    def _features(self, x: Tensor) -> Tensor:
        return _uncertainty(x, self.kind, self.space).reshape(-1, 1)

    def _fit_reference(self, features: Tensor) -> None:
        kept = features[: self.max_reference]
        self._ref_sorted = torch.sort(kept.t().contiguous(), dim=1).values
        self.reference_mean = float(kept.mean())

    def _test(self, window: Tensor) -> WindowStatistic:
        test = _ks_test(
            self._ref_sorted, window, Correction.NONE, self.calibration.false_alarm_rate
        )
        detail = {
            "quantity": self.kind.value,
            "reference_mean": self.reference_mean,
            "window_mean": float(window.mean()),
            "distance": test.detail["max_distance"],
        }
        return WindowStatistic(statistic=test.statistic, p_value=test.p_value, detail=detail)
