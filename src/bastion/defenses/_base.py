"""What every preprocessing defense shares: the base owns the invariants, a defense one hook.

A defense is an ``nn.Module`` that maps a batch in known bounds to a batch of the same shape in
the same bounds. It is placed in front of any model with ``nn.Sequential(defense, model)`` (or
:func:`defend`), so a defended model is still "bounded inputs -> logits" and every attack,
evaluation and server in bastion takes it unchanged. :class:`Preprocessing` checks the input
(a floating-point batch, finite, inside the bounds, the dimensions the defense needs), calls the
defense's ``_transform`` and clamps the result into the bounds, whatever ``_transform`` did.
The range check is one reduction and one host read per call: negligible next to a model on the
CPU, a synchronisation point on a GPU.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import nn

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["Bounds", "Preprocessing", "check_bounds", "defend", "make_generator", "positive_int"]

Bounds = tuple[float, float]

_TOL = 1e-6


def check_bounds(bounds: object) -> Bounds:
    """``bounds`` as a float pair ``(lower, upper)`` with ``lower < upper``, or a clear error."""
    try:
        lo, hi = (float(b) for b in bounds)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"bounds must be a (lower, upper) pair of numbers, got {bounds!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigurationError(f"bounds must satisfy lower < upper, got {bounds!r}")
    return lo, hi


def make_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """A seed becomes a private CPU generator; a generator or None is kept as is."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise ConfigurationError(
        f"generator must be a torch.Generator, an integer seed or None, got "
        f"{type(generator).__name__}"
    )


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum``, else a ConfigurationError naming it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Preprocessing(nn.Module, abc.ABC):
    """Base of every defense: checked input, one ``_transform`` hook, output in the bounds.

    Args:
        bounds: the valid input range ``(lower, upper)``; the output stays inside it.

    Attributes:
        min_dims: the fewest dimensions an input batch may have (2: ``(B, features)``;
            image defenses set 4: ``(B, C, H, W)``).
    """

    min_dims: int = 2
    exact_dims: int | None = None

    def __init__(self, *, bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.bounds: Bounds = check_bounds(bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x``, transform it, clamp into the bounds (same shape as ``x``)."""
        self.check_input(x)
        out = self._transform(x)
        if out.shape != x.shape:  # a bug in the defense, not in the caller's data
            raise RuntimeError(
                f"{type(self).__name__} changed the shape {tuple(x.shape)} -> {tuple(out.shape)}"
            )
        lo, hi = self.bounds
        return out.clamp(lo, hi)

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse non-tensors, wrong dimensions, non-float, non-finite or out-of-bounds values."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise InputValidationError(f"{name} takes a torch.Tensor, got {type(x).__name__}")
        want = self.exact_dims
        if (want is not None and x.dim() != want) or x.dim() < self.min_dims:
            shape = "(B, C, H, W) images" if want == 4 else f"a batch with >= {self.min_dims} dims"
            raise InputValidationError(
                f"{name} takes {shape}, got shape {tuple(x.shape)}; add the batch (and channel) "
                "dimension with x.unsqueeze(0) (x.unsqueeze(1))"
            )
        if not x.is_floating_point():
            raise InputValidationError(
                f"{name} takes floating-point inputs in [{self.bounds[0]:g}, {self.bounds[1]:g}],"
                f" got {x.dtype}; convert with x.float() (and scale 0-255 images by 1/255)"
            )
        if x.numel() == 0:
            return
        lo, hi = self.bounds
        low, high = torch.aminmax(x.detach())
        low_f, high_f = float(low), float(high)
        if not (low_f >= lo - _TOL and high_f <= hi + _TOL):  # also catches NaN
            raise InputValidationError(
                f"{name} takes finite inputs inside bounds [{lo:g}, {hi:g}], got values in "
                f"[{low_f:g}, {high_f:g}]; scale the data into the bounds (normalisation belongs "
                "inside the model) or construct the defense with the data's bounds="
            )

    @abc.abstractmethod
    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """The defense itself, on a checked input; the base clamps what it returns."""

    def extra_repr(self) -> str:
        return f"bounds=({self.bounds[0]:g}, {self.bounds[1]:g})"


def defend(model: nn.Module, *defenses: nn.Module) -> nn.Sequential:
    """``nn.Sequential(*defenses, model)``: the defenses run in order in front of ``model``.

    Args:
        model: any classifier from bounded inputs to logits.
        *defenses: preprocessing modules (bastion defenses or any shape-preserving module).

    Returns:
        The defended model, itself bounded inputs -> logits.

    Raises:
        ConfigurationError: ``model`` or a defense is not an ``nn.Module``, or no defense given.

    Example:
        >>> import torch
        >>> from bastion.defenses import BitDepth, defend
        >>> model = defend(torch.nn.Flatten(), BitDepth(1))
        >>> model(torch.tensor([[[0.2, 0.7]]])).tolist()
        [[0.0, 1.0]]
    """
    for part in (model, *defenses):
        if not isinstance(part, nn.Module):
            raise ConfigurationError(
                f"defend takes nn.Modules (the model, then the defenses), got {type(part).__name__}"
            )
    if not defenses:
        raise ConfigurationError("defend needs at least one defense after the model")
    return nn.Sequential(*defenses, model)
