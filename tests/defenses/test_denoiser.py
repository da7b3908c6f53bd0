"""The convolutional denoiser: identity before training, removes Gaussian noise after
``fit_denoiser``, stops a perturbation crafted without it (transfer), and falls to white-box PGD
through it (Carlini & Wagner 2017; Athalye et al. 2018)."""

from __future__ import annotations

import functools

import pytest
import torch

from bastion.attacks import PGD, attack_hints
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.threat import ThreatModel
from bastion.defenses import Denoiser, defend, fit_denoiser
from defenses.mnist_cnn import judged_accuracy, mnist, mnist_batch, trained_cnn


@functools.lru_cache(maxsize=1)
def _denoiser() -> Denoiser:
    x_train = mnist()[0]
    return fit_denoiser(Denoiser(1), x_train[:1000], sigma=0.1, epochs=2, seed=0)


def test_untrained_is_identity_and_training_removes_noise() -> None:
    x, _ = mnist_batch(100, offset=500)
    assert torch.equal(Denoiser(1)(x), x)
    denoiser = _denoiser()
    assert not denoiser.training
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    noisy = noisy.clamp(0, 1)
    with torch.no_grad():
        before = float((noisy - x).pow(2).mean())
        after = float((denoiser(noisy) - x).pow(2).mean())
    assert after < 0.5 * before, f"MSE {before:.4f} -> {after:.4f}"
    assert attack_hints(denoiser) == frozenset()  # differentiable: plain white box applies


def test_stops_transferred_perturbations_but_falls_to_white_box_pgd() -> None:
    model = trained_cnn()
    defended = defend(model, _denoiser())
    x, y = mnist_batch(100)
    threat = ThreatModel(eps=0.3)
    clean = judged_accuracy(defended, x, y)
    x_transfer = PGD(threat=threat, steps=20)(model, x, y)
    undefended = judged_accuracy(model, x_transfer, y)
    transfer = judged_accuracy(defended, x_transfer, y)
    white_box = judged_accuracy(defended, PGD(threat=threat, steps=40)(defended, x, y), y)
    print(f"clean {clean:.2f} undefended {undefended:.2f} transfer {transfer:.2f} "
          f"white box {white_box:.2f}")
    assert clean >= 0.85 and undefended <= 0.05
    assert transfer >= 0.5, "the denoiser should remove a perturbation crafted without it"
    assert white_box <= 0.1, "white-box PGD through the denoiser should break it"


def test_bad_denoiser_arguments_say_what_to_fix() -> None:
    with pytest.raises(InputValidationError, match="build it with channels=3"):
        Denoiser(1)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ConfigurationError, match="depth must be an integer >= 2"):
        Denoiser(1, depth=1)
    with pytest.raises(ConfigurationError, match="sigma must be a positive number"):
        fit_denoiser(Denoiser(1), torch.rand(4, 1, 8, 8), sigma=-1.0)
    with pytest.raises(ConfigurationError, match="trains a bastion.defenses.Denoiser"):
        fit_denoiser(torch.nn.Identity(), torch.rand(4, 1, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=r"inside bounds \[0, 1\]"):
        fit_denoiser(Denoiser(1), 255 * torch.rand(4, 1, 8, 8))
