"""Training data in, checked before anything trains: tensors, labels, bounds and the schema."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.evaluate.data import as_tensors
from bastion.train.config import TrainConfig

__all__ = ["TrainData", "prepare"]

SOFT_LABEL_TOLERANCE = 1e-4
DEFAULT_BOUNDS = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TrainData:
    """Checked training tensors (on the CPU) and what the schema did to them."""

    x: torch.Tensor
    y: torch.Tensor  # int64 (N,) or float (N, C) probability rows
    rejected: int = 0
    repaired: int = 0


def _materialize(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        x, y = data
        if y.dim() == 2 and y.shape[1] > 1 and torch.is_floating_point(y):
            return _soft(x, y, what)
    elif isinstance(data, (DataLoader, Dataset)):
        first = _first_label(data)
        if first is not None and first.dim() == 1 and first.numel() > 1 and (
            torch.is_floating_point(first)
        ):
            xs, ys = zip(*_items(data), strict=True)
            return _soft(torch.cat(xs), torch.cat(ys), what)
    try:
        return as_tensors(data)
    except (ConfigurationError, InputValidationError) as error:
        raise type(error)(f"{what}: {error}") from None


def _first_label(data: DataLoader[Any] | Dataset[Any]) -> torch.Tensor | None:
    try:
        item = next(iter(data)) if isinstance(data, DataLoader) else data[0]
    except (StopIteration, IndexError, TypeError):
        return None
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        return None
    label = torch.as_tensor(item[1])
    return label[0] if isinstance(data, DataLoader) and label.dim() == 2 else label


def _items(data: DataLoader[Any] | Dataset[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, DataLoader):
        return [(torch.as_tensor(b[0]), torch.as_tensor(b[1])) for b in data]
    size = len(data)  # type: ignore[arg-type]
    return [(torch.as_tensor(data[i][0])[None], torch.as_tensor(data[i][1])[None])
            for i in range(size)]


def _soft(x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 2 or y.shape[0] != x.shape[0]:
        raise InputValidationError(
            f"{what}: soft labels must have shape (N, classes) with N = {x.shape[0]} inputs, "
            f"got {tuple(y.shape)}")
    y = y.detach().float()
    sums = y.sum(dim=1)
    bad = ~torch.isfinite(y).all(dim=1) | (y < 0).any(dim=1) | (
        (sums - 1).abs() > SOFT_LABEL_TOLERANCE)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise InputValidationError(
            f"{what}: soft label rows must be probabilities (>= 0, summing to 1); row {index} "
            f"sums to {float(sums[index]):.6g} (normalise with y / y.sum(1, keepdim=True))",
            sample_index=index)
    return x.detach().float(), y


def _apply_schema(x: torch.Tensor, y: torch.Tensor, schema: Any,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    from bastion.guard.policy import InputGuard
    from bastion.guard.schema import TensorSchema

    if isinstance(schema, TensorSchema):
        schema = InputGuard(schema)
    if not isinstance(schema, InputGuard):
        raise ConfigurationError(
            f"schema: expected a bastion.guard TensorSchema or InputGuard, got "
            f"{type(schema).__name__}")
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    parts, repaired = [], 0
    for lo in range(0, x.shape[0], batch_size):
        result = schema.guard(x[lo:lo + batch_size], raise_on_reject=False)
        if result.rejected:
            if result.report.structural or not result.report.invalid_samples:
                first = result.report.violations[0].message
                raise InputValidationError(
                    f"training data breaks the schema {schema.schema.name!r} for every sample "
                    f"({result.report.summary()}); first: {first}")
            for index in result.report.invalid_samples:
                keep[lo + index] = False
            parts.append(result.x)
        else:
            repaired += len(result.changed_samples)
            parts.append(result.x)
    x = torch.cat(parts).to(torch.float32)
    rejected = int((~keep).sum())
    if rejected == x.shape[0]:
        raise InputValidationError("the schema rejected every training sample")
    return x[keep], y[keep], rejected, repaired


def prepare(
    data: Any,
    model: nn.Module,
    config: TrainConfig,
    *,
    what: str = "data",
    schema: Any = None,
    device: torch.device,
) -> TrainData:
    """Materialise and check ``data`` for ``model``; raise before any training.

    Checks: non-empty; inputs float (N, ...); labels (N,) integers or (N, C) probability rows
    (soft labels only with method none); labels within the model's output width (one forward
    pass in eval mode on two samples); inputs inside the bounds (the threat's, else [0, 1] when
    noise is added). With ``schema``, every batch goes through it first: ``reject`` drops the
    offending samples (counted), ``repair``/``substitute`` fix them (counted).
    """
    x, y = _materialize(data, what)
    if x.shape[0] == 0:
        raise InputValidationError(f"{what}: no samples to train on")
    rejected = repaired = 0
    if schema is not None:
        x, y, rejected, repaired = _apply_schema(x, y, schema, config.batch_size)
    soft = y.dim() == 2
    if soft and config.adversarial:
        raise ConfigurationError(
            f"soft labels: expected method 'none' (defensive distillation), got "
            f"{config.method.value!r}; adversarial methods need class indices")
    width = _output_width(model, x[:2], device)
    if soft and y.shape[1] != width:
        raise InputValidationError(
            f"{what}: soft labels have {y.shape[1]} columns but the model outputs {width} logits")
    if not soft and int(y.min()) < 0:
        raise InputValidationError(f"{what}: labels must be >= 0, got {int(y.min())}")
    if not soft and int(y.max()) >= width:
        index = int((y >= width).nonzero()[0, 0])
        raise InputValidationError(
            f"{what}: label {int(y[index])} of sample {index} is out of range for a model with "
            f"{width} outputs", sample_index=index)
    bounds = config.threat.bounds if config.threat is not None else (
        DEFAULT_BOUNDS if config.noise_sigma > 0 else None)
    if bounds is not None:
        lo, hi = bounds
        bad = ~torch.isfinite(x) | (x < lo - 1e-6) | (x > hi + 1e-6)
        per_sample = bad.flatten(1).any(dim=1)
        if bool(per_sample.any()):
            index = int(per_sample.nonzero()[0, 0])
            raise InputValidationError(
                f"{what}: inputs must be finite and inside the bounds [{lo:g}, {hi:g}]; sample "
                f"{index} is not (scale the data, or set threat bounds; normalisation belongs "
                "inside the model)", sample_index=index)
    return TrainData(x=x.contiguous(), y=y.contiguous(), rejected=rejected, repaired=repaired)


def _output_width(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    from bastion.train.methods import attack_mode

    try:
        with attack_mode(model), torch.no_grad():
            logits = model(x.to(device))
    except RuntimeError as error:
        raise InputValidationError(
            f"the model cannot take inputs of shape {tuple(x.shape[1:])} per sample: {error}"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputValidationError(
            f"the model must map a batch of {x.shape[0]} inputs to logits of shape "
            f"({x.shape[0]}, classes); it returned {shape}")
    return int(logits.shape[1])
