"""Input drift: per-feature Kolmogorov–Smirnov and the population stability index (MMD on a
projection is in :mod:`bastion.guard.monitors.mmd`).

Each test exists as a monitor class (fitted once, fed batch by batch, calibrated threshold) and as
a function on a reference and a sample; both call the same private code.

Example:
    >>> import torch
    >>> from bastion.guard.monitors import Calibration, KSDrift
    >>> g = torch.Generator().manual_seed(0)
    >>> ref = torch.randn(1000, 5, generator=g)
    >>> mon = KSDrift(calibration=Calibration(window=100, n_windows=100)).fit(ref)
    >>> mon.update(torch.randn(100, 5, generator=g)).alarm
    False
    >>> mon.update(torch.randn(100, 5, generator=g) + 1.0).alarm
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bastion.core.checks import all_finite
from bastion.guard.monitors._base import Monitor, WindowStatistic
from bastion.guard.monitors._checks import check_int, check_reference
from bastion.guard.monitors._stats import (
    Correction,
    adjust_p_values,
    bin_index_counts,
    bin_index_proportions,
    float32_edges,
    ks_distances,
    ks_p_values,
    psi_bin_indices,
    psi_bins,
    psi_from_proportions,
    psi_values,
)
from bastion.guard.monitors.calibration import Calibration

__all__ = ["Correction", "KSDrift", "PSIDrift", "ks_drift", "psi"]

_P_FLOOR = 1e-300
_MAX_BINS = 1000  # PSI bins per feature; a window of hundreds of samples cannot fill more


def _flat(x: Tensor) -> Tensor:
    flat = x.detach().reshape(x.shape[0], -1)
    return flat if flat.is_floating_point() else flat.float()


def _ks_test(
    reference_sorted: Tensor, window: Tensor, correction: Correction, alpha: float
) -> WindowStatistic:
    distances = ks_distances(reference_sorted, window)
    raw = ks_p_values(distances, reference_sorted.shape[1], window.shape[0])
    adjusted = adjust_p_values(raw, correction)
    p_min = float(adjusted.min())
    worst = int(distances.argmax())
    return WindowStatistic(
        statistic=-math.log10(max(p_min, _P_FLOOR)),
        p_value=p_min,
        detail={
            "max_distance": float(distances[worst]),
            "feature": worst,
            "features_drifted": int((adjusted < alpha).sum()),
            "features": int(distances.numel()),
            "correction": correction.value,
        },
    )


def ks_drift(
    reference: Tensor,
    x: Tensor,
    *,
    correction: Correction | str = Correction.BENJAMINI_HOCHBERG,
    alpha: float = 0.05,
) -> WindowStatistic:
    """Per-feature two-sample KS tests of ``x`` against ``reference``, corrected for multiplicity.

    Args:
        reference: ``(n, ...)`` reference batch; features are the flattened trailing dims.
        x: ``(m, ...)`` sample to test.
        correction: how the per-feature p-values are adjusted (a :class:`Correction` or its
            name).
        alpha: level used only to count drifted features in ``detail``.

    Returns:
        ``p_value`` is the smallest adjusted p-value; ``statistic`` is ``-log10`` of it.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> ref, x = torch.randn(500, 3, generator=g), torch.randn(200, 3, generator=g) + 2
        >>> ks_drift(ref, x).p_value < 1e-10
        True
    """
    method = Correction.from_str(correction)
    ref_sorted = torch.sort(_flat(reference).t().contiguous(), dim=1).values
    return _ks_test(ref_sorted, _flat(x), method, alpha)


class KSDrift(Monitor):
    """Per-feature KS drift with a multiple-testing correction and a calibrated threshold.

    The statistic is ``-log10`` of the smallest corrected p-value. Without a correction, hundreds
    of features at ``p < 0.05`` alarm on almost every clean window; with it, and with the
    threshold calibrated on reference windows, the clean alarm rate is ``false_alarm_rate``.

    Args:
        correction: multiple-testing correction (Benjamini–Hochberg by default), or its name.
        max_reference: at most this many reference samples are kept (memory and cost bound),
            at least 2.
        name: the monitor's name.
        calibration: window size and false-alarm rate.

    Raises:
        ConfigurationError: an unknown correction or a ``max_reference`` that is not an integer
            >= 2.
    """

    default_name = "input_ks"

    def __init__(
        self,
        *,
        correction: Correction | str = Correction.BENJAMINI_HOCHBERG,
        max_reference: int = 5000,
        name: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        self.correction = Correction.from_str(correction)
        self.max_reference = check_int(max_reference, "max_reference", low=2)
        self._ref_sorted = torch.empty(0)

    @property
    def reference(self) -> Tensor:
        """The kept reference as ``(n, d)`` with every column sorted (KS needs only marginals)."""
        return self._ref_sorted.t()

    def _features(self, x: Tensor) -> Tensor:
        return _flat(x)

    def _fit_reference(self, features: Tensor) -> None:
        kept = features[: self.max_reference]
        self._ref_sorted = torch.sort(kept.t().contiguous(), dim=1).values

    def _test(self, window: Tensor) -> WindowStatistic:
        return _ks_test(
            self._ref_sorted, window, self.correction, self.calibration.false_alarm_rate
        )


def psi(reference: Tensor, x: Tensor, *, n_bins: int = 10) -> Tensor:
    """Population stability index of each feature of ``x`` against ``reference``.

    Bins are the reference's ``n_bins``-quantiles per feature; proportions are floored at
    ``1e-4``. Common rules of thumb read < 0.1 as stable and > 0.25 as a major shift.

    Returns:
        ``(d,)`` PSI values (float64).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> ref = torch.randn(2000, 2, generator=g)
        >>> psi(ref, ref[:1000]).max() < 0.05, psi(ref, ref + 1).min() > 0.25
        (tensor(True), tensor(True))
    """
    n_bins = check_int(n_bins, "n_bins", low=2, high=_MAX_BINS)
    ref = _flat(reference)
    values, _ = psi_values(psi_bins(ref, n_bins), None, ref, _flat(x))
    return values


class PSIDrift(Monitor):
    """Mean population stability index over features, binned on reference quantiles.

    The bin edges are fitted first (on the statistics part of the reference), so each sample is
    binned once when it enters the window - the window holds bin indices - instead of every
    value of the window being binned again at every test. The window's bin counts are kept as
    running sums (rows entering add theirs, rows overwritten subtract theirs), so a test of the
    streaming window reads counts instead of counting its 200 x 784 indices again (a test:
    about 0.7 -> 0.1 ms); tests of other windows (calibration, ``score``) count as before.

    Args:
        n_bins: quantile bins per feature, 2 to 1000.
        name: the monitor's name.
        calibration: window size and false-alarm rate.

    Raises:
        ConfigurationError: ``n_bins`` is not an integer in 2..1000.
    """

    default_name = "input_psi"

    def __init__(
        self, *, n_bins: int = 10, name: str | None = None, calibration: Calibration | None = None
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        self.n_bins = check_int(n_bins, "n_bins", low=2, high=_MAX_BINS)
        self.edges = torch.empty(0)
        self._edges32 = (self.edges, self.edges)  # (edges, float32_edges(edges))
        self.reference_proportions = torch.empty(0)
        self._counts = torch.zeros(0, dtype=torch.int64)

    _tracks_window = True
    _needs_leaving = True

    def fit(self, reference: Tensor) -> PSIDrift:
        """Fit the bin edges on the statistics part of the reference, then as every monitor.

        A refused reference leaves the edges (and the rest of the monitor) as they were.
        """
        flat = _flat(check_reference(reference, self.name))
        previous = self.edges
        self.edges = torch.empty(0)  # until refitted: raw features, which the base checks
        stats_idx, _ = self.calibration.split(flat.shape[0])
        part = flat[stats_idx.to(flat.device)]
        if part.shape[0] and all_finite(part):
            self.edges = psi_bins(part, self.n_bins)
        try:
            return super().fit(reference)  # checks the reference and reports what is wrong
        except BaseException:
            self.edges = previous
            raise

    def _features(self, x: Tensor) -> Tensor:
        flat = _flat(x)
        if (self.edges.numel() == 0 or flat.shape[1] != self.edges.shape[0]
                or not all_finite(flat)):
            return flat  # not fitted, the wrong width or non-finite values: the base reports it
        of, edges32 = self._edges32
        if of is not self.edges:  # derived once per set of edges: float32 inputs binned as they are
            edges32 = float32_edges(self.edges)
            self._edges32 = (self.edges, edges32)
        return psi_bin_indices(self.edges, flat, edges32)

    def _fit_reference(self, features: Tensor) -> None:
        self.reference_proportions = bin_index_proportions(features, self.n_bins)

    def _window_cleared(self) -> None:
        self._counts = torch.zeros(self.reference_proportions.shape, dtype=torch.int64,
                                   device=self.reference_proportions.device)

    def _window_changed(self, entering: Tensor, leaving: Tensor | None, slots: Tensor) -> None:
        self._counts += bin_index_counts(entering, self.n_bins)
        if leaving is not None:
            self._counts -= bin_index_counts(leaving, self.n_bins)

    def _test_own_window(self) -> WindowStatistic:
        assert self._window is not None
        return self._psi(self._counts.to(torch.float64) / self._window.count)

    def _test(self, window: Tensor) -> WindowStatistic:
        return self._psi(bin_index_proportions(window, self.n_bins))

    def _null_statistics(self, feats: Tensor, n_stats: int) -> Tensor:
        """The base's calibration draws, counted once per draw instead of three times.

        A draw's pseudo-reference is the complement of the rest of its permutation, so its bin
        counts are the whole reference's minus the rest's; by default the rest is exactly the
        window. Same draws, same integer counts, so the same statistics as the base's loop.
        """
        cal = self.calibration
        gen = torch.Generator().manual_seed(cal.seed + 1)
        total = bin_index_counts(feats, self.n_bins)
        out = torch.empty(cal.n_windows, dtype=torch.float64)
        for i in range(cal.n_windows):
            perm = torch.randperm(feats.shape[0], generator=gen).to(feats.device)
            rest = bin_index_counts(feats[perm[n_stats:]], self.n_bins)
            window = rest if feats.shape[0] - n_stats == cal.window else bin_index_counts(
                feats[perm[n_stats : n_stats + cal.window]], self.n_bins)
            self.reference_proportions = (total - rest).to(torch.float64) / n_stats
            out[i] = self._psi(window.to(torch.float64) / cal.window).statistic
        return out

    def _psi(self, props: Tensor) -> WindowStatistic:
        values = psi_from_proportions(self.reference_proportions, props)
        worst = int(values.argmax())
        return WindowStatistic(
            statistic=float(values.mean()),
            detail={"max_psi": float(values[worst]), "feature": worst, "features": values.numel()},
        )
