"""Auto-PGD (Croce & Hein 2020, https://arxiv.org/abs/2003.01690): PGD with momentum and a
step size that adapts itself, with cross-entropy or DLR loss, and targeted APGD-DLR over the
most likely classes (the APGD-T of AutoAttack).

One iteration, with step size eta, momentum alpha = 0.75 and P the projection onto the ball:

    z_{k+1} = P( x_k + eta_k * d(grad f(x_k)) )
    x_{k+1} = P( x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1}) )

(d = sign for Linf, g/||g||_2 for L2; the first step has no momentum). eta_0 = 2 eps. At the
checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
the step is halved, and the iterate restarted from the best point so far, for each sample where

1. the loss increased in fewer than rho = 0.75 of the steps since the last checkpoint, or
2. the step size and the best loss both stayed the same since the last checkpoint (the step
   was not halved there and no higher loss was found).

Every sample keeps its highest-loss point and its first adversarial point; it leaves the batch
as soon as it is broken (per-sample early stop).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from bastion.attacks._base import Attack, AttackContext, LossFn
from bastion.attacks._loss import Loss, loss_function
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel

__all__ = ["APGD", "APGDT", "checkpoint_fractions", "checkpoints"]


def checkpoint_fractions() -> list[float]:
    """The fractions p_j of the iteration budget where APGD may halve its step (p_j <= 1).

    Example:
        >>> [round(p, 2) for p in checkpoint_fractions()]
        [0.0, 0.22, 0.41, 0.57, 0.7, 0.8, 0.87, 0.93, 0.99]
    """
    fractions = [0.0, 0.22]
    while True:
        nxt = fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06)
        if nxt > 1.0:
            return fractions
        fractions.append(nxt)


def checkpoints(steps: int) -> list[int]:
    """The iterations ceil(p_j * steps) (j >= 1) at which the step-size conditions are checked.

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    marks = {math.ceil(round(p * steps, 9)) for p in checkpoint_fractions()[1:]}
    return sorted(w for w in marks if 0 < w < steps)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """Auto-PGD, untargeted or targeted, and targeted APGD over the top-k classes.

    Three modes:

    * untargeted (default): ``y`` holds the true labels; success = misclassified.
    * ``targeted=True``: ``y`` holds the *target* classes; success = predicting them.
    * ``targeted_classes=k`` (APGD-T, see :func:`APGDT`): ``y`` holds the *true* labels. For
      each of the k most likely wrong classes of the clean prediction in turn, a targeted run
      pushes the still-unbroken samples towards that class; a sample counts as broken as soon as
      it is misclassified as *anything* (the untargeted criterion). ``targeted`` must stay False.

    Attributes:
        steps: iterations (gradient evaluations) per run; a last forward checks the final iterate.
        restarts: random restarts per run (per target class for APGD-T), each on the samples
            still unbroken.
        loss: ``ce`` (default) or ``dlr`` (Croce & Hein's scale-invariant difference of logits
            ratio; needs 3 classes, or 4 when targeted); ``margin`` works too.
        targeted_classes: 0 for plain APGD; k > 0 for APGD-T over the top-k wrong classes
            (capped at classes - 1).
        skip_targets: APGD-T starts at the (skip_targets + 1)-th most likely wrong class, so
            a second APGD-T can take the targets a first one did not (the default ensemble
            splits AutoAttack's 9 targets into 3 for every survivor and 6 on a probe).
        rho: the fraction of loss-increasing steps below which the step is halved.
        alpha: the momentum weight of the new point (1 = no momentum).
        random_start: start each run at a uniform random point of the ball.
        label: the name reports use.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
        >>> attack = APGD(threat=ThreatModel(norm="l2", eps=0.5), loss="dlr", steps=10)
        >>> x_adv = attack(model, x, y)
        >>> bool(((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
        True
    """

    steps: int = 100
    restarts: int = 1
    loss: Loss | str = Loss.CE
    targeted_classes: int = 0
    skip_targets: int = 0
    rho: float = 0.75
    alpha: float = 0.75
    random_start: bool = True
    label: str = "apgd"

    name: ClassVar[str] = "apgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "loss", Loss.parse(self.loss))
        for field in ("steps", "restarts"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{field} must be a positive integer, got {value!r}")
        k = self.targeted_classes
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ConfigurationError(f"targeted_classes must be an integer >= 0, got {k!r}")
        skip = self.skip_targets
        if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
            raise ConfigurationError(f"skip_targets must be an integer >= 0, got {skip!r}")
        if skip and not k:
            raise ConfigurationError(
                "skip_targets applies to APGD-T (targeted_classes > 0): it skips the most "
                "likely targets, e.g. those an earlier APGD-T already tried"
            )
        if k and self.targeted:
            raise ConfigurationError(
                "targeted_classes > 0 (APGD-T) takes the TRUE labels and picks its own targets; "
                "it cannot be combined with targeted=True (where y holds the targets)"
            )
        if not (isinstance(self.rho, (int, float)) and 0 < self.rho <= 1):
            raise ConfigurationError(f"rho must be in (0, 1], got {self.rho!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha <= 1):
            raise ConfigurationError(f"alpha must be in (0, 1], got {self.alpha!r}")

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        loss = Loss.parse(self.loss)
        result = x.clone()
        found = ctx.is_adversarial(clean_logits, y, self.targeted)
        if not self.targeted_classes:
            loss_fn = loss_function(loss, self.targeted, ctx.num_classes)
            for _ in range(self.restarts):
                self._attack_unbroken(ctx, x, y, y, loss_fn, found, result)
            return result
        # APGD-T: targets ranked on the clean logits with the true class masked out
        loss_fn = loss_function(loss, True, ctx.num_classes)
        ranked = clean_logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        last = min(self.skip_targets + self.targeted_classes, ctx.num_classes - 1)
        for rank in range(self.skip_targets, last):
            for _ in range(self.restarts):
                self._attack_unbroken(ctx, x, y, ranked[:, rank], loss_fn, found, result)
        return result

    def _attack_unbroken(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        y_loss: torch.Tensor,
        loss_fn: LossFn,
        found: torch.Tensor,
        result: torch.Tensor,
    ) -> None:
        """One APGD run on the samples not yet in ``found``; updates ``found`` and ``result``.

        ``y`` decides success (targets if ``self.targeted``, else true labels); ``y_loss`` is the
        label the loss uses (the same, or APGD-T's target)."""
        idx = (~found).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        threat, targeted = self.threat, self.targeted
        x0, ys, yl = x[idx], y[idx], y_loss[idx]
        x_cur = threat.random_start(x0, ctx.generator) if self.random_start else x0.clone()
        x_prev = x_cur
        n = idx.numel()
        eta = torch.full((n,), 2.0 * threat.eps, device=x.device)
        x_best, grad_best = x_cur, torch.zeros_like(x0)
        f_best = torch.full((n,), float("-inf"), device=x.device)
        f_prev = f_best
        ups = torch.zeros(n, device=x.device)  # loss increases since the last checkpoint
        halved_last = torch.zeros(n, dtype=torch.bool, device=x.device)
        f_best_mark = f_best.clone()
        marks = set(checkpoints(self.steps))
        last_mark = 0
        for t in range(self.steps):
            logits, grad = ctx.logits_and_grad(x_cur, loss_fn, yl)
            f = loss_fn(logits, yl)
            broken = ctx.is_adversarial(logits, ys, targeted)
            result[idx[broken]] = x_cur[broken]
            found[idx[broken]] = True
            keep = ~broken
            idx, x0, ys, yl = idx[keep], x0[keep], ys[keep], yl[keep]
            if idx.numel() == 0:
                return
            x_cur, x_prev, grad, f = x_cur[keep], x_prev[keep], grad[keep], f[keep]
            x_best, grad_best, f_best = x_best[keep], grad_best[keep], f_best[keep]
            f_prev, ups, eta = f_prev[keep], ups[keep], eta[keep]
            halved_last, f_best_mark = halved_last[keep], f_best_mark[keep]

            ups = ups + (f > f_prev).float() * (t > 0)
            f_prev = f
            better = f > f_best
            f_best = torch.where(better, f, f_best)
            x_best = torch.where(_expand(better, x_cur), x_cur, x_best)
            grad_best = torch.where(_expand(better, grad), grad, grad_best)

            if t in marks:
                oscillating = ups < self.rho * (t - last_mark)
                stalled = ~halved_last & (f_best <= f_best_mark)
                halve = oscillating | stalled
                eta = torch.where(halve, eta / 2, eta)
                back = _expand(halve, x_cur)
                # restart from the best point, with its gradient and without momentum
                x_cur = torch.where(back, x_best, x_cur)
                x_prev = torch.where(back, x_best, x_prev)
                grad = torch.where(back, grad_best, grad)
                ups = torch.zeros_like(ups)
                halved_last, f_best_mark = halve, f_best.clone()
                last_mark = t

            z = threat.project(x_cur + _expand(eta, x_cur) * threat.ascent_direction(grad), x0)
            if t == 0:
                x_next = z
            else:
                step = self.alpha * (z - x_cur) + (1 - self.alpha) * (x_cur - x_prev)
                x_next = threat.project(x_cur + step, x0)
            x_prev, x_cur = x_cur, x_next

        # the last iterate has not been evaluated yet: one forward, no gradient
        logits = ctx.logits(x_cur)
        broken = ctx.is_adversarial(logits, ys, targeted)
        result[idx[broken]] = x_cur[broken]
        found[idx[broken]] = True
        better = _expand(loss_fn(logits, yl) > f_best, x_cur)
        result[idx[~broken]] = torch.where(better, x_cur, x_best)[~broken]


def APGDT(  # noqa: N802 - named constructor
    threat: ThreatModel, *, targets: int = 9, loss: Loss | str = Loss.DLR, **kwargs: object
) -> APGD:
    """Targeted APGD over the ``targets`` most likely wrong classes (AutoAttack's APGD-T).

    ``y`` holds the TRUE labels (unlike ``targeted=True``, where it holds targets); a sample is
    broken once misclassified. With the DLR loss the model needs at least 4 classes.

    Example:
        >>> from bastion import ThreatModel
        >>> APGDT(ThreatModel(norm="linf", eps=0.03), targets=3).targeted_classes
        3
    """
    params: dict[str, object] = {"targeted_classes": targets, "loss": loss, "label": "apgd-t"}
    return APGD(threat=threat, **{**params, **kwargs})  # type: ignore[arg-type]
