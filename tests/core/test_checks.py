"""``bastion.core.checks``: the fast finiteness test against torch's own definition."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.checks import all_finite

_SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e38, -1e308, 5e-324])


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), _SPECIAL),
                    min_size=0, max_size=40),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    cols=st.integers(1, 4),
    transpose=st.booleans(),
)
def test_all_finite_agrees_with_isfinite(
    values: list[float], dtype: torch.dtype, cols: int, transpose: bool
) -> None:
    """Any mix of NaN, infinities, overflowing and ordinary values, in any float dtype and
    memory layout: the verdict is ``isfinite(x).all()``'s (a NaN anywhere, a lone -inf, or a
    value that overflows the dtype all make it False)."""
    with np.errstate(over="ignore"):
        x = torch.tensor(values, dtype=torch.float64).to(dtype)
    rows = len(values) // cols
    x = x[: rows * cols].reshape(rows, cols)
    if transpose:
        x = x.t()  # not contiguous
    assert all_finite(x) == bool(torch.isfinite(x).all())


def test_integer_bool_empty_and_grad_tensors() -> None:
    assert all_finite(torch.arange(5)) and all_finite(torch.ones(3, dtype=torch.bool))
    assert all_finite(torch.empty(0, 7))
    w = torch.tensor([1.0, math.inf], requires_grad=True)
    assert not all_finite(w) and all_finite(w[:1])
    assert not all_finite(torch.tensor([[1.0, 2.0], [math.nan, 3.0]]))
