"""Checks of the monitors' constructor arguments and reference data, run once (never per update).

Each check returns the value normalised to a builtin type (a numpy integer becomes an ``int``,
so monitor state stays JSON-serialisable) or raises :class:`ConfigurationError` with the
argument's name, what is allowed and the offending value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["SEED_RANGE", "check_fraction", "check_int", "check_reference", "check_windows"]

# what torch.Generator.manual_seed accepts, less one at the top: calibration seeds ``seed + 1``
SEED_RANGE = (-(2**63), 2**64 - 2)


def check_int(value: object, what: str, *, low: int, high: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        if number >= low and (high is None or number <= high):
            return number
    span = f">= {low}" if high is None else f"in {low}..{high}"
    raise ConfigurationError(
        f"{what} must be an integer {span}, got {value!r} ({type(value).__name__})"
    )


def check_fraction(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) in ``(0, 1)``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if 0.0 < number < 1.0:  # False for nan
            return number
    raise ConfigurationError(
        f"{what} must be a number in (0, 1), got {value!r} ({type(value).__name__})"
    )


def check_reference(reference: object, name: str) -> Tensor:
    """``reference`` if it is a tensor batch with at least one sample and one feature each.

    How many samples are enough depends on the calibration; :meth:`Monitor.fit` checks that.
    """
    if not isinstance(reference, Tensor):
        raise InputValidationError(
            f"{name}: reference must be a torch.Tensor, got {type(reference).__name__}"
        )
    shape = tuple(reference.shape)
    if reference.ndim == 0 or shape[0] == 0:
        raise InputValidationError(
            f"{name}: reference must be a non-empty batch (samples first), got shape {shape}"
        )
    if math.prod(shape[1:]) == 0:
        raise InputValidationError(
            f"{name}: reference has no features per sample (shape {shape}); a monitor needs "
            "at least 1"
        )
    return reference


def check_windows(windows: Sequence[Tensor], n: int, least: int, name: str) -> None:
    """Refuse index windows into ``n`` samples that are not 1-D integer tensors of at least
    ``least`` indices, each in ``0..n - 1`` (torch would wrap negative ones silently)."""
    for i, idx in enumerate(windows):
        if not isinstance(idx, Tensor) or idx.ndim != 1 or idx.is_floating_point() \
                or idx.is_complex() or idx.dtype == torch.bool:
            got = (f"shape {tuple(idx.shape)} and dtype {idx.dtype}"
                   if isinstance(idx, Tensor) else type(idx).__name__)
            raise InputValidationError(
                f"{name}: window {i} must be a 1-D integer tensor of sample indices, got {got}"
            )
        if idx.numel() < least:
            raise InputValidationError(
                f"{name}: window {i} has {idx.numel()} sample(s); a window of this test needs "
                f"at least {least}"
            )
        low, high = (int(v) for v in torch.aminmax(idx))
        if low < 0 or high >= n:
            raise InputValidationError(
                f"{name}: window {i} has index {low if low < 0 else high}, outside 0..{n - 1} "
                f"(x has {n} samples)"
            )
