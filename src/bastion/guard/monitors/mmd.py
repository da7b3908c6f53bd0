"""Input drift by the maximum mean discrepancy (RBF kernel) on a projection of the inputs.

A monitor class (fitted once, fed batch by batch, calibrated threshold) and a function on a
reference and a sample; both call the same private code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bastion.core.errors import InputValidationError
from bastion.guard.monitors._base import Monitor, WindowStatistic
from bastion.guard.monitors._checks import SEED_RANGE, check_int
from bastion.guard.monitors._stats import (
    _sq_dists,
    median_bandwidth,
    mmd2_unbiased,
    rbf_offdiagonal_mean,
)
from bastion.guard.monitors.calibration import Calibration
from bastion.guard.monitors.drift import _flat

__all__ = ["MMDDrift", "mmd2"]

_MAX_DIM = 4096  # projected dimensions: the projection is there to keep the kernel cheap


def mmd2(reference: Tensor, x: Tensor, *, bandwidth: float | None = None) -> Tensor:
    """Unbiased squared maximum mean discrepancy with an RBF kernel.

    Args:
        reference: ``(n, ...)`` reference batch (flattened per sample).
        x: ``(m, ...)`` sample.
        bandwidth: kernel width; the median pairwise reference distance when None.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> ref = torch.randn(300, 4, generator=g)
        >>> bool(mmd2(ref, torch.randn(100, 4, generator=g) + 1) > 10 * mmd2(ref, ref[:100]).abs())
        True
    """
    ref, y = _flat(reference), _flat(x)
    width = median_bandwidth(ref) if bandwidth is None else bandwidth
    return mmd2_unbiased(ref, y, width)


class MMDDrift(Monitor):
    """MMD drift on a fixed random Gaussian projection of the flattened inputs.

    The projection to ``dim`` dimensions (seeded, scaled by ``1/sqrt(d)``) keeps the kernel cheap
    and the state small; the bandwidth is the median heuristic on the projected reference.

    The streaming window keeps its kernel sums as it changes (float64): each entering row's
    mean kernel against the reference, and the window's kernel matrix, whose rows and columns
    are rewritten for the rows that enter. A test then sums what is kept instead of computing
    the ``reference x window`` and ``window x window`` kernels again (a row costs
    ``max_reference + window`` kernel values once, instead of about ``(max_reference + window)
    x window / test_every``). Tests of other windows (calibration, ``score``) compute afresh.

    The projection is drawn at ``fit`` for the reference's width, in its floating dtype; later
    batches of another floating dtype are converted to it (float64 traffic on a float32 fit is
    tested at float32 precision). The unbiased MMD needs at least 2 samples per window.

    Args:
        dim: projected dimensions, 1 to 4096.
        max_reference: reference samples kept (each update costs ``O(max_reference * window)``),
            at least 2.
        seed: seeds the projection.
        name: the monitor's name.
        calibration: window size and false-alarm rate.

    Raises:
        ConfigurationError: an argument that is not an integer in its range.
    """

    default_name = "input_mmd"

    def __init__(
        self,
        *,
        dim: int = 8,
        max_reference: int = 500,
        seed: int = 0,
        name: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(name=name, calibration=calibration)
        self.dim = check_int(dim, "dim", low=1, high=_MAX_DIM)
        self.max_reference = check_int(max_reference, "max_reference", low=2)
        self.seed = check_int(seed, "seed", low=SEED_RANGE[0], high=SEED_RANGE[1])
        self.projection: Tensor | None = None
        self.bandwidth = math.nan
        self._ref = torch.empty(0)
        self._kxx_mean = torch.empty(0)
        self._row_kxy = torch.empty(0, dtype=torch.float64)  # per window slot
        self._kyy = torch.empty(0, 0, dtype=torch.float64)  # window slot x slot
        self._ref64 = torch.empty(0, dtype=torch.float64)
        self._gamma = math.nan

    _tracks_window = True
    _min_window = 2  # the unbiased estimate averages over distinct pairs of window rows

    @property
    def reference(self) -> Tensor:
        """The kept, projected reference ``(n, dim)``."""
        return self._ref

    def project(self, x: Tensor) -> Tensor:
        """Flatten and project a batch to ``(B, dim)`` (the projection is drawn on first use).

        Raises:
            InputValidationError: ``x`` has another number of features than the projection.
        """
        flat = _flat(x)
        if self.projection is None:
            gen = torch.Generator().manual_seed(self.seed)
            proj = torch.randn(flat.shape[1], self.dim, generator=gen) / math.sqrt(flat.shape[1])
            self.projection = proj.to(device=flat.device, dtype=flat.dtype)
        if flat.shape[1] != self.projection.shape[0]:
            raise InputValidationError(
                f"{self.name}: got {flat.shape[1]} features per sample, the reference had "
                f"{self.projection.shape[0]}"
            )
        if flat.dtype != self.projection.dtype:  # float64 traffic on a float32 fit, or back
            flat = flat.to(self.projection.dtype)
        return flat @ self.projection

    def fit(self, reference: Tensor) -> MMDDrift:
        """Draw the projection for this reference (its width and dtype), then as every monitor.

        A refused reference leaves the projection (and the rest of the monitor) as it was.
        """
        previous, self.projection = self.projection, None
        try:
            return super().fit(reference)
        except BaseException:
            self.projection = previous
            raise

    def _features(self, x: Tensor) -> Tensor:
        return self.project(x)

    def _fit_reference(self, features: Tensor) -> None:
        self._ref = features[: self.max_reference].clone()
        self.bandwidth = median_bandwidth(self._ref)
        self._kxx_mean = rbf_offdiagonal_mean(self._ref, self.bandwidth)

    def _test(self, window: Tensor) -> WindowStatistic:
        value = mmd2_unbiased(self._ref, window, self.bandwidth, self._kxx_mean)
        return WindowStatistic(statistic=float(value), detail={"bandwidth": self.bandwidth})

    def _null_statistics(self, feats: Tensor, n_stats: int) -> Tensor:
        """The base's calibration draws with the kernel held fixed.

        The bandwidth is the kept reference's (set before the draws): production tests every
        window with that one kernel, so its null varies the reference sample and the window,
        not the kernel. It also spares a median over 125k pairwise distances per draw.
        """
        cal = self.calibration
        gen = torch.Generator().manual_seed(cal.seed + 1)
        out = torch.empty(cal.n_windows, dtype=torch.float64)
        for i in range(cal.n_windows):
            perm = torch.randperm(feats.shape[0], generator=gen).to(feats.device)
            ref = feats[perm[:n_stats][: self.max_reference]]
            kxx = rbf_offdiagonal_mean(ref, self.bandwidth)
            window = feats[perm[n_stats : n_stats + cal.window]]
            out[i] = float(mmd2_unbiased(ref, window, self.bandwidth, kxx))
        return out

    def _window_cleared(self) -> None:
        size = self.calibration.window
        device = self._ref.device
        self._ref64 = self._ref.double()
        self._gamma = 1.0 / (2.0 * self.bandwidth * self.bandwidth)
        self._row_kxy = torch.zeros(size, dtype=torch.float64, device=device)
        self._kyy = torch.zeros(size, size, dtype=torch.float64, device=device)

    def _window_changed(self, entering: Tensor, leaving: Tensor | None, slots: Tensor) -> None:
        assert self._window is not None
        new = entering.double()
        self._row_kxy[slots] = torch.exp(-self._gamma * _sq_dists(new, self._ref64)).mean(1)
        # against every slot (unfilled ones too: their entries are rewritten when they fill)
        k = torch.exp(-self._gamma * _sq_dists(new, self._window.buffer.double()))
        self._kyy[slots] = k
        self._kyy[:, slots] = k.t()

    def _test_own_window(self) -> WindowStatistic:
        assert self._window is not None and self._window.full
        m = self._window.count
        kyy = (self._kyy.sum() - self._kyy.diagonal().sum()) / (m * (m - 1))
        value = float(self._kxx_mean) + float(kyy) - 2.0 * float(self._row_kxy.mean())
        return WindowStatistic(statistic=value, detail={"bandwidth": self.bandwidth})
