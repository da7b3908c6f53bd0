"""The monitor batch and the catastrophic-overfitting guard.

Wong, Rice & Kolter (2020, https://arxiv.org/abs/2001.03994, Sec. 5) observed that FGSM
training can *catastrophically overfit*: within one epoch, accuracy under PGD collapses to about
0 while accuracy under FGSM rises -- the model learns to defeat the single step, not the threat.
Their guard evaluates PGD on a small batch after each epoch and stops when robust accuracy drops
by more than 20 points (``robust_acc - prev_robust_acc < -0.2`` in locuslab/fast_adversarial).

bastion's rule: after every epoch, measure accuracy under a 10-step PGD (random start, step
2.5 eps / 10, full eps) on a fixed batch of ``guard_samples`` samples (from the validation data
when given, else from the training data); a **collapse** is a robust accuracy more than
:data:`COLLAPSE_DROP` (20 points absolute) below the best robust accuracy so far. Comparing with
the best rather than the previous epoch also catches a collapse spread over two epochs. On a
collapse the guard logs a warning, restores the weights of the best epoch, and then stops,
switches to PGD-AT for the remaining epochs, or continues, per ``guard_fallback``.

A single-step run can also fail without a collapse: at a large eps from the first step (FGSM-RS
at eps 0.3 on a small MNIST CNN, measured: PGD-10 accuracy 8-17% for all 10 epochs while clean
accuracy rose to 97%) it never learns robustness at all, so there is nothing to collapse from.
The guard calls a run **stalled** when, with :data:`STALL_EPOCHS` or more epochs trained at the
full eps, its best robust accuracy at those epochs is still within :data:`STALL_MARGIN` (10
points) of chance *and* the last :data:`STALL_WINDOW` of them did not beat the earlier ones by 2
points (a slow learner that is still climbing is left alone); it logs why and what to change (an
eps warm-up over about a third of the epochs, or PGD-AT) and applies the same fallback (without
restoring: no epoch was better).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from bastion.core.threat import ThreatModel
from bastion.train.distributed import DistContext
from bastion.train.methods import monitor_accuracy
from bastion.train.results import EpochMetrics

__all__ = [
    "COLLAPSE_DROP", "GUARD_PGD_STEPS", "STALL_EPOCHS", "STALL_MARGIN", "STALL_WINDOW", "Monitor",
    "STALL_PREFIX", "collapsed", "stall_message", "stalled",
]

COLLAPSE_DROP = 0.20
GUARD_PGD_STEPS = 10
STALL_EPOCHS = 4
STALL_WINDOW = 3
STALL_MARGIN = 0.10
_STALL_GAIN = 0.02
STALL_PREFIX = "no robustness learned"
_MONITOR_STREAM = 0x6D6F6E  # separates the monitor batch's randomness from training's


def collapsed(robust: float, best: float) -> bool:
    """True when ``robust`` accuracy lies more than 20 points below the ``best`` so far.

    Example:
        >>> collapsed(0.05, 0.62), collapsed(0.50, 0.62)
        (True, False)
    """
    return best - robust > COLLAPSE_DROP


def stalled(full_eps_robust: list[float], chance: float) -> bool:
    """True when the robust accuracies of the epochs at full eps never beat chance by
    :data:`STALL_MARGIN` and have stopped climbing (see the module docstring).

    Example:
        >>> flat = [0.08, 0.12, 0.17, 0.16, 0.13, 0.17]  # FGSM-RS at eps 0.3 from the start
        >>> stalled(flat[:5], 0.1), stalled(flat, 0.1)
        (False, True)
        >>> stalled([0.05, 0.08, 0.12, 0.15, 0.19], 0.1)  # still climbing
        False
    """
    if len(full_eps_robust) < STALL_EPOCHS or max(full_eps_robust) >= chance + STALL_MARGIN:
        return False
    earlier, recent = full_eps_robust[:-STALL_WINDOW], full_eps_robust[-STALL_WINDOW:]
    return max(recent) < max(earlier) + _STALL_GAIN


def stall_message(history: Sequence[EpochMetrics], eps: float, labels: torch.Tensor) -> str | None:
    """The guard's message when the FGSM-RS epochs of ``history`` at the full ``eps`` have
    :func:`stalled`, else None; ``labels`` (the monitor batch's) give the chance level."""
    full = [m.robust_accuracy for m in history if m.method == "fgsm-rs"
            and m.robust_accuracy is not None and m.eps >= eps * (1 - 1e-9)]
    chance = 1 / (int(labels.max()) + 1 if labels.dim() == 1 else labels.shape[1])
    if not history or not stalled(full, chance):
        return None
    last = history[-1]
    return (f"{STALL_PREFIX} by epoch {last.epoch}: PGD accuracy at most {max(full):.1%} over "
            f"{len(full)} epochs at the full eps {eps:g} (chance {chance:.1%}) while clean "
            f"accuracy reached {last.clean_accuracy:.1%}; the single step is defeated from the "
            "start (use eps_warmup of about a third of the epochs, a smaller eps, or method pgd)")


@dataclasses.dataclass
class Monitor:
    """A fixed batch measured after every epoch: clean and PGD accuracy (sharded under DDP).

    Attributes:
        x: the batch (CPU).
        y: its labels (class indices or probability rows).
        start: the PGD random start for it (fixed, so epochs are compared on equal terms).
        threat: the threat model, or None (clean accuracy only).
    """

    x: torch.Tensor
    y: torch.Tensor
    start: torch.Tensor | None
    threat: ThreatModel | None

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, size: int, threat: ThreatModel | None,
              seed: int) -> Monitor:
        """``size`` samples of ``(x, y)`` chosen by a generator seeded from ``seed``."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + _MONITOR_STREAM)
        index = torch.randperm(x.shape[0], generator=generator)[: min(size, x.shape[0])]
        x, y = x[index], y[index]
        start = None
        if threat is not None and threat.eps > 0:
            start = threat.random_start(x, generator)
        return cls(x=x, y=y, start=start, threat=threat)

    def measure(self, model: nn.Module, ctx: DistContext) -> tuple[float, float | None]:
        """(clean accuracy, PGD accuracy or None) of ``model`` on the batch, summed over ranks."""
        lo, hi = ctx.shard(self.x.shape[0])
        x = self.x[lo:hi].to(ctx.device)
        y = self.y[lo:hi].to(ctx.device)
        start = None if self.start is None else self.start[lo:hi].to(ctx.device)
        clean, robust = monitor_accuracy(model, x, y, start, self.threat, steps=GUARD_PGD_STEPS)
        total = float(self.x.shape[0])
        clean_sum, robust_sum = ctx.sum([float(clean), float(robust or 0)])
        return clean_sum / total, (None if robust is None else robust_sum / total)
