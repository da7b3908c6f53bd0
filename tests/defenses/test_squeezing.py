"""Feature squeezing as a defense (Xu, Evans & Qi 2018): the formulas, and the adaptive-attack
story — bit-depth reduction without BPDA shatters the gradient (attacks stall, the sanity checks
flag it), its built-in BPDA breaks it; median smoothing is attacked through its exact gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from torch import nn

from bastion.attacks import PGD, AttackHint, attack_hints
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.threat import ThreatModel
from bastion.defenses import BitDepth, MedianSmoothing, bit_depth, defend, median_smooth
from bastion.evaluate import MASKING_FLAG, robustness
from defenses.mnist_cnn import judged_accuracy, mnist_batch, trained_cnn


def test_bit_depth_formula_and_straight_through_gradient() -> None:
    x = torch.tensor([[0.0, 0.1, 0.3, 0.5, 0.74, 1.0]], requires_grad=True)
    out = BitDepth(2)(x)  # levels 0, 1/3, 2/3, 1: round(x * 3) / 3
    assert torch.allclose(out, torch.round(x.detach() * 3) / 3)
    out.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones_like(x))
    signed = BitDepth(1, bounds=(-1, 1))(torch.tensor([[-0.9, -0.1, 0.2, 0.8]]))
    assert signed.tolist() == [[-1.0, -1.0, 1.0, 1.0]]
    assert attack_hints(defend(nn.Flatten(), BitDepth(3))) == {AttackHint.BPDA}


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_matches_scipy_median_filter(size: int) -> None:
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(size))
    expected = np.stack([[median_filter(x[b, c].numpy(), size=size, mode="mirror")
                          for c in range(3)] for b in range(2)])  # fmt: skip
    assert np.array_equal(median_smooth(x, size).numpy(), expected)
    assert torch.equal(MedianSmoothing(size)(x), median_smooth(x, size))
    assert attack_hints(MedianSmoothing(size)) == frozenset()  # exact a.e. gradient: no hint


class _RawBitDepth(nn.Module):
    """Bit-depth reduction with its true gradient (zero): the defense without BPDA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bit_depth(x, bits=4)


def test_bit_depth_without_bpda_masks_gradients_and_bpda_breaks_it() -> None:
    model = trained_cnn()
    x, y = mnist_batch(100)
    threat = ThreatModel(eps=0.2)
    masked, honest = nn.Sequential(_RawBitDepth(), model), defend(model, BitDepth(4))
    clean = judged_accuracy(honest, x, y)
    assert torch.equal(masked(x), honest(x))  # the same defense on the forward pass
    naive = judged_accuracy(honest, PGD(threat=threat, steps=20)(masked, x, y), y)
    adaptive = judged_accuracy(honest, PGD(threat=threat, steps=20)(honest, x, y), y)
    print(f"clean {clean:.2f} PGD without BPDA {naive:.2f} with BPDA {adaptive:.2f}")
    assert naive >= clean - 0.05, "a zero gradient should leave PGD nothing to follow"
    assert adaptive <= 0.1
    result = robustness(masked, (x[:60], y[:60]), threat, [PGD(threat=threat, steps=10)],
                        progress=False, sanity_samples=30)
    checks = {c.check: c for c in result.sanity}
    assert not checks["gradients"].passed and "100.0% of 30" in checks["gradients"].detail
    assert MASKING_FLAG in result.flags


def test_median_smoothing_falls_to_white_box_pgd_through_it() -> None:
    model = trained_cnn()
    x, y = mnist_batch(100)
    threat = ThreatModel(eps=0.2)
    defended = defend(model, MedianSmoothing(2))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(defended(xg), y), xg)
    assert bool((grad.flatten(1).abs().sum(1) > 0).all())  # a usable gradient at every point
    transfer = judged_accuracy(defended, PGD(threat=threat, steps=20)(model, x, y), y)
    white_box = judged_accuracy(defended, PGD(threat=threat, steps=20)(defended, x, y), y)
    print(f"clean {judged_accuracy(defended, x, y):.2f} transfer {transfer:.2f} "
          f"white box {white_box:.2f}")
    assert white_box <= 0.15 and white_box <= transfer - 0.15


def test_bad_squeezer_parameters_and_inputs_say_what_to_fix() -> None:
    with pytest.raises(ConfigurationError, match="bits must be an integer >= 1, got 0"):
        BitDepth(0)
    with pytest.raises(ConfigurationError, match="bits must be between 1 and 16"):
        BitDepth(17)
    with pytest.raises(ConfigurationError, match="size must be an integer >= 2, got 1"):
        MedianSmoothing(1)
    with pytest.raises(ConfigurationError, match="bounds must satisfy lower < upper"):
        BitDepth(2, bounds=(1, 0))
    with pytest.raises(InputValidationError, match="at least 5 pixels a side, got 4x4"):
        MedianSmoothing(5)(torch.rand(1, 1, 4, 4))
    with pytest.raises(InputValidationError, match="floating-point inputs"):
        BitDepth(2)(torch.ones(2, 3, dtype=torch.uint8))
    with pytest.raises(InputValidationError, match="finite inputs inside bounds"):
        BitDepth(2)(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(InputValidationError, match="takes a torch.Tensor"):
        BitDepth(2)([[0.5]])  # type: ignore[arg-type]
