"""The feature-squeezing detector (Xu, Evans & Qi 2018, https://arxiv.org/abs/1704.01155).

An adversarial example is tuned to the exact input; squeezing it (fewer bits, a median filter)
often moves the model's prediction a lot, while a clean input's prediction barely moves. With
g(x) the model's softmax and s_1, ..., s_m the squeezers, the score of x is

    score(x) = max_i || g(x) - g(s_i(x)) ||_1          (in [0, 2])

and x is flagged when its score exceeds a threshold chosen on clean data so that a fraction
``false_positive_rate`` of clean inputs is flagged (Xu et al. pick 5%). Xu et al. report, on
MNIST with 1-bit depth and 2x2 median smoothing, 98% detection of successful adversarial examples
(FGSM, BIM, CW, JSMA) at that rate. It is a detector, not a robust model: an adaptive attack that
also minimises the score evades it (He, Wei, Chen, Carlini & Song 2017,
https://arxiv.org/abs/1706.04701).

The detector has the shape every bastion detector has (``fit`` on reference data, ``score`` per
sample, a calibrated ``threshold``), so ``DetectorMonitor(detector.score, ...)`` watches it in
production.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.modes import frozen_eval
from bastion.defenses._base import positive_int
from bastion.defenses.squeezing import BitDepth, MedianSmoothing

__all__ = ["FeatureSqueezingDetector"]

D = TypeVar("D", bound="FeatureSqueezingDetector")


def _check_rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigurationError(
            f"false_positive_rate must be a number in (0, 1), e.g. 0.05, got {value!r}"
        )
    return float(value)


class FeatureSqueezingDetector:
    """Flag inputs whose prediction moves when squeezed: ``max_i ||g(x) - g(s_i(x))||_1``.

    Args:
        model: the classifier (bounded inputs -> logits) whose predictions are compared.
        squeezers: the squeezing modules; default Xu et al.'s MNIST pair,
            ``(BitDepth(1), MedianSmoothing(2))`` (for colour images they use 5-bit depth,
            2x2 median and non-local means).
        false_positive_rate: the share of clean inputs :meth:`fit` lets through as flagged.
        batch_size: inputs scored per model call.

    Attributes:
        threshold: the score above which an input is flagged (NaN until :meth:`fit`).

    Example:
        >>> import torch
        >>> from bastion.defenses import BitDepth
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> detector = FeatureSqueezingDetector(model, [BitDepth(1)])
        >>> detector = detector.fit(torch.rand(200, 1, 4, 4))
        >>> scores = detector.score(torch.rand(5, 1, 4, 4))
        >>> scores.shape, bool((scores >= 0).all() and (scores <= 2).all())
        (torch.Size([5]), True)
        >>> detector.flags(torch.rand(5, 1, 4, 4)).dtype
        torch.bool
    """

    def __init__(
        self,
        model: nn.Module,
        squeezers: Sequence[nn.Module] | None = None,
        *,
        false_positive_rate: float = 0.05,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        chosen = (BitDepth(1), MedianSmoothing(2)) if squeezers is None else tuple(squeezers)
        if not chosen:
            raise ConfigurationError("squeezers must hold at least one squeezing module")
        for s in chosen:
            if not isinstance(s, nn.Module):
                raise ConfigurationError(
                    f"squeezers must be nn.Modules (e.g. BitDepth(1)), got {type(s).__name__}"
                )
        self.model = model
        self.squeezers = chosen
        self.false_positive_rate = _check_rate(false_positive_rate)
        self.batch_size = positive_int("batch_size", batch_size)
        self.threshold = math.nan

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the threshold."""
        return not math.isnan(self.threshold)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample scores ``(B,)`` in [0, 2]; higher = more likely adversarial.

        Works before :meth:`fit` (only the threshold needs clean data).

        Raises:
            InputValidationError: ``x`` is not a non-empty batch the squeezers accept.
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputValidationError(
                f"score takes a non-empty batch (B, ...) of inputs, got {got}"
            )
        out = []
        with frozen_eval(self.model), torch.no_grad():
            for xb in torch.split(x, self.batch_size):
                p = torch.softmax(self.model(xb).float(), dim=1)
                dist = torch.stack(
                    [
                        (p - torch.softmax(self.model(s(xb)).float(), dim=1)).abs().sum(dim=1)
                        for s in self.squeezers
                    ]
                )
                out.append(dist.amax(dim=0))
        return torch.cat(out)

    def fit(self: D, reference: torch.Tensor, false_positive_rate: float | None = None) -> D:
        """Set :attr:`threshold` to the ``1 - false_positive_rate`` quantile of clean scores.

        Args:
            reference: clean inputs (held out from the data the test rates are measured on).
            false_positive_rate: overrides the rate given to the constructor (and replaces it).

        Returns:
            ``self``.

        Raises:
            InputValidationError: fewer reference samples than needed to resolve the rate.
        """
        if false_positive_rate is not None:
            self.false_positive_rate = _check_rate(false_positive_rate)
        rate = self.false_positive_rate
        scores = self.score(reference)
        need = math.ceil(1 / rate)
        if scores.numel() < need:
            raise InputValidationError(
                f"a false-positive rate of {rate:g} needs at least {need} clean reference "
                f"samples, got {scores.numel()}; give more reference data"
            )
        self.threshold = float(torch.quantile(scores.double(), 1.0 - rate))
        return self

    def flags(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B,)``: which inputs score above :attr:`threshold`.

        Raises:
            ConfigurationError: called before :meth:`fit`.
        """
        if not self.fitted:
            raise ConfigurationError(
                "FeatureSqueezingDetector has no threshold yet: call fit(clean_inputs) first"
            )
        return self.score(x) > self.threshold

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`flags`: True = predicted adversarial."""
        return self.flags(x)

    def __repr__(self) -> str:
        names = ", ".join(repr(s) for s in self.squeezers)
        return (
            f"FeatureSqueezingDetector(squeezers=[{names}], "
            f"false_positive_rate={self.false_positive_rate:g}, threshold={self.threshold:.4g})"
        )
