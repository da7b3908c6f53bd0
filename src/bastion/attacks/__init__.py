"""Evasion attacks: frozen dataclasses of hyperparameters, called as ``attack(model, x, y)``.

Every attack returns adversarial examples inside its :class:`~bastion.ThreatModel` and the input
bounds, computes gradients with respect to the input only, and leaves the model's mode and
parameters as it found them (see :mod:`bastion.attacks._base`).
"""

from bastion.attacks._base import Attack, AttackStats
from bastion.attacks._loss import Loss
from bastion.attacks.apgd import APGD, APGDT
from bastion.attacks.bpda import BPDA, bpda
from bastion.attacks.cw import CarliniWagner
from bastion.attacks.deepfool import DeepFool
from bastion.attacks.eot import EOT, AttackHint, attack_hints, mark_randomized
from bastion.attacks.pgd import FGSM, MIFGSM, PGD, Schedule
from bastion.attacks.square import Square

__all__ = [
    "APGD",
    "APGDT",
    "BPDA",
    "EOT",
    "FGSM",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackHint",
    "AttackStats",
    "CarliniWagner",
    "DeepFool",
    "Loss",
    "Schedule",
    "Square",
    "attack_hints",
    "bpda",
    "mark_randomized",
]
