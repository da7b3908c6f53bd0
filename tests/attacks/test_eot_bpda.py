"""Adaptive attacks against the defenses they exist for: EOT against a randomized model whose
single-pass gradients are noise, BPDA against a quantisation whose gradient is zero."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _helpers.models import accuracy, trained_digits_mlp
from bastion.attacks import BPDA, EOT, PGD, AttackHint, attack_hints, bpda, mark_randomized
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.threat import ThreatModel


class PhaseNoise(nn.Module):
    """Adds c·sin(omega · V x + phi) to the logits, V and phi drawn afresh on every pass.

    With phi uniform on [0, 2 pi) the noise has the same distribution whatever x is, so the
    expected logits are exactly the inner model's and the expected loss has the inner model's
    gradient; one pass's gradient, though, carries c·omega·V noise that swamps it."""

    bastion_attack_hint = AttackHint.EOT

    def __init__(self, inner: nn.Module, c: float = 1.0, omega: float = 200.0) -> None:
        super().__init__()
        self.inner, self.c, self.omega = inner, c, omega
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.inner(x)
        flat = x.flatten(1)
        v = torch.randn(flat.shape[1], logits.shape[1], generator=self.generator)
        phi = 2 * math.pi * torch.rand(logits.shape, generator=self.generator)
        return logits + self.c * torch.sin(self.omega * (flat @ v) / math.sqrt(flat.shape[1]) + phi)


def _expected_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int = 64
) -> float:
    """Accuracy of the prediction averaged over many passes (how a randomized model is judged)."""
    with torch.no_grad():
        mean = sum(model(x) for _ in range(passes)) / passes
    return float((mean.argmax(1) == y).float().mean())


def test_eot_beats_a_randomized_defense_that_fools_pgd() -> None:
    mlp, x, y = trained_digits_mlp()
    x, y = x[:100], y[:100]
    defended = PhaseNoise(mlp)
    assert _expected_accuracy(defended, x, y) == 1.0
    threat = ThreatModel(norm="linf", eps=0.2)
    assert accuracy(mlp, PGD(threat=threat, steps=40)(mlp, x, y), y) == 0.0  # undefended
    plain = _expected_accuracy(defended, PGD(threat=threat, steps=40)(defended, x, y), y)
    eot = _expected_accuracy(
        defended, EOT(attack=PGD(threat=threat, steps=40), samples=32)(defended, x, y), y
    )
    assert plain >= 0.75, f"plain PGD should be fooled by the noise, left {plain:.2f}"
    assert eot <= 0.35, f"EOT-PGD left {eot:.2f}"
    assert plain - eot >= 0.5
    assert attack_hints(nn.Sequential(defended)) == {AttackHint.EOT}


def test_eot_counts_k_passes_and_matches_the_attack_on_a_deterministic_model() -> None:
    model, x, y = trained_digits_mlp()
    x, y = x[:30], y[:30]
    pgd = PGD(threat=ThreatModel(norm="linf", eps=0.05), steps=5, random_start=False,
              early_stop=False)  # fmt: skip
    x_pgd, s_pgd = pgd.run_with_stats(model, x, y)
    x_eot, s_eot = EOT(attack=pgd, samples=3).run_with_stats(model, x, y)
    assert torch.equal(x_eot, x_pgd)  # the average of identical gradients has the same sign
    assert s_eot.backward == 3 * s_pgd.backward
    assert s_eot.forward == 3 * s_pgd.forward + x.shape[0]  # + the base's single clean pass


def test_eot_takes_the_inner_attacks_settings() -> None:
    threat = ThreatModel(norm="l2", eps=1.0)
    inner = PGD(threat=threat, targeted=True, seed=7)
    eot = EOT(attack=inner, samples=4)
    assert (eot.threat, eot.targeted, eot.seed) == (threat, True, 7)
    assert eot.params() == {"attack": "pgd", "attack_params": inner.params(), "samples": 4}
    with pytest.raises(ConfigurationError, match="threat model must be the inner attack's"):
        EOT(attack=inner, threat=threat.with_eps(2.0))
    with pytest.raises(ConfigurationError, match="seed is the inner attack's: expected 7"):
        EOT(attack=inner, seed=3)
    with pytest.raises(ConfigurationError, match="samples must be a positive integer, got 0"):
        EOT(attack=inner, samples=0)
    with pytest.raises(ConfigurationError, match="attack must be a bastion Attack"):
        EOT(attack=nn.Identity())  # type: ignore[arg-type]


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 4) / 4


def test_bpda_breaks_a_quantisation_defense_that_stops_pgd() -> None:
    mlp, x, y = trained_digits_mlp()
    shattered = nn.Sequential(_Quantize(), mlp)
    keep = shattered(x).argmax(1) == y
    x, y = x[keep][:100], y[keep][:100]
    threat = ThreatModel(norm="linf", eps=0.2)
    plain = accuracy(shattered, PGD(threat=threat, steps=20)(shattered, x, y), y)
    through = nn.Sequential(BPDA(_quantize), mlp)
    x_adv = PGD(threat=threat, steps=20)(through, x, y)
    assert torch.equal(through(x_adv), shattered(x_adv))  # same forward: only gradients differ
    adaptive = accuracy(shattered, x_adv, y)
    assert plain >= 0.85, f"the zero gradient should stop PGD, left {plain:.2f}"
    assert adaptive <= 0.05, f"BPDA-PGD left {adaptive:.2f}"
    assert attack_hints(through) == {AttackHint.BPDA}


class _Quantize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quantize(x)


def test_bpda_backward_is_the_approximation() -> None:
    x = torch.tensor([0.1, 0.3, 0.6], requires_grad=True)
    (bpda(_quantize)(x) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad is not None and x.grad.tolist() == [1.0, 2.0, 3.0]  # straight through
    x.grad = None
    smooth = BPDA(torch.sign, approx=torch.tanh)
    out = smooth(x)
    assert out.tolist() == [1.0, 1.0, 1.0]
    out.sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2)
    with torch.no_grad():
        assert torch.equal(bpda(_quantize)(x), _quantize(x))


def test_bpda_refuses_what_it_cannot_differentiate() -> None:
    with pytest.raises(ConfigurationError, match="preprocess must be an nn.Module or a callable"):
        BPDA(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="approx must be a callable or None"):
        BPDA(_quantize, approx="identity")  # type: ignore[arg-type]
    pooled = BPDA(lambda t: t.sum(dim=1))
    with pytest.raises(InputValidationError, match="keeps the shape"):
        pooled(torch.rand(2, 3, requires_grad=True))
    both = nn.Sequential(mark_randomized(nn.Dropout(0.1)), BPDA(_quantize))
    assert attack_hints(both) == {AttackHint.EOT, AttackHint.BPDA}
    with pytest.raises(ConfigurationError, match="unknown attack hint"):
        attack_hints(_Hinted())


class _Hinted(nn.Module):
    bastion_attack_hint = "jpeg"
