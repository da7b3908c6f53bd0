"""Preprocessing defenses, each with its adaptive-attack story.

Design: a defense is a preprocessing ``nn.Module`` from a batch in known bounds to a batch of the
same shape in the same bounds. Put it in front of any classifier with
``nn.Sequential(defense, model)`` (or :func:`defend`): the defended model is still "bounded
inputs -> logits", so every attack, evaluation, monitor and server in bastion takes it unchanged,
and defenses stack (``defend(model, BitDepth(4), GaussianNoise(0.1))``).

| defense | paper | how an honest evaluation attacks it |
| --- | --- | --- |
| :class:`RandomResizePad` | Xie et al. 2018 | EOT (declares ``AttackHint.EOT``) |
| :class:`GaussianNoise` | Liu et al. 2018 (RSE) | EOT (declares ``AttackHint.EOT``) |
| :class:`BitDepth` | Xu et al. 2018 | BPDA, built in (declares ``AttackHint.BPDA``) |
| :class:`MedianSmoothing` | Xu et al. 2018 | its exact a.e. gradient (no hint) |
| :class:`Denoiser` | Meng & Chen 2017, Liao et al. 2018 | plain white box (no hint) |

:func:`bastion.evaluate.robustness` reads the hints and adapts its attacks (EOT around every
gradient attack, predictions averaged over passes, notes on approximated gradients). None of
these defenses survives its adaptive attack (Athalye, Carlini & Wagner 2018); the
:class:`FeatureSqueezingDetector` flags non-adaptive adversarial examples.

Example:
    >>> import torch
    >>> from bastion.attacks import attack_hints
    >>> from bastion.defenses import BitDepth, GaussianNoise, defend
    >>> model = defend(torch.nn.Flatten(), BitDepth(4), GaussianNoise(0.05))
    >>> sorted(h.value for h in attack_hints(model))
    ['bpda', 'eot']
"""

from bastion.defenses._base import Preprocessing, defend
from bastion.defenses.denoiser import Denoiser, fit_denoiser
from bastion.defenses.detector import FeatureSqueezingDetector
from bastion.defenses.randomization import GaussianNoise, RandomResizePad
from bastion.defenses.squeezing import BitDepth, MedianSmoothing, bit_depth, median_smooth

__all__ = [
    "BitDepth",
    "Denoiser",
    "FeatureSqueezingDetector",
    "GaussianNoise",
    "MedianSmoothing",
    "Preprocessing",
    "RandomResizePad",
    "bit_depth",
    "defend",
    "fit_denoiser",
    "median_smooth",
]
