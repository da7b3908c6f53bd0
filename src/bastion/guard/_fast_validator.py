"""The input guard's request path: a validator built once per schema (see :func:`fast_validator`).

:meth:`InputGuard.passes <bastion.guard.policy.InputGuard.passes>` and ``guard()`` ask it first;
its True must always be the exact checks' verdict (:mod:`bastion.guard._checks`), and anything it
is not built to judge returns False, so that they decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from bastion.guard._checks import MARGIN

if TYPE_CHECKING:
    from bastion.guard.schema import TensorSchema

__all__ = ["FAST_VALUES", "fast_validator"]

FAST_VALUES = 1 << 16
"""Batches :func:`fast_validator` judges at most (larger ones: the exact checks' own fast path,
:func:`~bastion.guard._checks.certainly_valid`)."""


def fast_validator(schema: TensorSchema) -> Callable[[object], bool] | None:
    """:func:`~bastion.guard._checks.certainly_valid` for the request path of a server: a
    function of ``x`` built once per schema, True only when ``x`` is a dense float32 CPU tensor
    of at most :data:`FAST_VALUES` values that satisfies every rule; None when no float32 batch
    can be judged this way (the schema does not allow float32, or a sample dimension is not
    fixed).

    At batch size 1 the cost is dispatch, not arithmetic: each torch op costs 15-20 µs inside a
    server, where the request's other work has evicted the op's code from the caches since the
    last request. So everything about the schema is looked up here once, and a batch costs six
    numpy calls (its range, then the z-scores' sum of squares in float64: for float32 values
    and std > 0 nothing overflows, so nothing warns) and a few attribute reads. Anything
    unusual (NaN, an infinity, a value out of range, a z-score within ``MARGIN`` of the limit,
    a tensor that needs grad) returns False, and the exact checks decide.
    """
    batch_dim, sample = schema.shape[0], schema.shape[1:]
    if torch.float32 not in schema.dtypes or not all(isinstance(d, int) for d in sample):
        return None
    fixed_batch = batch_dim if isinstance(batch_dim, int) else None
    biggest = float(torch.finfo(torch.float32).max)
    low = -math.inf if schema.min is None else schema.min
    high = math.inf if schema.max is None else schema.max
    if schema.finite:  # -inf and +inf fail these, NaN fails every comparison
        low, high = max(low, -biggest), min(high, biggest)
    judge_range = low != -math.inf or high != math.inf
    stats = schema.stats
    size = math.prod(d for d in sample if isinstance(d, int))
    if stats is not None:
        mean = stats.mean.double().numpy().reshape(sample)
        inv_std = (1.0 / stats.std.double()).numpy().reshape(sample)
        limit = stats.z_limit * (1.0 - MARGIN)
    want_shape = torch.Size(d for d in sample if isinstance(d, int))
    rank = len(schema.shape)
    float32, strided, sqrt = torch.float32, torch.strided, math.sqrt
    vdot, einsum = np.vdot, np.einsum
    smallest, largest = np.minimum.reduce, np.maximum.reduce  # (ndarray.min: a Python wrapper)

    def valid(x: object) -> bool:
        if (type(x) is not Tensor or x.dtype is not float32 or x.dim() != rank
                or x.shape[1:] != want_shape or not x.is_cpu or x.requires_grad
                or x.layout is not strided or x.is_neg()):
            return False
        n = x.shape[0]
        if n == 0 or n * size > FAST_VALUES or (fixed_batch is not None and n != fixed_batch):
            return False
        try:
            values = x.numpy()
        except (RuntimeError, TypeError):  # a wrapped tensor numpy cannot see: the exact path
            return False
        if judge_range and not (float(smallest(values, None)) >= low
                                and float(largest(values, None)) <= high):
            return False
        if stats is None:
            return True
        z = values - mean  # float64
        z *= inv_std
        if n == 1:
            worst = float(vdot(z, z))
        else:
            flat = z.reshape(n, size)
            worst = float(einsum("ij,ij->i", flat, flat).max())
        return sqrt(worst / size) < limit

    return valid
