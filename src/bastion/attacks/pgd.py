"""Projected gradient descent (Madry et al. 2018, https://arxiv.org/abs/1706.06083), and the
attacks that are special cases of it: FGSM (Goodfellow et al. 2015) and MI-FGSM (Dong et al.
2018, https://arxiv.org/abs/1710.06081).

    x_{t+1} = Proj_{B(x, eps) ∩ bounds}( x_t + alpha_t * d(g_t) )

with d = sign for Linf and g/||g||_2 for L2, g_t the input gradient of the loss (MI-FGSM: the
momentum g_t = mu * g_{t-1} + grad / ||grad||_1). Per-sample early stop: a sample leaves the
batch as soon as it is misclassified (targeted: classified as its target), so broken samples
cost nothing more; the first adversarial point found is kept.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import ClassVar

import torch

from bastion.attacks._base import Attack, AttackContext
from bastion.attacks._loss import Loss, loss_function
from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel

__all__ = ["FGSM", "MIFGSM", "PGD", "Schedule"]


class Schedule(enum.Enum):
    """Step-size schedule over the iterations of one restart."""

    CONSTANT = "constant"
    COSINE = "cosine"  # alpha * (1 + cos(pi t / T)) / 2, ending near 0
    STEP = "step"  # alpha, halved at 50% and again at 75% of the steps

    @classmethod
    def parse(cls, value: Schedule | str) -> Schedule:
        return parse_enum(cls, value, "schedule")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent with random start, restarts and a step-size schedule.

    Attributes:
        steps: iterations per restart.
        step_size: alpha; default ``2.5 * eps / steps`` (Madry et al.'s rule of thumb).
        random_start: start each restart at a uniform random point of the ball.
        restarts: independent runs; each attacks only the samples still unbroken.
        loss: ``ce`` (default), ``margin`` (CW) or ``dlr``.
        schedule: ``constant``, ``cosine`` or ``step``.
        momentum: MI-FGSM decay factor mu (0 = plain PGD).
        early_stop: stop attacking a sample once it is broken.
        label: the name reports use (FGSM and MI-FGSM set it).

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
        >>> x_adv = PGD(threat=ThreatModel(norm="linf", eps=0.1), steps=5)(model, x, y)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """

    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: Loss | str = Loss.CE
    schedule: Schedule | str = Schedule.CONSTANT
    momentum: float = 0.0
    early_stop: bool = True
    label: str = "pgd"

    name: ClassVar[str] = "pgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "loss", Loss.parse(self.loss))
        object.__setattr__(self, "schedule", Schedule.parse(self.schedule))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigurationError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise ConfigurationError(f"restarts must be a positive integer, got {self.restarts!r}")
        if self.step_size is not None and not (
            math.isfinite(self.step_size)
            and (self.step_size > 0 or self.threat.eps / self.steps == 0.0)  # eps ~ 0
        ):
            raise ConfigurationError(f"step_size must be positive, got {self.step_size!r}")
        if not (math.isfinite(self.momentum) and self.momentum >= 0):
            raise ConfigurationError(f"momentum must be >= 0, got {self.momentum!r}")

    def _alpha(self, t: int) -> float:
        base = self.step_size if self.step_size is not None else 2.5 * self.threat.eps / self.steps
        if self.schedule is Schedule.COSINE:
            return base * 0.5 * (1 + math.cos(math.pi * t / self.steps))
        if self.schedule is Schedule.STEP:
            return base * (0.5 ** ((t >= self.steps // 2) + (t >= (3 * self.steps) // 4)))
        return base

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        loss_fn = loss_function(Loss.parse(self.loss), self.targeted, ctx.num_classes)
        threat = self.threat
        result = x.clone()
        found = ctx.is_adversarial(clean_logits, y, self.targeted)
        for restart in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, y0 = x[idx], y[idx]
            x_adv = threat.random_start(x0, ctx.generator) if self.random_start else x0.clone()
            velocity = torch.zeros_like(x0)
            for t in range(self.steps):
                logits, grad = ctx.logits_and_grad(x_adv, loss_fn, y0)
                broken = ctx.is_adversarial(logits, y0, self.targeted)
                result[idx[broken]] = x_adv[broken]
                found[idx[broken]] = True
                if self.early_stop:
                    keep = ~broken
                    idx, x0, y0 = idx[keep], x0[keep], y0[keep]
                    x_adv, grad, velocity = x_adv[keep], grad[keep], velocity[keep]
                    if idx.numel() == 0:
                        break
                if self.momentum:
                    l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12)
                    velocity = self.momentum * velocity + grad / l1.view(
                        -1, *[1] * (grad.dim() - 1)
                    )
                    grad = velocity
                step = self._alpha(t) * threat.ascent_direction(grad)
                x_adv = threat.project(x_adv + step, x0)
            if idx.numel():
                # samples not seen broken keep the last iterate (inside the ball, a valid output);
                # whether that last step broke them matters only to the restarts still to come
                result[idx] = x_adv
                if restart + 1 < self.restarts:
                    found[idx] = ctx.is_adversarial(ctx.logits(x_adv), y0, self.targeted)
        return result


def FGSM(threat: ThreatModel, **kwargs: object) -> PGD:  # noqa: N802 - named constructor
    """Fast gradient sign method: one full step of size eps, no random start.

    (For L2 the step is eps along the normalised gradient: the "fast gradient method".)
    """
    params: dict[str, object] = {
        "steps": 1,
        "step_size": threat.eps,
        "random_start": False,
        "label": "fgsm",
        **kwargs,
    }
    return PGD(threat=threat, **params)  # type: ignore[arg-type]


def MIFGSM(
    threat: ThreatModel,
    *,
    steps: int = 10,
    momentum: float = 1.0,  # noqa: N802
    **kwargs: object,
) -> PGD:
    """Momentum iterative FGSM: ``steps`` steps of eps/steps along the sign of the momentum."""
    params: dict[str, object] = {
        "steps": steps,
        "step_size": threat.eps / steps,
        "random_start": False,
        "momentum": momentum,
        "label": "mi-fgsm",
        **kwargs,
    }
    return PGD(threat=threat, **params)  # type: ignore[arg-type]
