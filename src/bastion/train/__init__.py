"""Training that hardens models: plain, PGD-AT, FGSM-RS and TRADES, one process or DDP.

``fit(model, data, method="pgd", threat=ThreatModel(eps=0.3))`` trains in place and returns a
:class:`TrainResult`; see :mod:`bastion.train.loop` for checkpoints and resume,
:mod:`bastion.train.methods` for the methods and their papers, :mod:`bastion.train.overfit` for
the catastrophic-overfitting guard and :mod:`bastion.train.distributed` for ``torchrun``.
"""

from bastion.train.checkpoint import load_checkpoint
from bastion.train.config import GuardFallback, LRSchedule, OptimizerKind, TrainConfig, TrainMethod
from bastion.train.loop import fit
from bastion.train.results import EpochMetrics, TrainResult

__all__ = [
    "EpochMetrics",
    "GuardFallback",
    "LRSchedule",
    "OptimizerKind",
    "TrainConfig",
    "TrainMethod",
    "TrainResult",
    "fit",
    "load_checkpoint",
]
