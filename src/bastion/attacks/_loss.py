"""Per-sample losses that attacks maximise.

* ``CE``: cross-entropy of the true class (untargeted) or minus that of the target (targeted).
* ``MARGIN``: the Carlini-Wagner margin, best other logit minus the true one (or target minus
  best other), unbounded and immune to softmax saturation.
* ``DLR``: the difference-of-logits ratio of Croce & Hein 2020, the margin divided by the spread
  of the top logits, so it is invariant to shifting and scaling the logits (defeats defensive
  distillation's saturated softmax). Needs at least 3 classes (targeted: 4).
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError

__all__ = ["Loss", "loss_function"]


class Loss(enum.Enum):
    CE = "ce"
    MARGIN = "margin"
    DLR = "dlr"

    @classmethod
    def parse(cls, value: Loss | str) -> Loss:
        return parse_enum(cls, value, "loss")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    masked = logits.scatter(1, y[:, None], float("-inf"))
    return masked.amax(dim=1)


def _true(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, y[:, None]).squeeze(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def neg_ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _other_max(logits, y) - _true(logits, y)


def targeted_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _true(logits, y) - _other_max(logits, y)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    top = logits.sort(dim=1, descending=True).values
    return (_other_max(logits, y) - _true(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Targeted DLR; here ``y`` is the target and the true class is taken as the current top
    non-target class, following the AutoAttack formulation -(z_top - z_t) / spread."""
    top = logits.sort(dim=1, descending=True).values
    spread = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return (_true(logits, y) - _other_max(logits, y)) / spread


def loss_function(loss: Loss, targeted: bool, num_classes: int):  # type: ignore[no-untyped-def]
    """The per-sample function to maximise for ``loss`` (checked against the class count)."""
    if loss is Loss.DLR and num_classes < (4 if targeted else 3):
        raise ConfigurationError(
            f"the DLR loss needs at least {4 if targeted else 3} classes; the model has "
            f"{num_classes} (use loss='ce' or 'margin')"
        )
    table = {
        (Loss.CE, False): ce_loss,
        (Loss.CE, True): neg_ce_loss,
        (Loss.MARGIN, False): margin_loss,
        (Loss.MARGIN, True): targeted_margin_loss,
        (Loss.DLR, False): dlr_loss,
        (Loss.DLR, True): targeted_dlr_loss,
    }
    return table[(loss, targeted)]
