"""APGD against independent facts: the paper's checkpoints, at least PGD's strength for the same
budget, DLR's immunity to a saturated softmax, and APGD-T's untargeted success criterion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _helpers.models import accuracy, trained_digits_mlp
from bastion.attacks import APGD, APGDT, PGD
from bastion.attacks.apgd import checkpoint_fractions, checkpoints
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel


class Scaled(nn.Module):
    """Logits times 1000: float32 softmax saturates, so CE gradients are exactly zero."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * self.inner(x)


def test_checkpoints_match_the_paper() -> None:
    # recomputed here from the recurrence, and against the values printed in the paper
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    paper = [0.0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99]
    assert checkpoint_fractions() == pytest.approx(p)
    assert checkpoint_fractions() == pytest.approx(paper)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(20) == sorted({math.ceil(q * 20 - 1e-9) for q in paper[1:]} - {20})
    assert checkpoints(1) == []


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.5)])
def test_apgd_at_least_as_strong_as_pgd_with_the_same_steps(norm: str, eps: float) -> None:
    model, x, y = trained_digits_mlp()
    threat = ThreatModel(norm=norm, eps=eps)
    pgd = accuracy(model, PGD(threat=threat, steps=20)(model, x, y), y)
    assert 0.2 <= pgd <= 0.6, f"eps {eps} no longer moderate: PGD-20 leaves {pgd:.2f}"
    apgd, stats = APGD(threat=threat, steps=20).run_with_stats(model, x, y)
    assert accuracy(model, apgd, y) <= pgd + 0.01
    assert stats.backward <= 20 * x.shape[0]


def test_dlr_breaks_a_saturated_softmax_that_ce_cannot() -> None:
    mlp, x, y = trained_digits_mlp()
    model = Scaled(mlp)
    grad_x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(grad_x), y, reduction="sum").backward()
    assert (grad_x.grad.flatten(1).abs().sum(1) == 0).float().mean() > 0.9  # CE is blind here
    threat = ThreatModel(norm="linf", eps=0.15)
    ce_pgd = accuracy(model, PGD(threat=threat, steps=20)(model, x, y), y)
    ce_apgd = accuracy(model, APGD(threat=threat, steps=20)(model, x, y), y)
    dlr = accuracy(model, APGD(threat=threat, steps=20, loss="dlr")(model, x, y), y)
    unscaled = accuracy(mlp, APGD(threat=threat, steps=20, loss="dlr")(mlp, x, y), y)
    assert ce_pgd >= 0.9 and ce_apgd >= 0.9
    assert dlr <= 0.2 and ce_pgd - dlr >= 0.7
    assert dlr == pytest.approx(unscaled, abs=0.05)  # DLR does not see the scale at all


def test_apgd_t_takes_true_labels_and_counts_any_misclassification() -> None:
    model, x, y = trained_digits_mlp()
    threat = ThreatModel(norm="linf", eps=0.1)
    plain = accuracy(model, APGD(threat=threat, steps=20, loss="dlr")(model, x, y), y)
    x_adv, stats = APGDT(threat, targets=3, steps=20).run_with_stats(model, x, y)
    assert accuracy(model, x_adv, y) <= plain + 0.01
    assert stats.backward <= 3 * 20 * x.shape[0]
    # broken samples are misclassified, though not necessarily as the first target
    pred = model(x_adv).argmax(1)
    assert (pred != y).float().mean() >= 0.5


def test_targeted_apgd_reaches_its_targets() -> None:
    model, x, y = trained_digits_mlp()
    target = (y + 1) % 10
    threat = ThreatModel(norm="l2", eps=2.0)
    for loss in ("ce", "dlr"):
        x_adv = APGD(threat=threat, steps=30, targeted=True, loss=loss)(model, x, target)
        assert (model(x_adv).argmax(1) == target).float().mean() >= 0.9, loss


def test_unbroken_samples_keep_their_best_loss_point() -> None:
    model, x, y = trained_digits_mlp()
    threat = ThreatModel(norm="linf", eps=0.03)
    x_adv = APGD(threat=threat, steps=20)(model, x, y)
    with torch.no_grad():
        clean = nn.functional.cross_entropy(model(x), y, reduction="none")
        after = nn.functional.cross_entropy(model(x_adv), y, reduction="none")
    assert (after >= clean).all()  # the best point beats the clean one for every sample


def test_invalid_configurations_say_what_to_fix() -> None:
    threat = ThreatModel(norm="linf", eps=0.1)
    x = torch.rand(3, 1, 2, 2)

    def linear(classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, classes))

    with pytest.raises(ConfigurationError, match="at least 3 classes"):
        APGD(threat=threat, loss="dlr")(linear(2), x, torch.tensor([0, 1, 0]))
    with pytest.raises(ConfigurationError, match="at least 4 classes"):
        APGDT(threat)(linear(3), x, torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigurationError, match="TRUE labels"):
        APGD(threat=threat, targeted_classes=3, targeted=True)
    with pytest.raises(ConfigurationError, match="steps"):
        APGD(threat=threat, steps=0)
    with pytest.raises(ConfigurationError, match="rho"):
        APGD(threat=threat, rho=1.5)
    with pytest.raises(ConfigurationError, match="unknown loss"):
        APGD(threat=threat, loss="hinge")
