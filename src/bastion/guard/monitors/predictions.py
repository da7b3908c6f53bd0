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

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.monitors._base import Monitor, Source, WindowStatistic
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
    expected = _class_proportions(_predictions(reference), num_classes)
    return _class_test(_predictions(outputs), expected)


class ClassDrift(Monitor):
    """Predicted class distribution of the window against the reference (Pearson chi-square).

    Args:
        num_classes: number of classes; inferred from ``(B, C)`` reference outputs when None.
        name: the monitor's name.
        calibration: window size and false-alarm rate.
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
        if num_classes is not None and num_classes < 2:
            raise ConfigurationError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.reference_proportions = torch.empty(0)

    def _features(self, x: Tensor) -> Tensor:
        if self.num_classes is None and x.ndim == 2:
            self.num_classes = x.shape[1]
        preds = _predictions(x)
        top = int(preds.max())
        if self.num_classes is not None and (top >= self.num_classes or int(preds.min()) < 0):
            raise InputValidationError(
                f"{self.name}: predicted classes must be in 0..{self.num_classes - 1}, got {top}"
            )
        return preds.reshape(-1, 1).double()

    def _fit_reference(self, features: Tensor) -> None:
        if self.num_classes is None:
            self.num_classes = int(features.max()) + 1
        self.reference_proportions = _class_proportions(features, self.num_classes)

    def _test(self, window: Tensor) -> WindowStatistic:
        return _class_test(window, self.reference_proportions)


def uncertainty(
    outputs: Tensor,
    kind: Uncertainty = Uncertainty.CONFIDENCE,
    space: OutputSpace = OutputSpace.LOGITS,
) -> Tensor:
    """Per-sample confidence (top probability) or entropy (nats) of ``(B, C)`` outputs.

    Example:
        >>> import torch
        >>> uncertainty(torch.zeros(1, 4), Uncertainty.ENTROPY)  # uniform over 4 classes
        tensor([1.3863])
    """
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
        kind: the per-sample quantity watched.
        space: whether outputs are logits or probabilities.
        max_reference: reference values kept.
        name: the monitor's name.
        calibration: window size and false-alarm rate.
    """

    source = Source.OUTPUTS
    default_name = "prediction_confidence"

    def __init__(
        self,
        *,
        kind: Uncertainty = Uncertainty.CONFIDENCE,
        space: OutputSpace = OutputSpace.LOGITS,
        max_reference: int = 5000,
        name: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        self.kind, self.space, self.max_reference = kind, space, max_reference
        self._ref_sorted = torch.empty(0)
        self.reference_mean = float("nan")

    @property
    def reference(self) -> Tensor:
        """The kept reference values as ``(n, 1)``, sorted."""
        return self._ref_sorted.t()

    def _features(self, x: Tensor) -> Tensor:
        return uncertainty(x, self.kind, self.space).reshape(-1, 1)

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
