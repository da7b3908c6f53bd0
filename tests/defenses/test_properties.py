"""Every defense, on any valid batch: same shape, output inside the bounds, deterministic ones
repeatable; and ``defend`` composes them in front of a model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bastion.core.errors import ConfigurationError
from bastion.defenses import (
    BitDepth,
    Denoiser,
    GaussianNoise,
    MedianSmoothing,
    Preprocessing,
    RandomResizePad,
    defend,
)


def _defenses(channels: int, bounds: tuple[float, float]) -> list[Preprocessing]:
    denoiser = Denoiser(channels, bounds=bounds)
    with torch.no_grad():  # a random last layer, so the residual is not zero
        for p in denoiser.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return [RandomResizePad(2, generator=0, bounds=bounds),
            GaussianNoise(0.5, generator=0, bounds=bounds), BitDepth(3, bounds=bounds),
            MedianSmoothing(3, bounds=bounds), denoiser]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 3),
    height=st.integers(3, 10),
    width=st.integers(3, 10),
    low=st.floats(-2, 1),
    span=st.floats(0.1, 3),
    seed=st.integers(0, 2**16),
)
def test_every_defense_keeps_shape_and_bounds(
    batch: int, channels: int, height: int, width: int, low: float, span: float, seed: int
) -> None:
    bounds = (low, low + span)
    gen = torch.Generator().manual_seed(seed)
    x = low + span * torch.rand(batch, channels, height, width, generator=gen)
    x[0, 0, 0, 0] = low  # the edges of the range are valid inputs
    x[-1, -1, -1, -1] = low + span
    for defense in _defenses(channels, bounds):
        out = defense(x)
        name = type(defense).__name__
        assert out.shape == x.shape, name
        assert bool((out >= bounds[0]).all() and (out <= bounds[1]).all()), name
        assert bool(torch.isfinite(out).all()), name
        if name in ("BitDepth", "MedianSmoothing", "Denoiser"):
            assert torch.equal(defense(x), out), name


def test_defend_composes_in_order() -> None:
    model = defend(nn.Flatten(), BitDepth(1), MedianSmoothing(2))
    assert [type(m).__name__ for m in model] == ["BitDepth", "MedianSmoothing", "Flatten"]
    with pytest.raises(ConfigurationError, match="at least one defense"):
        defend(nn.Flatten())
    with pytest.raises(ConfigurationError, match="defend takes nn.Modules"):
        defend(nn.Flatten(), torch.sign)  # type: ignore[arg-type]
