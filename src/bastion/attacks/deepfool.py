"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, https://arxiv.org/abs/1511.04599): the
minimal perturbation that crosses the nearest decision boundary of the model's linearisation.

At the iterate x_i, with k0 the true class and, for each candidate class k,

    w_k = ∇f_k(x_i) - ∇f_k0(x_i),        f'_k = f_k(x_i) - f_k0(x_i),

the nearest linearised boundary is l = argmin_k |f'_k| / ||w_k||_q (q the dual norm: 2 for L2,
1 for Linf) and the step that reaches it is

    L2:   r_i = (|f'_l| + 1e-4) / ||w_l||_2^2 · w_l
    Linf: r_i = (|f'_l| + 1e-4) / ||w_l||_1 · sign(w_l).

The iterate is x_{i+1} = clip(x_0 + (1 + overshoot) · Σ r_j); a sample stops as soon as it is
misclassified. The attack returns the perturbation it found: the base class then projects it
onto the eps-ball, so with a large eps the raw minimal perturbation comes back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from bastion.attacks._base import Attack, AttackContext
from bastion.core.errors import ConfigurationError
from bastion.core.threat import Norm

__all__ = ["DeepFool"]

_TINY = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeepFool(Attack):
    """Untargeted minimal-perturbation attack for L2 and Linf threat models.

    Attributes:
        steps: the most linearisation steps per sample.
        candidates: how many classes, the true one included, are considered: the top
            ``candidates`` of the clean logits (all classes when the model has fewer).
        overshoot: the relative step beyond the boundary (the paper's eta), so the iterate
            crosses it instead of landing on it.

    Each step costs ``candidates - 1`` forward and backward passes per active sample (one per
    candidate class, batched together).

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
        >>> attack = DeepFool(threat=ThreatModel(norm="l2", eps=10.0, bounds=(-5.0, 5.0)))
        >>> x_adv = attack(model, x, y)
        >>> bool((model(x_adv).argmax(1) != y).all())
        True
    """

    steps: int = 50
    candidates: int = 10
    overshoot: float = 0.02

    name: ClassVar[str] = "deepfool"
    supports_targeted: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigurationError(f"steps must be a positive integer, got {self.steps!r}")
        if (
            not isinstance(self.candidates, int)
            or isinstance(self.candidates, bool)
            or self.candidates < 2
        ):
            raise ConfigurationError(
                f"candidates must be an integer >= 2 (the true class and at least one other), "
                f"got {self.candidates!r}"
            )
        if not (
            isinstance(self.overshoot, int | float)
            and math.isfinite(self.overshoot)
            and self.overshoot >= 0
        ):
            raise ConfigurationError(f"overshoot must be a number >= 0, got {self.overshoot!r}")

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        result = x.clone()
        lo, hi = self.threat.bounds
        k = min(self.candidates, ctx.num_classes)
        # samples already misclassified need nothing; for the others the true class is the top
        # clean logit, so the other candidates are the next k - 1
        idx = (~ctx.is_adversarial(clean_logits, y, targeted=False)).nonzero().squeeze(1)
        others = clean_logits[idx].topk(k, dim=1).indices[:, 1:]
        x0, y0 = x[idx], y[idx]
        x_adv, total = x0.clone(), torch.zeros_like(x0)
        for _ in range(self.steps):
            if idx.numel() == 0:
                break
            logits, diffs, grads = _boundary_gradients(ctx, x_adv, y0, others)
            broken = ctx.is_adversarial(logits, y0, targeted=False)
            result[idx[broken]] = x_adv[broken]
            keep = ~broken
            idx, x0, y0, others = idx[keep], x0[keep], y0[keep], others[keep]
            x_adv, total, diffs, grads = x_adv[keep], total[keep], diffs[keep], grads[keep]
            if idx.numel() == 0:
                break
            total = total + self._step(diffs, grads)
            x_adv = (x0 + (1 + self.overshoot) * total).clamp(lo, hi)
        if idx.numel():
            result[idx] = x_adv  # not seen broken: the last iterate, projected by the base
        return result

    def _step(self, diffs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The step to the nearest linearised boundary; diffs (B, K-1), grads (B, K-1, *x)."""
        flat = grads.flatten(2)
        dual = 1 if self.threat.norm is Norm.LINF else 2
        w_norm = torch.linalg.vector_norm(flat, ord=dual, dim=2)
        distance = diffs.abs() / (w_norm + _TINY)
        nearest = distance.argmin(dim=1)
        rows = torch.arange(diffs.shape[0], device=diffs.device)
        gap: torch.Tensor = diffs[rows, nearest].abs() + 1e-4
        w_l: torch.Tensor = grads[rows, nearest]
        n_l: torch.Tensor = w_norm[rows, nearest]
        shape = (-1, *[1] * (w_l.dim() - 1))
        if self.threat.norm is Norm.LINF:
            step: torch.Tensor = (gap / (n_l + _TINY)).view(shape) * w_l.sign()
        else:
            step = (gap / (n_l.square() + _TINY)).view(shape) * w_l
        return step


def _boundary_gradients(
    ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, others: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at x, f_k - f_y and ∇(f_k - f_y) for every candidate k, in one batched pass:
    x is repeated once per candidate so each copy's summed loss has its own input gradient."""
    batch, m = x.shape[0], others.shape[1]
    x_rep = x.repeat(m, *[1] * (x.dim() - 1))  # candidate-major: copy j of sample i at j*B + i
    y_rep = y.repeat(m)
    k_rep = others.t().reshape(-1)

    def difference(logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        picked = logits.gather(1, torch.stack([k_rep, true], dim=1))
        return picked[:, 0] - picked[:, 1]

    logits, grad = ctx.logits_and_grad(x_rep, difference, y_rep)
    diffs = difference(logits, y_rep).view(m, batch).t()
    grads = grad.view(m, batch, *x.shape[1:]).transpose(0, 1)
    return logits[:batch], diffs, grads
