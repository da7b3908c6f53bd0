"""Turn what users hold ((x, y) tensors, a Dataset, a DataLoader) into one pair of tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["as_tensors"]


def as_tensors(data: Any, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` samples of ``data`` as float inputs and int64 labels.

    Args:
        data: an ``(x, y)`` pair of tensors, a map-style ``Dataset`` of ``(x, y)`` items, or a
            ``DataLoader`` yielding ``(x, y)`` batches.
        limit: keep only the first ``limit`` samples (None: all).

    Returns:
        ``(x, y)`` with x float32 of shape (N, ...) and y int64 of shape (N,).

    Raises:
        ConfigurationError: ``data`` is none of the accepted kinds, or ``limit`` < 1.
        InputValidationError: the samples or labels have the wrong shape or type.

    Example:
        >>> x, y = as_tensors((torch.rand(5, 3), torch.arange(5)), limit=2)
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigurationError(f"limit must be a positive integer, got {limit!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        x, y = data
        if limit is not None:
            x, y = x[:limit], y[:limit]
    elif isinstance(data, DataLoader):
        xs, ys, count = [], [], 0
        for batch in data:
            bx, by = _pair(batch, "a DataLoader batch")
            xs.append(bx)
            ys.append(by)
            count += bx.shape[0]
            if limit is not None and count >= limit:
                break
        if not xs:
            raise InputValidationError("the DataLoader yielded no batches")
        x, y = torch.cat(xs)[:limit], torch.cat(ys)[:limit]
    elif isinstance(data, Dataset):
        try:
            size = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigurationError(
                "an iterable Dataset has no length: wrap it in a DataLoader"
            ) from None
        n = size if limit is None else min(size, limit)
        items = [_pair(data[i], "a Dataset item") for i in range(n)]
        if not items:
            raise InputValidationError("the Dataset is empty")
        x = torch.stack([torch.as_tensor(a) for a, _ in items])
        y = torch.stack([torch.as_tensor(b).reshape(()) for _, b in items])
    else:
        raise ConfigurationError(
            f"data must be an (x, y) pair of tensors, a Dataset or a DataLoader; got "
            f"{type(data).__name__}"
        )
    return _checked(x, y)


def _pair(item: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        raise InputValidationError(
            f"{what} must be an (input, label) pair, got {type(item).__name__}"
        )
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _checked(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 2:
        raise InputValidationError(f"inputs must have shape (N, ...), got {tuple(x.shape)}")
    y = y.reshape(-1) if y.dim() == 2 and y.shape[1] == 1 else y
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputValidationError(
            f"labels must have shape ({x.shape[0]},) to match the inputs, got {tuple(y.shape)}"
        )
    if torch.is_floating_point(y) or y.dtype == torch.bool:
        if torch.is_floating_point(y) and bool((y != y.round()).any()):
            raise InputValidationError("labels must be integer class indices")
    if not torch.is_floating_point(x):
        x = x.float()
    if x.shape[0] == 0:
        raise InputValidationError("no samples to evaluate")
    return x.detach().float(), y.detach().long()
