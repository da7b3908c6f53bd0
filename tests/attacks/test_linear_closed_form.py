"""On a linear model the minimal adversarial perturbation is known in closed form:
d_inf = |w·x + b| / ||w||_1 and d_2 = |w·x + b| / ||w||_2. Gradient attacks must find a
perturbation at (just above) that distance and must fail just below it."""

from __future__ import annotations

import pytest
import torch

from _helpers.models import LinearBinary
from bastion.attacks import FGSM, PGD
from bastion.core.threat import Norm, ThreatModel


def _problem(seed: int) -> tuple[LinearBinary, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(20, generator=gen)
    x = torch.randn(16, 20, generator=gen) * 0.5
    model = LinearBinary(w, b=0.1)
    score = x @ w + 0.1
    y = (score > 0).long()
    return model, x, y, score.abs()


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("make", [lambda t: FGSM(t), lambda t: PGD(threat=t, steps=30)],
                         ids=["fgsm", "pgd"])
def test_attacks_reach_the_closed_form_distance(norm: Norm, make) -> None:  # type: ignore[no-untyped-def]
    model, x, y, margin = _problem(0)
    dual = model.w.detach().abs().sum() if norm is Norm.LINF else model.w.detach().norm()
    distance = margin / dual
    for i in range(x.shape[0]):
        xi, yi = x[i : i + 1], y[i : i + 1]
        above = ThreatModel(norm=norm, eps=float(distance[i]) * 1.02, bounds=(-10.0, 10.0))
        below = ThreatModel(norm=norm, eps=float(distance[i]) * 0.98, bounds=(-10.0, 10.0))
        x_hi = make(above)(model, xi, yi)
        x_lo = make(below)(model, xi, yi)
        assert model(x_hi).argmax(1).item() != yi.item(), f"sample {i}: not found at 1.02 d"
        assert model(x_lo).argmax(1).item() == yi.item(), f"sample {i}: broke below d (impossible)"
