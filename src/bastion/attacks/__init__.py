"""Evasion attacks: frozen dataclasses of hyperparameters, called as ``attack(model, x, y)``.

Every attack returns adversarial examples inside its :class:`~bastion.ThreatModel` and the input
bounds, computes gradients with respect to the input only, and leaves the model's mode and
parameters as it found them (see :mod:`bastion.attacks._base`).
"""

from bastion.attacks._base import Attack, AttackStats
from bastion.attacks._loss import Loss
from bastion.attacks.apgd import APGD, APGDT
from bastion.attacks.pgd import FGSM, MIFGSM, PGD, Schedule
from bastion.attacks.square import Square

__all__ = [
    "APGD",
    "APGDT",
    "FGSM",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackStats",
    "Loss",
    "Schedule",
    "Square",
]
