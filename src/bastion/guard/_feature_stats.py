"""Per-feature statistics of reference data that a :class:`~bastion.guard.schema.TensorSchema`
holds: the mean and std of every feature and a z-score limit, checked once when built.

Every value a user or a schema file passes (lists, arrays, tensors; ints too large for a float,
ragged lists, strings) is refused here with a :class:`ConfigurationError` naming the key, so that
the request path only ever sees finite float32 vectors.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bastion.core.errors import ConfigurationError
from bastion.guard._convert import native_order

__all__ = ["FeatureStats"]


def _vector(value: object, key: str) -> Tensor:
    """``value`` (numbers, nested lists, an array or a tensor) as a flat float32 CPU tensor."""
    if isinstance(value, (str, bytes)):
        raise ConfigurationError(f"stats: {key!r} must be a list of numbers, got {value!r:.80}")
    if isinstance(value, np.ndarray):
        value = native_order(value)
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, OverflowError, RuntimeError) as error:
        raise ConfigurationError(
            f"stats: {key!r} must be a list of finite numbers (not ragged, no value beyond a "
            f"float's range), got {type(value).__name__}: {error}"
        ) from None
    return tensor.detach().cpu().reshape(-1)


def _limit(value: object) -> float:
    """The z-score limit as a float: a finite number > 0 (not a bool)."""
    number, shown = math.nan, f"{value!r:.80}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            shown = f"an int of {int(value).bit_length()} bits"  # (str() refuses 4300+ digits)
    if not 0 < number < math.inf:
        raise ConfigurationError(f"stats: 'z_limit' must be a finite number > 0, got {shown}")
    return number


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class FeatureStats:
    """Per-feature mean and standard deviation of reference data, with a z-score limit.

    A sample breaks the rule when the root mean square of its features' z-scores,
    ``sqrt(mean_f ((x_f - mean_f) / std_f) ** 2)``, exceeds ``z_limit``. The mean over features
    (rather than the largest single z-score) keeps images usable: a pixel that is always 0 in the
    reference would otherwise reject every digit that touches it.

    Attributes:
        mean: (F,) float32, F = the number of elements of one sample, in ``reshape`` order.
        std: (F,) float32, all > 0 (floor small ones before building the stats).
        z_limit: the largest root-mean-square z-score a valid sample may have.
    """

    mean: Tensor
    std: Tensor
    z_limit: float
    # (device, dtype) -> (mean, 1 / std), built once: the request path must not re-convert
    _scaled: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        mean, std = _vector(self.mean, "mean"), _vector(self.std, "std")
        z_limit = _limit(self.z_limit)
        if mean.shape != std.shape:
            raise ConfigurationError(
                f"stats: 'mean' and 'std' need the same length, got {len(mean)} and {len(std)}"
            )
        if not bool(torch.isfinite(mean).all()):
            raise ConfigurationError("stats: 'mean' must be finite")
        if not bool((torch.isfinite(std) & (std > 0)).all()):
            raise ConfigurationError("stats: every 'std' must be finite and > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "z_limit", z_limit)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureStats):
            return NotImplemented
        return (self.z_limit == other.z_limit and torch.equal(self.mean, other.mean)
                and torch.equal(self.std, other.std))

    def __hash__(self) -> int:
        return hash((self.z_limit, len(self.mean)))

    def zscores(self, flat: Tensor) -> Tensor:
        """(B, F) z-scores of flattened samples; NaN counts as 0 (finiteness is its own rule)."""
        dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
        z = (flat.to(dtype) - self.mean.to(flat.device, dtype)) / self.std.to(flat.device, dtype)
        return torch.nan_to_num(z, nan=0.0)

    def max_rms(self, flat: Tensor) -> float:
        """The largest per-sample root-mean-square z-score of finite ``(B, F)`` samples.

        Computed as ``||(x - mean) * (1 / std)|| / sqrt(F)`` with the converted mean and
        reciprocal std cached per device and dtype: four ops at any batch size (three at 1).
        """
        dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
        key = (flat.device, dtype)
        pair = self._scaled.get(key)
        if pair is None:
            inv_std = (1.0 / self.std.double()).to(flat.device, dtype)
            pair = (self.mean.to(flat.device, dtype), inv_std)
            self._scaled[key] = pair
        mean, inv_std = pair
        values = flat if flat.dtype == dtype else flat.to(dtype)
        norms = torch.linalg.vector_norm((values - mean) * inv_std, dim=1)
        worst = norms if norms.shape[0] == 1 else norms.max()  # one op less at batch 1
        return float(worst) / math.sqrt(flat.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "z_limit": self.z_limit}
