"""What a training run reports: one :class:`EpochMetrics` per epoch and a :class:`TrainResult`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from bastion.core.errors import ConfigurationError
from bastion.core.results import Result, to_jsonable
from bastion.train.config import TrainConfig

__all__ = ["EpochMetrics", "TrainResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """Metrics of one epoch (one line of ``metrics.jsonl``).

    Attributes:
        epoch: 1-based epoch number.
        loss: mean training loss over the epoch's samples (all processes).
        clean_accuracy: accuracy on the monitor batch (``guard_samples`` samples of the
            validation data when given, else of the training data), at temperature 1.
        robust_accuracy: accuracy on the same batch under a 10-step PGD at the full eps; None
            when the config has no threat.
        seconds: wall time of the epoch, evaluation included.
        lr: learning rate of the epoch's last iteration.
        eps: training radius at the epoch's last iteration (below ``threat.eps`` during the
            warm-up; 0 for method none).
        method: the method the epoch trained with (``pgd`` after a guard fallback).
    """

    epoch: int
    loss: float
    clean_accuracy: float
    robust_accuracy: float | None
    seconds: float
    lr: float
    eps: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON values, keys in field order."""
        return {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochMetrics:
        """The metrics that :meth:`to_dict` wrote."""
        try:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except KeyError as error:
            raise ConfigurationError(f"epoch metrics: missing field {error}") from None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TrainResult(Result):
    """The outcome of :func:`~bastion.train.fit`; ``to_dict()`` is ``train.json``.

    Attributes:
        config: the configuration trained with.
        history: metrics of every completed epoch, in order.
        best_epoch: the epoch with the best robust accuracy (clean accuracy when there is no
            threat); None before any epoch completed.
        stopped_reason: why training stopped before ``config.epochs`` (e.g. catastrophic
            overfitting), or None.
        guard_events: every collapse the overfitting guard saw, with what it did.
        seconds: training wall time, summed over resumed segments.
        samples: training samples used (after the schema dropped rejected ones).
        rejected_samples: training samples the schema rejected (dropped).
        repaired_samples: training samples the schema repaired or substituted.
        world_size: processes that trained (1 without DDP).
        model: the trained model (the same object that was passed to ``fit``); not in JSON.
    """

    schema_version = 1

    config: TrainConfig
    history: tuple[EpochMetrics, ...]
    best_epoch: int | None
    stopped_reason: str | None
    guard_events: tuple[str, ...] = ()
    seconds: float
    samples: int
    rejected_samples: int = 0
    repaired_samples: int = 0
    world_size: int = 1
    model: nn.Module | None = dataclasses.field(default=None, repr=False,
                                                metadata={"json": False})

    def to_dict(self) -> dict[str, Any]:
        """JSON values with ``schema_version``; fields marked ``json: False`` are left out."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.metadata.get("json", True):
                value = getattr(self, f.name)
                out[f.name] = value.to_dict() if f.name == "config" else to_jsonable(value)
        return out

    @property
    def final(self) -> EpochMetrics | None:
        """Metrics of the last completed epoch."""
        return self.history[-1] if self.history else None
