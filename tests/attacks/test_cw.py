"""Carlini-Wagner L2 against independent facts: the closed-form distance on a linear model,
the confidence margin kappa, targets reached, and a binary search that only ever helps."""

from __future__ import annotations

import pytest
import torch

from _helpers.models import LinearBinary, accuracy, trained_digits_mlp
from bastion.attacks import CarliniWagner
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel

FAST = {"steps": 50, "binary_search_steps": 4, "initial_const": 1.0, "lr": 0.05}


def test_linear_model_closed_form_distance() -> None:
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(20, generator=gen)
    x = torch.randn(16, 20, generator=gen) * 0.5
    model = LinearBinary(w, b=0.1)
    score = x @ w + 0.1
    y = (score > 0).long()
    distance = score.abs() / w.norm()
    threat = ThreatModel(norm="l2", eps=10.0, bounds=(-10.0, 10.0))
    attack = CarliniWagner(
        threat=threat, steps=200, binary_search_steps=10, initial_const=1.0, lr=1e-3
    )
    x_adv = attack(model, x, y)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    ratio = threat.norms(x_adv - x) / distance
    assert ratio.min() >= 1 - 1e-3, "below the closed-form minimum: impossible"
    assert ratio.max() <= 1.05


def test_untargeted_breaks_a_trained_mlp_and_respects_kappa() -> None:
    model, x, y = trained_digits_mlp()
    x, y = x[:60], y[:60]
    threat = ThreatModel(norm="l2", eps=100.0)
    plain = CarliniWagner(threat=threat, **FAST)(model, x, y)
    assert accuracy(model, plain, y) <= 0.02
    confident = CarliniWagner(threat=threat, kappa=3.0, **FAST)(model, x, y)
    with torch.no_grad():
        logits = model(confident)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    broken = logits.argmax(1) != y
    assert broken.float().mean() >= 0.95
    assert (other - true)[broken].min() >= 3.0 - 1e-4, "kappa is the guaranteed logit margin"
    # more confidence costs a larger perturbation
    assert threat.norms(confident - x).median() > threat.norms(plain - x).median()


def test_targeted_reaches_its_targets() -> None:
    model, x, y = trained_digits_mlp()
    x, y = x[:60], y[:60]
    targets = (y + 1 + torch.arange(60) % 9) % 10  # never the true class
    attack = CarliniWagner(threat=ThreatModel(norm="l2", eps=100.0), targeted=True, **FAST)
    x_adv = attack(model, x, targets)
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == targets).float().mean()
    assert hit >= 0.9, f"targets reached: {hit:.2f}"


def test_binary_search_only_shrinks_the_perturbation_and_raises_a_weak_constant() -> None:
    model, x, y = trained_digits_mlp()
    x, y = x[:50], y[:50]
    threat = ThreatModel(norm="l2", eps=100.0)
    params = {"steps": 50, "initial_const": 50.0, "lr": 0.05}
    once = CarliniWagner(threat=threat, binary_search_steps=1, **params)(model, x, y)
    searched = CarliniWagner(threat=threat, binary_search_steps=4, **params)(model, x, y)
    ok = model(once).argmax(1) != y
    assert ok.float().mean() > 0.9
    # the search starts with the same run, so it can only keep smaller successful points
    n_once, n_searched = threat.norms(once - x), threat.norms(searched - x)
    assert (n_searched[ok] <= n_once[ok] + 1e-6).all()
    assert (n_searched[ok] < n_once[ok] - 1e-4).any()
    # a constant far too small fails alone; the search multiplies it until attacks succeed
    weak = {"steps": 50, "initial_const": 1e-4, "lr": 0.05}
    alone = CarliniWagner(threat=threat, binary_search_steps=1, **weak)(model, x, y)
    raised = CarliniWagner(threat=threat, binary_search_steps=6, **weak)(model, x, y)
    assert accuracy(model, alone, y) >= 0.9
    assert accuracy(model, raised, y) <= 0.1


def test_invalid_configuration_says_what_to_fix() -> None:
    with pytest.raises(ConfigurationError, match="expected an l2 threat model, got linf"):
        CarliniWagner(threat=ThreatModel(norm="linf", eps=0.3))
    l2 = ThreatModel(norm="l2", eps=1.0)
    with pytest.raises(ConfigurationError, match="binary_search_steps must be a positive"):
        CarliniWagner(threat=l2, binary_search_steps=0)
    with pytest.raises(ConfigurationError, match="lr must be a positive number"):
        CarliniWagner(threat=l2, lr=0.0)
    with pytest.raises(ConfigurationError, match="kappa must be a finite number >= 0"):
        CarliniWagner(threat=l2, kappa=-1.0)
