"""Every attack in the harness list, through the same contract checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import bastion
from _helpers.attack_harness import LARGE_EPS, Entry, cases
from _helpers.models import accuracy, trained_digits_mlp
from bastion.core.threat import Norm, ThreatModel

CASES = cases()
IDS = [c[0] for c in CASES]


def _small_model(seed: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, classes))


@pytest.mark.parametrize(("case_id", "entry", "norm"), CASES, ids=IDS)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.0, 1.5),
    lo=st.floats(-2.0, 0.5),
    width=st.floats(0.1, 3.0),
    batch=st.integers(1, 6),
)
def test_output_stays_in_ball_and_bounds(
    case_id: str,
    entry: Entry,
    norm: Norm,
    seed: int,
    eps: float,
    lo: float,
    width: float,
    batch: int,
) -> None:
    threat = ThreatModel(norm=norm, eps=eps, bounds=(lo, lo + width))
    gen = torch.Generator().manual_seed(seed)
    x = lo + width * torch.rand(batch, 1, 3, 4, generator=gen)
    y = torch.randint(0, 4, (batch,), generator=gen)
    x_adv = entry.make(threat)(_small_model(seed), x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= lo - 1e-6 and x_adv.max() <= lo + width + 1e-6
    assert (threat.norms(x_adv - x) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize(("case_id", "entry", "norm"), CASES, ids=IDS)
def test_attack_lowers_accuracy_of_a_trained_model(case_id: str, entry: Entry, norm: Norm) -> None:
    model, x, y = trained_digits_mlp()
    assert accuracy(model, x, y) == 1.0  # the harness keeps correctly classified samples only
    threat = ThreatModel(norm=norm, eps=LARGE_EPS[norm])
    x_adv = entry.make(threat)(model, x, y)
    robust = accuracy(model, x_adv, y)
    assert robust <= entry.max_accuracy, f"{case_id}: accuracy {robust:.2f} after the attack"
    # and the same attack at eps = 0 changes nothing
    assert torch.equal(entry.make(threat.with_eps(0.0))(model, x, y), x)


@pytest.mark.parametrize(("case_id", "entry", "norm"), CASES, ids=IDS)
def test_modes_and_parameters_are_restored(case_id: str, entry: Entry, norm: Norm) -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4)
    )
    model.train()
    model[4].eval()  # a mixed state must come back exactly as it was
    model[1].weight.requires_grad_(False)
    before_modes = [m.training for m in model.modules()]
    before_grads = [p.requires_grad for p in model.parameters()]
    running = model[2].running_mean.clone()
    x = torch.rand(5, 1, 3, 4)
    y = torch.randint(0, 4, (5,))
    entry.make(ThreatModel(norm=norm, eps=0.2))(model, x, y)
    assert [m.training for m in model.modules()] == before_modes
    assert [p.requires_grad for p in model.parameters()] == before_grads
    assert all(p.grad is None for p in model.parameters()), "no weight gradient is computed"
    assert torch.equal(model[2].running_mean, running), "batch-norm statistics untouched"


@pytest.mark.parametrize(("case_id", "entry", "norm"), CASES, ids=IDS)
def test_seeded_and_reproducible(case_id: str, entry: Entry, norm: Norm) -> None:
    if not entry.deterministic:
        pytest.skip("not deterministic by design")
    model, x, y = trained_digits_mlp()
    threat = ThreatModel(norm=norm, eps=LARGE_EPS[norm] / 3)
    first = entry.make(threat)(model, x[:50], y[:50])
    second = entry.make(threat)(model, x[:50], y[:50])
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("case_id", "entry", "norm"), CASES[:1] + CASES[-1:], ids=[IDS[0], IDS[-1]]
)
def test_invalid_arguments_say_what_to_fix(case_id: str, entry: Entry, norm: Norm) -> None:
    model = _small_model(0)
    attack = entry.make(ThreatModel(norm=norm, eps=0.1))
    x = torch.rand(3, 1, 3, 4)
    with pytest.raises(bastion.InputValidationError, match="out of range"):
        attack(model, x, torch.tensor([0, 1, 9]))
    with pytest.raises(bastion.InputValidationError, match="inside bounds"):
        attack(model, x + 2.0, torch.tensor([0, 1, 2]))
    with pytest.raises(bastion.InputValidationError, match="shape"):
        attack(model, x, torch.tensor([0, 1]))
    with pytest.raises(bastion.InputValidationError, match="integers"):
        attack(model, x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(bastion.ConfigurationError, match="eps"):
        ThreatModel(norm=norm, eps=-0.1)
    with pytest.raises(bastion.ConfigurationError, match="unknown norm"):
        ThreatModel(norm="l3", eps=0.1)


class _Cut(nn.Module):
    """A classifier whose forward cuts the graph to its input (``detach`` or ``no_grad``)."""

    def __init__(self, inner: nn.Module, how: str) -> None:
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x: torch.Tensor) -> object:
        if self.how == "detach":
            return self.inner(x.detach())
        if self.how == "no_grad":
            with torch.no_grad():
                return self.inner(x)
        out = self.inner(x)
        return (out, out) if self.how == "tuple" else {"logits": out}


@pytest.mark.parametrize(
    ("how", "message"),
    [("detach", r"does not let gradients reach its input.*BPDA.*square"),
     ("no_grad", r"does not let gradients reach its input.*BPDA.*square"),
     ("tuple", r"returned a tuple, not a tensor.*\(B, C\) tensor of logits"),
     ("dict", r"returned a dict, not a tensor.*\(B, C\) tensor of logits")],
)
def test_models_that_hide_their_gradient_or_logits_get_a_clear_error(
    how: str, message: str
) -> None:
    model, x, y = trained_digits_mlp()
    attack = bastion.attacks.PGD(threat=ThreatModel(eps=0.1), steps=2)
    with pytest.raises(bastion.core.errors.InputValidationError, match=message):
        attack(_Cut(model, how), x[:8], y[:8])
