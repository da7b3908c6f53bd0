"""Training that hardens models: plain, PGD-AT, FGSM-RS and TRADES, one process or DDP.

``fit(model, data, method="pgd", threat=ThreatModel(eps=0.3))`` trains in place and returns a
:class:`TrainResult`; see :mod:`bastion.train.loop` for checkpoints and resume,
:mod:`bastion.train.methods` for the methods and their papers, :mod:`bastion.train.overfit` for
the catastrophic-overfitting guard, :mod:`bastion.train.distributed` for ``torchrun``,
:mod:`bastion.train.harden` for the iterative harden loop, :mod:`bastion.train.distill` for
defensive distillation (a negative example) and :mod:`bastion.train.ensemble` for ensembles.
"""

from bastion.train.checkpoint import load_checkpoint
from bastion.train.config import GuardFallback, LRSchedule, OptimizerKind, TrainConfig, TrainMethod
from bastion.train.distill import (
    DEFAULT_TEMPERATURE,
    DistillationResult,
    Temperature,
    distill,
    soft_labels,
)
from bastion.train.ensemble import Ensemble, EnsembleMode, EnsembleResult, train_ensemble
from bastion.train.harden import HardenResult, HardenRound, harden, strengthen
from bastion.train.loop import fit
from bastion.train.results import EpochMetrics, TrainResult

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DistillationResult",
    "Ensemble",
    "EnsembleMode",
    "EnsembleResult",
    "HardenResult",
    "HardenRound",
    "Temperature",
    "distill",
    "harden",
    "soft_labels",
    "strengthen",
    "train_ensemble",
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
