"""DeepFool against independent facts: on a linear model one step lands at the closed-form
distance times (1 + overshoot); on a trained MLP it breaks every sample with small norms."""

from __future__ import annotations

import pytest
import torch

from _helpers.models import LinearBinary, accuracy, trained_digits_mlp
from bastion.attacks import DeepFool
from bastion.core.errors import ConfigurationError
from bastion.core.threat import Norm, ThreatModel

WIDE = (-10.0, 10.0)


def _problem(seed: int) -> tuple[LinearBinary, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(20, generator=gen)
    x = torch.randn(16, 20, generator=gen) * 0.5
    model = LinearBinary(w, b=0.1)
    score = x @ w + 0.1
    return model, x, (score > 0).long(), score.abs()


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
@pytest.mark.parametrize("overshoot", [0.02, 0.2])
def test_linear_model_closed_form_distance(norm: Norm, overshoot: float) -> None:
    model, x, y, margin = _problem(1)
    dual = model.w.detach().abs().sum() if norm is Norm.LINF else model.w.detach().norm()
    distance = margin / dual
    threat = ThreatModel(norm=norm, eps=10.0, bounds=WIDE)
    x_adv, stats = DeepFool(threat=threat, overshoot=overshoot).run_with_stats(model, x, y)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all(), "every sample crosses the boundary"
    ratio = threat.norms(x_adv - x) / distance
    # the exact boundary step (plus the paper's 1e-4 in the logit gap), scaled by 1 + overshoot
    assert ratio.min() >= 1 + overshoot - 1e-3
    assert ratio.max() <= 1 + overshoot + 0.01
    # a linear model takes one step: two batched passes per sample (the step, then the check)
    assert stats.backward == 2 * x.shape[0]


@pytest.mark.parametrize(("norm", "typical"), [(Norm.L2, 2.0), (Norm.LINF, 0.3)])
def test_breaks_a_trained_mlp_with_small_perturbations(norm: Norm, typical: float) -> None:
    model, x, y = trained_digits_mlp()
    x, y = x[:100], y[:100]
    threat = ThreatModel(norm=norm, eps=100.0)  # unbounded in practice: the raw perturbation
    x_adv, stats = DeepFool(threat=threat, steps=50).run_with_stats(model, x, y)
    assert accuracy(model, x_adv, y) == 0.0
    norms = threat.norms(x_adv - x)
    # minimal perturbations are far below the radius that PGD needs to break this model
    assert norms.median() < typical / 2, f"median {norms.median():.3f}"
    assert (norms > 0).all()
    # per-sample early stop: far fewer than steps * 9 candidates passes per sample
    assert stats.backward < 10 * 9 * x.shape[0]


def test_misclassified_samples_come_back_unchanged() -> None:
    model, x, y = trained_digits_mlp()
    wrong = (y[:20] + 1) % 10
    x_adv = DeepFool(threat=ThreatModel(norm="l2", eps=5.0))(model, x[:20], wrong)
    assert torch.equal(x_adv, x[:20])


def test_candidates_limit_the_classes_considered() -> None:
    model, x, y = trained_digits_mlp()
    threat = ThreatModel(norm="l2", eps=100.0)
    _, stats = DeepFool(threat=threat, candidates=3, steps=1).run_with_stats(model, x[:10], y[:10])
    assert stats.backward == 2 * 10  # one step: 2 candidate classes besides the true one


def test_invalid_configuration_says_what_to_fix() -> None:
    threat = ThreatModel(norm="l2", eps=1.0)
    with pytest.raises(ConfigurationError, match="no targeted version"):
        DeepFool(threat=threat, targeted=True)
    with pytest.raises(ConfigurationError, match="candidates must be an integer >= 2"):
        DeepFool(threat=threat, candidates=1)
    with pytest.raises(ConfigurationError, match="steps must be a positive integer"):
        DeepFool(threat=threat, steps=0)
    with pytest.raises(ConfigurationError, match="overshoot must be a number >= 0"):
        DeepFool(threat=threat, overshoot=-0.1)
