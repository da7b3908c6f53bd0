"""Checks of :class:`~bastion.guard.policy.InputGuard`'s arguments, run once when it is built.

A guard runs on every request of a server: an argument that would fail there (a logger that is
not one, a fill value float16 cannot hold, a default sample that is not numbers) is refused when
the guard is built instead, with a :class:`ConfigurationError` naming it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard._convert import to_tensor

if TYPE_CHECKING:
    from bastion.guard.schema import TensorSchema

__all__ = ["check_fill", "check_logger", "default_sample"]


def check_logger(logger: object) -> None:
    """Refuse anything but a logger: the first action logged would fail mid-request."""
    if not isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
        raise ConfigurationError(
            f"logger must be a logging.Logger or LoggerAdapter, got {logger!r:.80}")


def check_fill(fill: object, schema: TensorSchema) -> None:
    """Refuse a ``fill`` that is not a finite number (a bool is none) in ``[min, max]`` and in
    the range of every floating dtype of ``schema`` (``torch.full_like`` raises beyond it)."""
    value = math.nan
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        try:
            value = float(fill)
        except OverflowError:
            pass
    low = -math.inf if schema.min is None else schema.min
    high = math.inf if schema.max is None else schema.max
    if not (math.isfinite(value) and low <= value <= high and all(
            abs(value) <= torch.finfo(d).max for d in schema.dtypes if d.is_floating_point)):
        raise ConfigurationError(
            f"fill must be a finite number within [min, max] = [{schema.min}, {schema.max}] "
            f"and the range of the schema's dtypes, got {fill!r:.80}"
        )


def default_sample(default: object) -> Tensor:
    """The ``substitute`` policy's default sample as a tensor; ConfigurationError if it is not
    numbers (a string, ragged lists, an object array, an int beyond any dtype)."""
    try:
        if isinstance(default, np.ndarray):
            return to_tensor(default)
        return torch.as_tensor(default)
    except (InputValidationError, TypeError, ValueError, OverflowError, RuntimeError) as error:
        raise ConfigurationError(
            f"default must be one sample as a tensor, a numeric array or nested lists of "
            f"numbers, got {type(default).__name__}: {error}"
        ) from None
