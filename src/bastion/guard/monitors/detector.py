"""Wrap any per-sample detector score (feature squeezing, STRIP, ...) as a monitor.

Per sample, the detector flags scores above a threshold set at a chosen false-positive rate on
reference scores. Per window, the monitor alarms when the share of flagged samples is higher than
clean windows of the same size reach, at the calibrated false-alarm rate.

Example:
    >>> import torch
    >>> from bastion.guard.monitors import Calibration, DetectorMonitor
    >>> norm = lambda x: x.flatten(1).norm(dim=1)  # any (B, ...) -> (B,) score
    >>> g = torch.Generator().manual_seed(0)
    >>> mon = DetectorMonitor(norm, calibration=Calibration(window=100))
    >>> mon = mon.fit(torch.randn(2000, 8, generator=g))
    >>> bool(mon.flags(torch.full((1, 8), 5.0))[0]), mon.update(3 * torch.randn(100, 8)).alarm
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from scipy import stats
from torch import Tensor

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.monitors._base import Monitor, WindowStatistic, _as_batch
from bastion.guard.monitors._checks import check_fraction
from bastion.guard.monitors.calibration import Calibration

__all__ = ["DetectorMonitor", "exceedance_test"]


def exceedance_test(
    scores: Tensor, sample_threshold: float, false_positive_rate: float
) -> WindowStatistic:
    """Share of ``scores`` above ``sample_threshold``, with its one-sided binomial p-value.

    The p-value is ``P[Binomial(m, fpr) >= k]``: how surprising ``k`` flags in ``m`` samples
    would be if each sample were flagged at the nominal false-positive rate.
    """
    flat = scores.reshape(-1)
    m = flat.numel()
    k = int((flat > sample_threshold).sum())
    p = float(stats.binom.sf(k - 1, m, false_positive_rate))
    return WindowStatistic(statistic=k / m, p_value=p, detail={"flagged": k, "samples": m})


class DetectorMonitor(Monitor):
    """Monitor the scores of a per-sample detector; higher score = more suspicious.

    Args:
        score_fn: maps a ``(B, ...)`` batch to ``(B,)`` scores.
        false_positive_rate: share of clean samples flagged by :meth:`flags`.
        name: the monitor's name.
        calibration: window size and window false-alarm rate.

    ``threshold`` is the per-sample score threshold (the detector contract); the window alarm
    threshold, on the flagged share, is ``window_threshold``.

    Raises:
        ConfigurationError: ``score_fn`` is not callable or ``false_positive_rate`` is not a
            number in (0, 1).
    """

    default_name = "detector"

    def __init__(
        self,
        score_fn: Callable[[Tensor], Tensor],
        *,
        false_positive_rate: float = 0.05,
        name: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        if not callable(score_fn):
            raise ConfigurationError(
                "score_fn must be a callable mapping a (B, ...) batch to (B,) scores, got "
                f"{type(score_fn).__name__}"
            )
        self.score_fn = score_fn
        self.false_positive_rate = check_fraction(false_positive_rate, "false_positive_rate")
        self.sample_threshold = math.nan

    @property
    def threshold(self) -> float:
        """Per-sample score threshold at ``false_positive_rate`` on the reference."""
        return self.sample_threshold

    @property
    def window_threshold(self) -> float:
        """Alarm threshold on the share of flagged samples in a window."""
        return self._alarm_threshold

    def score(self, x: Tensor) -> Tensor:
        """Per-sample detector scores ``(B,)``."""
        self._require_fit()
        return self._checked_features(_as_batch(x, "x"), "x").reshape(-1)

    def flags(self, x: Tensor) -> Tensor:
        """Boolean ``(B,)``: which samples score above the per-sample threshold."""
        return self.score(x) > self.sample_threshold

    def _features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            scores = self.score_fn(x)
        if not isinstance(scores, Tensor) or scores.numel() != x.shape[0]:
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise InputValidationError(
                f"{self.name}: score_fn must return one score per sample ({x.shape[0]}), got {got}"
            )
        return scores.detach().reshape(-1, 1).double()

    def _fit_reference(self, features: Tensor) -> None:
        q = torch.quantile(features.reshape(-1), 1.0 - self.false_positive_rate)
        self.sample_threshold = float(q)

    def _test(self, window: Tensor) -> WindowStatistic:
        out = exceedance_test(window, self.sample_threshold, self.false_positive_rate)
        detail = dict(out.detail, sample_threshold=self.sample_threshold)
        return WindowStatistic(statistic=out.statistic, p_value=out.p_value, detail=detail)

    def state(self) -> dict[str, Any]:
        out = super().state()
        out.update(
            threshold=None if math.isnan(self._alarm_threshold) else self._alarm_threshold,
            sample_threshold=None if math.isnan(self.sample_threshold) else self.sample_threshold,
            false_positive_rate=self.false_positive_rate,
        )
        return out
