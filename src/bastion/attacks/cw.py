"""Carlini–Wagner L2 (Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644).

The box constraint is removed by a change of variables onto the threat model's bounds [lo, hi],

    x' = lo + (hi - lo) · (tanh(w) + 1) / 2,

and w is optimised with Adam on

    ||x' - x||_2^2 + c · max(Z(x')_y - max_{j≠y} Z(x')_j + kappa, 0)        (untargeted)
    ||x' - x||_2^2 + c · max(max_{j≠t} Z(x')_j - Z(x')_t + kappa, 0)        (targeted, t = y)

with Z the logits. A binary search over c, per sample, finds the smallest constant that still
succeeds: c is halved towards the last failure after a success and multiplied by 10 (or
bisected) after a failure. Over all searches the smallest-norm successful point is kept;
samples never broken come back unchanged. Within one search a sample stops early when its
objective has not improved by 0.01% over a tenth of the steps (the paper's abort-early rule).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import torch

from bastion.attacks._base import Attack, AttackContext
from bastion.core.errors import ConfigurationError
from bastion.core.threat import Norm

__all__ = ["CarliniWagner"]

_UPPER = 1e10  # "no successful constant yet"
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


def _margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """How far the sample is from success (negative once it succeeds with margin 0)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true if targeted else true - other


def _hinge(
    const: torch.Tensor, kappa: float, targeted: bool, logits: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """c · max(margin + kappa, 0), per sample: the model term of the objective."""
    return const * (_margin(logits, y, targeted) + kappa).clamp_min(0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CarliniWagner(Attack):
    """The Carlini–Wagner L2 attack, untargeted or targeted (L2 threat models only).

    Attributes:
        steps: Adam iterations per binary-search step.
        binary_search_steps: how many constants c are tried per sample.
        initial_const: the first c.
        lr: Adam's learning rate on w.
        kappa: the confidence: success requires a logit margin of at least kappa.
        abort_early: stop a sample's search step once its objective stalls.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
        >>> attack = CarliniWagner(threat=ThreatModel(norm="l2", eps=5.0), steps=100)
        >>> x_adv = attack(model, x, y)
        >>> bool(((x_adv - x).flatten(1).norm(dim=1) <= 5.0 + 1e-5).all())
        True
    """

    steps: int = 1000
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    lr: float = 1e-2
    kappa: float = 0.0
    abort_early: bool = True

    name: ClassVar[str] = "cw-l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threat.norm is not Norm.L2:
            raise ConfigurationError(
                f"Carlini-Wagner is an L2 attack: expected an l2 threat model, got "
                f"{self.threat.norm.value} (use PGD or APGD for linf)"
            )
        for field in ("steps", "binary_search_steps"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{field} must be a positive integer, got {value!r}")
        for field in ("initial_const", "lr"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{field} must be a positive number, got {value!r}")
        if not (isinstance(self.kappa, int | float) and math.isfinite(self.kappa)):
            raise ConfigurationError(f"kappa must be a finite number >= 0, got {self.kappa!r}")
        if self.kappa < 0:
            raise ConfigurationError(f"kappa must be a finite number >= 0, got {self.kappa!r}")

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        lo, hi = self.threat.bounds
        batch = x.shape[0]
        best = x.clone()
        best_norm = torch.full((batch,), float("inf"), device=x.device)
        # already successful samples need no perturbation
        done = self._success(clean_logits, y)
        best_norm[done] = 0.0
        const = torch.full((batch,), float(self.initial_const), device=x.device)
        lower = torch.zeros(batch, device=x.device)
        upper = torch.full((batch,), _UPPER, device=x.device)
        unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
        w_start = torch.atanh(unit)
        todo = (~done).nonzero().squeeze(1)
        for _ in range(self.binary_search_steps):
            if todo.numel() == 0:
                break
            succeeded = self._search_step(ctx, x, y, w_start, const, todo, best, best_norm)
            s, f = todo[succeeded], todo[~succeeded]
            upper[s] = torch.minimum(upper[s], const[s])
            const[s] = (lower[s] + upper[s]) / 2
            lower[f] = torch.maximum(lower[f], const[f])
            const[f] = torch.where(upper[f] < _UPPER, (lower[f] + upper[f]) / 2, const[f] * 10)
        return best

    def _success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hit = _margin(logits, y, self.targeted) <= -self.kappa
        pred = logits.argmax(dim=1)
        return hit & (pred == y if self.targeted else pred != y)

    def _search_step(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        w_start: torch.Tensor,
        const: torch.Tensor,
        todo: torch.Tensor,
        best: torch.Tensor,
        best_norm: torch.Tensor,
    ) -> torch.Tensor:
        """One Adam run at fixed constants for the samples ``todo``; updates ``best`` in place
        and returns, per sample of ``todo``, whether any iterate succeeded."""
        lo, hi = self.threat.bounds
        idx = todo
        x0, y0, c0 = x[idx], y[idx], const[idx]
        w = w_start[idx].clone()
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        succeeded = torch.zeros(todo.numel(), dtype=torch.bool, device=x.device)
        position = torch.arange(todo.numel(), device=x.device)  # row of todo for each active one
        previous = torch.full((todo.numel(),), float("inf"), device=x.device)
        check_every = max(self.steps // 10, 1)
        kappa, targeted = float(self.kappa), self.targeted

        for t in range(1, self.steps + 1):
            tanh = torch.tanh(w)
            x_adv = lo + (hi - lo) * (tanh + 1) / 2
            hinge = functools.partial(_hinge, c0, kappa, targeted)
            logits, grad_f = ctx.logits_and_grad(x_adv, hinge, y0)
            delta = x_adv - x0
            sq_norm = delta.flatten(1).square().sum(dim=1)
            objective = sq_norm + hinge(logits, y0)
            hit = self._success(logits, y0)
            norm = sq_norm.sqrt()
            better = hit & (norm < best_norm[idx])
            best_norm[idx[better]] = norm[better]
            best[idx[better]] = x_adv[better]
            succeeded[position[hit]] = True

            grad_x = 2 * delta + grad_f
            grad_w = grad_x * (hi - lo) / 2 * (1 - tanh.square())
            m = _BETA1 * m + (1 - _BETA1) * grad_w
            v = _BETA2 * v + (1 - _BETA2) * grad_w.square()
            m_hat = m / (1 - _BETA1**t)
            v_hat = v / (1 - _BETA2**t)
            w = w - self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)

            if self.abort_early and t % check_every == 0:
                keep = objective <= previous * 0.9999
                previous = objective[keep]
                idx, x0, y0, c0 = idx[keep], x0[keep], y0[keep], c0[keep]
                w, m, v, position = w[keep], m[keep], v[keep], position[keep]
                if idx.numel() == 0:
                    break
        return succeeded
