"""Square Attack (Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049): a score-based
black-box attack that needs only the logits, never a gradient.

Random search over the vertices of the ball: each iteration proposes a change of the current
perturbation inside a random square window of side s, queries the model once per sample, and
keeps the proposal if it raised the loss (untargeted margin ``max_{j != y} z_j - z_y`` by default).
The window covers a fraction p of the image, s = round(sqrt(p H W)), and p follows the paper's
schedule: ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
10,000-query budget (rescaled to ``queries``).

* Linf: the window is set to ``±eps`` per channel (start: vertical stripes of ``±eps``).
* L2: the mass of the perturbation on two windows W1, W2 is moved onto W1 with a new pattern
  (two rectangles of opposite sign with mass concentrated at their centres), W2 is zeroed, and
  the unused budget ``eps² - ||nu||²`` is added, so that ``||nu||_2 = eps`` exactly before the
  clip to the input bounds (Algorithm 3 of the paper).

One query is one forward of one still-unbroken sample: with the clean forward of the base, a
sample costs at most ``queries + 1`` forwards, counted in ``AttackStats.forward``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from bastion.attacks._base import Attack, AttackContext
from bastion.attacks._loss import Loss, loss_function
from bastion.core.errors import ConfigurationError
from bastion.core.threat import Norm

__all__ = ["Square", "square_fraction"]

_TINY = 1e-12
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10,000-query budget


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The fraction p of the image that the window covers at ``iteration`` of ``queries``.

    Example:
        >>> [square_fraction(0.8, i, 10_000) for i in (10, 11, 9_000)]
        [0.8, 0.4, 0.0015625]
    """
    scaled = int(iteration / queries * 10_000)
    halvings = sum(scaled > mark for mark in _HALVINGS)
    return float(p_init) / float(2**halvings)


def _side(p: float, height: int, width: int) -> int:
    side = round(math.sqrt(p * height * width))
    return min(max(side, 1), max(min(height, width) - 1, 1))


def _bump(rows: int, cols: int) -> torch.Tensor:
    """The centred pattern of the paper: concentric rings whose weight grows towards the centre,
    ``sum_{k=0}^{M(r,s)} 1/(n+1-k)^2`` with M = n - (ring distance from the centre)."""
    n = max(rows, cols) // 2
    r = (2 * torch.arange(rows) - (rows - 1)).abs() // 2  # ring distance, symmetric
    c = (2 * torch.arange(cols) - (cols - 1)).abs() // 2
    depth = n - torch.maximum(r[:, None], c[None, :])  # >= 0
    terms = 1.0 / (n + 1 - torch.arange(n + 1, dtype=torch.float32)) ** 2
    return torch.cumsum(terms, 0)[depth]


def _window_pattern(side: int) -> torch.Tensor:
    """Two rectangles of opposite sign filling a side x side window, unit L2 norm."""
    half = side // 2
    pattern = torch.cat([_bump(side, half), -_bump(side, side - half)], dim=1)
    unit: torch.Tensor = pattern / pattern.norm()
    return unit


def _window(
    n: int, side: int, height: int, width: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random top-left corners (row, col) and the (n, 1, H, W) mask of each sample's window."""
    top = torch.randint(0, height - side + 1, (n,), generator=gen, device=device)
    left = torch.randint(0, width - side + 1, (n,), generator=gen, device=device)
    rows = torch.arange(height, device=device)[None, :] - top[:, None]
    cols = torch.arange(width, device=device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return rows, cols, inside[:, None].float()


def _sign(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=device).float() * 2 - 1


def _l2_update(nu: torch.Tensor, eps: float, side: int, gen: torch.Generator) -> torch.Tensor:
    """Algorithm 3 of the paper: a new perturbation with ``||nu_new||_2 = eps`` (before clipping)
    that differs from ``nu`` on two random windows only."""
    n, channels, height, width = nu.shape
    device = nu.device
    rows, cols, w1 = _window(n, side, height, width, gen, device)
    _, _, w2 = _window(n, side, height, width, gen, device)
    base = _window_pattern(side).to(device)
    patterns = torch.stack([base, base.t()])  # transposed with probability 1/2
    flip = torch.randint(0, 2, (n,), generator=gen, device=device)
    placed = (
        patterns[
            flip[:, None, None],
            rows.clamp(0, side - 1)[:, :, None],
            cols.clamp(0, side - 1)[:, None, :],
        ][:, None]
        * w1
    )
    union = torch.maximum(w1, w2)
    unused = (eps**2 - nu.pow(2).sum(dim=(1, 2, 3))).clamp_min(0)
    in_w1 = nu * w1
    norm_w1 = in_w1.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    rho = _sign((n, channels, 1, 1), gen, device)
    temp = rho * placed + in_w1 / (norm_w1 + _TINY)
    norm_temp = temp.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    # the two terms can cancel (always possible for a 1x1 window): then use the pattern alone
    cancelled = norm_temp < 1e-6
    temp = torch.where(cancelled, rho * placed, temp)
    norm_temp = torch.where(cancelled, torch.ones_like(norm_temp), norm_temp)
    mass = (nu * union).pow(2).sum(dim=(2, 3), keepdim=True)
    available = (mass + unused.view(-1, 1, 1, 1) / channels).sqrt()
    return nu * (1 - union) + temp / (norm_temp + _TINY) * available


def _l2_start(x0: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """A grid of bumps of random sign (per tile and channel), scaled to L2 norm eps."""
    n, channels, height, width = x0.shape
    tile = max(1, math.ceil(min(height, width) / 5))
    tiles_h, tiles_w = math.ceil(height / tile), math.ceil(width / tile)
    signs = _sign((n, channels, tiles_h, tiles_w), gen, x0.device)
    grid = signs.repeat_interleave(tile, dim=2).repeat_interleave(tile, dim=3)
    bump = _bump(tile, tile).to(x0.device).repeat(tiles_h, tiles_w)
    delta = (grid * bump)[:, :, :height, :width]
    norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    scaled: torch.Tensor = delta * (eps / (norms + _TINY))
    return scaled


@dataclasses.dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """The Square Attack: random square-shaped updates accepted when they raise the loss.

    Inputs must be images ``(B, C, H, W)``; other shapes raise :class:`ConfigurationError`
    (the square windows need two spatial dimensions).

    Attributes:
        queries: the query budget per sample (the paper's and AutoAttack's 5,000), counting the
            query of the starting point.
        p_init: the initial fraction of pixels changed; default 0.8 for Linf and 0.1 for L2.
        loss: ``margin`` (default, untargeted or targeted CW margin) or ``ce``.
        label: the name reports use.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
        >>> attack = Square(threat=ThreatModel(norm="linf", eps=0.1), queries=50)
        >>> x_adv, stats = attack.run_with_stats(model, x, y)
        >>> stats.backward, stats.forward <= 4 * (50 + 1)
        (0, True)
    """

    queries: int = 5000
    p_init: float | None = None
    loss: Loss | str = Loss.MARGIN
    label: str = "square"

    name: ClassVar[str] = "square"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "loss", Loss.parse(self.loss))
        q = self.queries
        if not isinstance(q, int) or isinstance(q, bool) or q < 1:
            raise ConfigurationError(f"queries must be a positive integer, got {q!r}")
        if self.p_init is not None and not (
            isinstance(self.p_init, (int, float)) and 0 < self.p_init <= 1
        ):
            raise ConfigurationError(f"p_init must be in (0, 1], got {self.p_init!r}")

    @property
    def initial_fraction(self) -> float:
        """``p_init``, or the paper's default for the norm (0.8 Linf, 0.1 L2)."""
        if self.p_init is not None:
            return float(self.p_init)
        return 0.8 if self.threat.norm is Norm.LINF else 0.1

    def _propose(
        self, x0: torch.Tensor, x_best: torch.Tensor, p: float, gen: torch.Generator
    ) -> torch.Tensor:
        n, channels, height, width = x0.shape
        side = _side(p, height, width)
        lo, hi = self.threat.bounds
        eps = self.threat.eps
        if self.threat.norm is Norm.L2:
            return (x0 + _l2_update(x_best - x0, eps, side, gen)).clamp(lo, hi)
        _, _, inside = _window(n, side, height, width, gen, x0.device)
        signs = eps * _sign((n, channels, 1, 1), gen, x0.device)
        window = inside.bool()
        x_new = torch.where(window, (x0 + signs).clamp(lo, hi), x_best)
        # a proposal equal to the current point wastes a query: flip its signs instead
        same = (x_new == x_best).flatten(1).all(dim=1).view(-1, 1, 1, 1)
        return torch.where(window & same, (x0 - signs).clamp(lo, hi), x_new)

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigurationError(
                f"Square needs image inputs of shape (B, C, H, W); got {tuple(x.shape)} "
                "(reshape flat features to (B, 1, 1, D) to attack them pixel by pixel)"
            )
        loss_fn = loss_function(Loss.parse(self.loss), self.targeted, ctx.num_classes)
        gen, lo, hi = ctx.generator, *self.threat.bounds
        result = x.clone()
        idx = (~ctx.is_adversarial(clean_logits, y, self.targeted)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return result
        x0, ys = x[idx], y[idx]
        if self.threat.norm is Norm.LINF:
            stripes = _sign((x0.shape[0], x0.shape[1], 1, x0.shape[3]), gen, x.device)
            x_best = (x0 + self.threat.eps * stripes).clamp(lo, hi)
        else:
            x_best = (x0 + _l2_start(x0, self.threat.eps, gen)).clamp(lo, hi)
        x_new = x_best
        f_best = torch.full((x0.shape[0],), float("-inf"), device=x.device)
        for i in range(self.queries):
            if i:
                p = square_fraction(self.initial_fraction, i, self.queries)
                x_new = self._propose(x0, x_best, p, gen)
            logits = ctx.logits(x_new)
            f = loss_fn(logits, ys)
            better = f > f_best
            f_best = torch.where(better, f, f_best)
            x_best = torch.where(better.view(-1, 1, 1, 1), x_new, x_best)
            broken = ctx.is_adversarial(logits, ys, self.targeted)
            if not bool(broken.any()):  # most iterations: nothing to drop, nothing to copy
                continue
            result[idx[broken]] = x_new[broken]
            keep = ~broken
            idx, x0, ys, x_best, f_best = idx[keep], x0[keep], ys[keep], x_best[keep], f_best[keep]
            if idx.numel() == 0:
                return result
        result[idx] = x_best
        return result
