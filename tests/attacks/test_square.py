"""Square: black box (no gradient), within its query budget, on the L2 sphere, seeded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _helpers.models import accuracy, trained_digits_mlp
from bastion.attacks import Square
from bastion.attacks.square import _l2_update, square_fraction
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel


class Counting(nn.Module):
    """Counts the samples it is called on, and refuses to run with gradients enabled."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "a black-box attack asked for a gradient"
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_black_box_within_the_query_budget(norm: str) -> None:
    torch.manual_seed(0)
    # a model that ignores its input cannot be broken: every sample uses the whole budget
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0))
    model = Counting(constant)
    x, y = torch.rand(6, 1, 8, 8), torch.full((6,), 9)
    _, stats = Square(threat=ThreatModel(norm=norm, eps=0.5), queries=40).run_with_stats(
        model, x, y
    )
    assert stats.backward == 0
    assert stats.forward == model.rows == 6 * (40 + 1)


@pytest.mark.parametrize(("norm", "eps", "bound"), [("linf", 0.1, 0.5), ("l2", 0.8, 0.6)])
def test_lowers_accuracy_at_a_moderate_eps_without_gradients(
    norm: str, eps: float, bound: float
) -> None:
    mlp, x, y = trained_digits_mlp()
    model = Counting(mlp)
    x_adv, stats = Square(threat=ThreatModel(norm=norm, eps=eps), queries=300).run_with_stats(
        model, x, y
    )
    assert accuracy(mlp, x_adv, y) <= bound
    assert stats.backward == 0 and stats.forward == model.rows <= x.shape[0] * 301


def test_targeted_square_reaches_targets() -> None:
    model, x, y = trained_digits_mlp()
    target = (y + 1) % 10
    attack = Square(threat=ThreatModel(norm="linf", eps=0.3), queries=300, targeted=True)
    x_adv = attack(model, x, target)
    assert (model(x_adv).argmax(1) == target).float().mean() >= 0.7


def test_l2_update_rescales_onto_the_sphere_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    nu = torch.randn(64, 3, 10, 10, generator=gen)
    radius = torch.rand(64, generator=gen) * 2.0  # inside, on and outside nothing: <= eps
    nu = nu / nu.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius.view(-1, 1, 1, 1)
    nu[0] = 0.0
    for side in (1, 2, 5, 9):
        new = _l2_update(nu, 2.0, side, gen)
        assert torch.allclose(new.flatten(1).norm(dim=1), torch.full((64,), 2.0), rtol=1e-5)
        changed = (new != nu).any(dim=1).flatten(1).sum(dim=1)
        assert (changed <= 2 * side * side).all()  # only the two windows move


def test_l2_perturbation_stays_on_the_sphere_when_bounds_do_not_bind() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    x = torch.rand(8, 3, 4, 4)
    y = model(x).argmax(1)
    threat = ThreatModel(norm="l2", eps=0.05, bounds=(-10.0, 10.0))
    x_adv = Square(threat=threat, queries=30)(model, x, y)
    unbroken = model(x_adv).argmax(1) == y
    assert unbroken.any()
    norms = threat.norms(x_adv - x)[unbroken]
    assert torch.allclose(norms, torch.full_like(norms, 0.05), rtol=1e-4)


def test_seeded_and_reproducible() -> None:
    model, x, y = trained_digits_mlp()
    threat = ThreatModel(norm="l2", eps=0.5)
    first = Square(threat=threat, queries=50, seed=1)(model, x[:40], y[:40])
    again = Square(threat=threat, queries=50, seed=1)(model, x[:40], y[:40])
    other = Square(threat=threat, queries=50, seed=2)(model, x[:40], y[:40])
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_schedule_halves_p_at_the_paper_iterations() -> None:
    halvings = [0, 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for k, start in enumerate(halvings):
        assert square_fraction(0.8, start + 1, 10_000) == pytest.approx(0.8 / 2**k)
    # rescaled to the budget: iteration 100 of 1,000 is iteration 1,000 of 10,000
    assert square_fraction(0.1, 100, 1000) == pytest.approx(0.1 / 2**4)
    assert square_fraction(0.1, 101, 1000) == pytest.approx(0.1 / 2**5)


def test_invalid_inputs_and_arguments() -> None:
    flat = nn.Linear(12, 3)
    attack = Square(threat=ThreatModel(norm="linf", eps=0.1), queries=5)
    with pytest.raises(ConfigurationError, match=r"\(B, C, H, W\)"):
        attack(flat, torch.rand(4, 12), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigurationError, match="queries"):
        Square(threat=ThreatModel(eps=0.1), queries=0)
    with pytest.raises(ConfigurationError, match="p_init"):
        Square(threat=ThreatModel(eps=0.1), p_init=2.0)
