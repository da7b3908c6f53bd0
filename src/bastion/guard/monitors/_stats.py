"""Private statistics shared by the monitor classes and their functional forms.

Each function works on tensors already reduced to rows of features (``(n, d)``) so that the
stateful monitors (which keep reference statistics and a bounded window) and the one-shot
functions (which take raw reference data) call exactly the same code (STYLE convention 7).
p-values are computed with scipy on at most ``d`` numbers per call, at the I/O boundary.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch
from scipy import special
from torch import Tensor

from bastion.core.enums import parse_enum

__all__ = [
    "Correction",
    "adjust_p_values",
    "bin_index_counts",
    "bin_index_proportions",
    "chi_square",
    "float32_edges",
    "ks_distances",
    "ks_p_values",
    "median_bandwidth",
    "mmd2_unbiased",
    "psi_bin_indices",
    "psi_bins",
    "psi_from_proportions",
    "psi_values",
    "rbf_offdiagonal_mean",
]

_EPS = 1e-4  # proportion floor for PSI, so an empty bin costs a bounded amount


class Correction(enum.Enum):
    """How per-feature p-values are combined into one family-wise decision."""

    NONE = "none"  # raw smallest p-value: alarms almost always with hundreds of features
    BONFERRONI = "bonferroni"  # controls the family-wise error rate
    BENJAMINI_HOCHBERG = "bh"  # controls the false discovery rate; less conservative

    @classmethod
    def from_str(cls, value: Correction | str) -> Correction:
        """Parse ``"none"``, ``"bonferroni"`` or ``"bh"`` (``"benjamini-hochberg"`` too).

        Raises:
            ConfigurationError: an unknown name, or a value that is neither a name nor a member.
        """
        aliases = {"benjamini-hochberg": cls.BENJAMINI_HOCHBERG}
        return parse_enum(cls, value, "correction", aliases=aliases)


def ks_distances(reference_sorted: Tensor, window: Tensor) -> Tensor:
    """Two-sample Kolmogorov–Smirnov distance per feature.

    Args:
        reference_sorted: ``(d, n)`` reference values, each row sorted ascending.
        window: ``(m, d)`` window values.

    Returns:
        ``(d,)`` sup-distances between the empirical CDFs. Both CDFs are step functions that
        change only at data points, so the supremum is reached at a window point or just before
        one; evaluating both sides of every window point costs ``O(d m log n)``.
    """
    n = reference_sorted.shape[1]
    m = window.shape[0]
    reference_sorted = reference_sorted.contiguous()
    w = window.t().contiguous().to(reference_sorted.dtype)
    w_sorted = torch.sort(w, dim=1).values
    ref_right = torch.searchsorted(reference_sorted, w_sorted, right=True).to(torch.float64) / n
    ref_left = torch.searchsorted(reference_sorted, w_sorted, right=False).to(torch.float64) / n
    win_right = torch.searchsorted(w_sorted, w_sorted, right=True).to(torch.float64) / m
    win_left = torch.searchsorted(w_sorted, w_sorted, right=False).to(torch.float64) / m
    gap = torch.maximum((ref_right - win_right).abs(), (ref_left - win_left).abs())
    return gap.amax(dim=1)


def ks_p_values(distances: Tensor, n: int, m: int) -> np.ndarray:
    """Two-sided p-values of KS distances between samples of sizes ``n`` and ``m``.

    Uses Stephens' (1970) finite-sample correction of the Kolmogorov distribution,
    ``Q((sqrt(e) + 0.12 + 0.11 / sqrt(e)) D)`` with ``e = nm / (n + m)``: within 0.02 of scipy's
    ``ks_2samp(method="asymp")`` and a thousand times faster for hundreds of features. Ties
    (e.g. constant pixels) make these p-values conservative; calibration absorbs that.
    """
    root = math.sqrt(n * m / (n + m))
    d = distances.detach().cpu().double().numpy()
    p: np.ndarray = np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * d), 0.0, 1.0)
    return p


def adjust_p_values(p_values: np.ndarray, correction: Correction) -> np.ndarray:
    """Adjust per-feature p-values for multiple testing.

    Returns adjusted p-values in the same order; a feature is rejected at level ``alpha`` when
    its adjusted p-value is below ``alpha``.
    """
    p: np.ndarray = np.asarray(p_values, dtype=np.float64)
    d = p.size
    if correction is Correction.NONE or d == 0:
        return np.array(p, copy=True)
    if correction is Correction.BONFERRONI:
        bonferroni: np.ndarray = np.minimum(p * d, 1.0)
        return bonferroni
    order = np.argsort(p)
    scaled = p[order] * d / np.arange(1, d + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]  # adj_(i) = min_{j >= i} p_(j) d / j
    out = np.empty_like(p)
    out[order] = np.minimum(stepped, 1.0)
    return out


def psi_bins(reference: Tensor, n_bins: int) -> Tensor:
    """Interior bin edges per feature at reference quantiles: ``(d, n_bins - 1)``, sorted."""
    qs = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=reference.device)[1:-1]
    return torch.quantile(reference.double(), qs, dim=0).t().contiguous()


def float32_edges(edges: Tensor) -> Tensor:
    """The smallest float32 at or above each (float64) edge.

    For a float32 value ``v``, ``edge <= v`` exactly when ``float32_edges(edge) <= v`` (``v``
    is itself a float32 at or above the edge), so float32 inputs are binned against these
    edges as they come, with the same bins as widened to float64 and without the copy.
    """
    low = edges.float()
    return torch.where(low.double() < edges,
                       torch.nextafter(low, torch.full_like(low, math.inf)), low)


def psi_bin_indices(edges: Tensor, x: Tensor, edges32: Tensor | None = None) -> Tensor:
    """The bin of every value of ``x`` ``(m, d)``: ``(m, d)`` int32 in ``[0, n_bins)``.

    ``edges32``: :func:`float32_edges` of ``edges``, used for float32 ``x`` (same bins).
    """
    if x.dtype == torch.float32 and edges32 is not None:
        return torch.searchsorted(edges32, x.t().contiguous(), right=True, out_int32=True).t()
    return torch.searchsorted(edges, x.t().contiguous().double(), right=True,
                              out_int32=True).t()


def bin_index_counts(indices: Tensor, n_bins: int) -> Tensor:
    """Rows in each bin from :func:`psi_bin_indices`: ``(d, n_bins)`` int64."""
    _, d = indices.shape
    if d * n_bins < 2**31 and indices.dtype == torch.int32:  # no widening copy (2.5x faster)
        offsets = torch.arange(d, device=indices.device, dtype=torch.int32) * n_bins
        flat = (indices + offsets).reshape(-1)
    else:
        offsets = torch.arange(d, device=indices.device, dtype=torch.int64) * n_bins
        flat = (indices.to(torch.int64) + offsets).reshape(-1)
    return torch.bincount(flat, minlength=d * n_bins).reshape(d, n_bins)


def bin_index_proportions(indices: Tensor, n_bins: int) -> Tensor:
    """Proportion of rows in each bin from :func:`psi_bin_indices`: ``(d, n_bins)``."""
    return bin_index_counts(indices, n_bins).to(torch.float64) / indices.shape[0]


def _bin_proportions(edges: Tensor, x: Tensor) -> Tensor:
    """Proportion of rows of ``x`` in each bin: ``(d, n_bins)``; duplicate edges give empty bins."""
    return bin_index_proportions(psi_bin_indices(edges, x), edges.shape[1] + 1)


def psi_from_proportions(reference_props: Tensor, window_props: Tensor) -> Tensor:
    """``sum_b (w_b - r_b) * ln(w_b / r_b)`` per feature, both proportions floored at 1e-4."""
    r = reference_props.clamp_min(_EPS)
    w = window_props.clamp_min(_EPS)
    return ((w - r) * torch.log(w / r)).sum(dim=1)


def psi_values(
    edges: Tensor, reference_props: Tensor | None, reference: Tensor | None, window: Tensor
) -> tuple[Tensor, Tensor]:
    """Population stability index per feature, and the reference proportions used.

    ``PSI = sum_b (w_b - r_b) * ln(w_b / r_b)`` with both proportions floored at ``1e-4``.
    Pass ``reference_props`` when already known, else ``reference`` to bin.
    """
    if reference_props is None:
        if reference is None:
            raise ValueError("psi_values needs reference_props or reference")
        reference_props = _bin_proportions(edges, reference)
    return psi_from_proportions(reference_props, _bin_proportions(edges, window)), reference_props


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    aa = (a * a).sum(dim=1, keepdim=True)
    bb = (b * b).sum(dim=1, keepdim=True).t()
    return (aa + bb - 2.0 * a @ b.t()).clamp_min(0.0)


def median_bandwidth(x: Tensor) -> float:
    """Median heuristic: the median pairwise distance between distinct rows of ``x``."""
    d2 = _sq_dists(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    med = float(d2[iu[0], iu[1]].median().sqrt())
    return med if med > 0 and math.isfinite(med) else 1.0


def rbf_offdiagonal_mean(x: Tensor, bandwidth: float) -> Tensor:
    """Mean RBF kernel value over the distinct pairs of rows of ``x``."""
    n = x.shape[0]
    k = torch.exp(-_sq_dists(x, x) / (2.0 * bandwidth * bandwidth))
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: float, kxx_mean: Tensor | None = None) -> Tensor:
    """Unbiased squared MMD with the RBF kernel ``exp(-|a - b|^2 / (2 bandwidth^2))``.

    ``kxx_mean`` (the mean off-diagonal kernel over ``x``) may be passed in when ``x`` is a fixed
    reference, which removes the ``O(n^2)`` term from every call.
    """
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    if kxx_mean is None:
        kxx_mean = rbf_offdiagonal_mean(x, bandwidth)
    kyy_mean = rbf_offdiagonal_mean(y, bandwidth)
    kxy_mean = torch.exp(-gamma * _sq_dists(x, y)).mean()
    return kxx_mean + kyy_mean - 2.0 * kxy_mean


def chi_square(counts: Tensor, expected_props: Tensor) -> tuple[float, float]:
    """Pearson chi-square goodness of fit of class ``counts`` to ``expected_props``.

    Returns the statistic and its p-value with ``C - 1`` degrees of freedom.
    """
    m = float(counts.sum())
    expected = expected_props.double() * m
    stat = float(((counts.double() - expected) ** 2 / expected).sum())
    dof = max(int(counts.numel()) - 1, 1)
    return stat, float(special.chdtrc(dof, stat))  # what stats.chi2.sf computes, minus overhead
