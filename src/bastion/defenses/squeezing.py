"""Feature squeezing: shrink the input space an adversary can use.

Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", https://arxiv.org/abs/1704.01155:

* Bit-depth reduction to i bits, on inputs scaled to [0, 1]:
  ``x' = round(x * (2^i - 1)) / (2^i - 1)``. Xu et al. use 1 bit on MNIST, 5 on CIFAR-10.
* Median smoothing: each pixel is replaced by the median of its ``size x size`` neighbourhood
  (per channel; Xu et al. use 2x2 on MNIST and CIFAR-10, 3x3 on ImageNet).

Adaptive attacks. Rounding has a zero gradient almost everywhere: plain gradient attacks stall
and the model only *looks* robust ("shattered gradients", Athalye, Carlini & Wagner 2018,
https://arxiv.org/abs/1802.00420). :class:`BitDepth` therefore carries its own backward
approximation: the forward pass quantizes, the backward pass is the identity (straight-through
BPDA, :class:`~bastion.attacks.BPDA`), and it declares ``AttackHint.BPDA`` so evaluations report
that gradients were approximated. The median is piecewise linear in its inputs: its gradient
exists almost everywhere and is exact (one for the input pixel that is the median, zero for the
others), so :class:`MedianSmoothing` is attacked with its true gradient and declares no hint; the
evaluation's sanity checks (zero gradients, black box beating white box) would reveal masking.

:func:`bit_depth` and :func:`median_smooth` are the functional forms the modules call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from bastion.attacks.bpda import BPDA
from bastion.attacks.eot import AttackHint
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.defenses._base import Bounds, Preprocessing, check_bounds, positive_int

__all__ = ["BitDepth", "MedianSmoothing", "bit_depth", "median_smooth"]

_MAX_BITS = 16


def bit_depth(x: torch.Tensor, bits: int, bounds: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Reduce ``x`` to ``2**bits`` evenly spaced levels of ``bounds`` (no gradient: rounding).

    Example:
        >>> import torch
        >>> bit_depth(torch.tensor([0.1, 0.4, 0.6, 0.9]), bits=1).tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    lo, hi = check_bounds(bounds)
    levels = float(2**bits - 1)
    unit = (x - lo) / (hi - lo)
    out: torch.Tensor = torch.round(unit.clamp(0, 1) * levels) / levels * (hi - lo) + lo
    return out


def median_smooth(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median of each ``size x size`` neighbourhood of ``x`` ``(B, C, H, W)``, per channel.

    The window of pixel (i, j) spans rows ``i - size//2 .. i + (size-1)//2`` (likewise columns)
    and edges are mirrored; for an even window the upper of the two middle values is taken. This
    is ``scipy.ndimage.median_filter(x, size, mode="mirror")``, which Xu et al. used.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 3, 3)
        >>> x[0, 0, 1, 1] = 1.0  # one bright pixel: salt noise
        >>> median_smooth(x, 3).abs().sum().item()
        0.0
    """
    before, after = size // 2, (size - 1) // 2
    padded = F.pad(x, (before, after, before, after), mode="reflect") if size > 1 else x
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H, W, size, size)
    flat = patches.reshape(*patches.shape[:4], size * size)
    median: torch.Tensor = flat.kthvalue(size * size // 2 + 1, dim=-1).values
    return median


class BitDepth(Preprocessing):
    """Bit-depth reduction with a straight-through backward pass (BPDA).

    Forward: ``x' = round((x - lo) / (hi - lo) * (2^bits - 1)) / (2^bits - 1) * (hi - lo) + lo``.
    Backward: the identity, so gradient attacks see the gradient of the model at ``x'``
    (Athalye et al. 2018's BPDA); the module declares ``AttackHint.BPDA``.

    Args:
        bits: bits per value kept, 1 to 16.
        bounds: the valid input range; levels are spread evenly over it.

    Example:
        >>> import torch
        >>> squeeze = BitDepth(2)
        >>> x = torch.tensor([[0.1, 0.5, 0.8]], requires_grad=True)
        >>> out = squeeze(x)
        >>> [round(v, 3) for v in out[0].tolist()]
        [0.0, 0.667, 0.667]
        >>> out.sum().backward()
        >>> x.grad.tolist()  # straight through, not zero
        [[1.0, 1.0, 1.0]]
    """

    bastion_attack_hint: ClassVar[AttackHint] = AttackHint.BPDA

    def __init__(self, bits: int, *, bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        self.bits = positive_int("bits", bits)
        if self.bits > _MAX_BITS:
            raise ConfigurationError(
                f"bits must be between 1 and {_MAX_BITS} (float32 resolves no more), got {bits}"
            )
        bounds_: Bounds = self.bounds
        self.straight_through = BPDA(functools.partial(bit_depth, bits=self.bits, bounds=bounds_))

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.straight_through(x)
        return out

    def extra_repr(self) -> str:
        return f"bits={self.bits}, {super().extra_repr()}"


class MedianSmoothing(Preprocessing):
    """Median smoothing over ``size x size`` windows, differentiated exactly (see the module).

    Args:
        size: the window side, 2 or more (Xu et al.: 2 on MNIST and CIFAR-10).
        bounds: the valid input range (a median of values inside it stays inside it).

    Example:
        >>> import torch
        >>> smooth = MedianSmoothing(3)
        >>> x = torch.zeros(1, 1, 4, 4, requires_grad=True)
        >>> out = smooth(x)
        >>> out.shape, float(out.detach().abs().sum())
        (torch.Size([1, 1, 4, 4]), 0.0)
    """

    exact_dims = 4

    def __init__(self, size: int = 2, *, bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__(bounds=bounds)
        self.size = positive_int("size", size, minimum=2)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.size:
            raise InputValidationError(
                f"MedianSmoothing(size={self.size}) needs images at least {self.size} pixels a "
                f"side, got {h}x{w}; choose a smaller size"
            )
        return median_smooth(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, {super().extra_repr()}"
