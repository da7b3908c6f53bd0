"""Training data through the input guard (:func:`guard_dataset`), and its columns.

A dataset arrives as a tensor, a tuple ``(x, y, ...)`` of tensors or a map-style dataset of
samples. Each becomes a list of tensors with the samples first, all of one length, or an
:class:`InputValidationError` that says what is wrong: a guard that cleaned ``x`` while ``y``
kept a different number of samples would silently pair inputs with the wrong labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bastion.core.errors import ConfigurationError, InputValidationError

if TYPE_CHECKING:
    from bastion.guard.policy import GuardResult, InputGuard

__all__ = ["collect_columns", "guard_dataset"]


def _refuse(message: str) -> InputValidationError:
    return InputValidationError(f"guard_dataset: {message}", violations=[message])


def _same_length(columns: list[Tensor]) -> list[Tensor]:
    if any(t.dim() == 0 for t in columns):
        raise _refuse("every tensor needs a sample dimension first, got a 0-d tensor")
    lengths = [int(t.shape[0]) for t in columns]
    if len(set(lengths)) > 1:
        raise _refuse(f"the tensors hold different numbers of samples {lengths}; each must "
                      "hold one entry per sample")
    return columns


def _stack(rows: list[tuple[object, ...]], k: int) -> Tensor:
    try:
        return torch.stack([torch.as_tensor(row[k]) for row in rows])
    except (TypeError, ValueError, OverflowError, RuntimeError) as error:
        raise _refuse(f"field {k} of the items cannot be stacked into one tensor (each item "
                      f"must hold numbers of the same shape): {error}") from None


def collect_columns(data: object) -> list[Tensor]:
    """``data`` as its columns ``[x, y, ...]``, each with one entry per sample.

    Raises:
        InputValidationError: ``data`` is none of a tensor, a sequence of tensors and a
            map-style dataset, is empty, or its columns differ in length or cannot be stacked.
    """
    if isinstance(data, Tensor):
        return _same_length([data])
    if isinstance(data, Sequence) and data and all(isinstance(t, Tensor) for t in data):
        return _same_length(list(data))
    if isinstance(data, (Mapping, str, bytes)) or not (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise _refuse(f"expected a tensor, a sequence of tensors or a map-style Dataset "
                      f"(indexed 0 to len - 1), got {type(data).__name__}")
    items = [data[i] for i in range(len(data))]
    if not items:
        raise _refuse("the dataset is empty")
    rows = [tuple(item) if isinstance(item, (tuple, list)) else (item,) for item in items]
    widths = sorted({len(row) for row in rows})
    if len(widths) > 1 or widths[0] == 0:
        raise _refuse(f"every item must hold the same number of fields (at least 1), got "
                      f"{widths}")
    return _same_length([_stack(rows, k) for k in range(widths[0])])


def guard_dataset(data: object, guard: InputGuard) -> tuple[tuple[Tensor, ...], GuardResult]:
    """Guard training data: the inputs (the first tensor) go through ``guard``, the rest pass.

    Args:
        data: a tensor of inputs, a sequence ``(x, y, ...)`` of tensors with samples first (all
            of the same length), or a map-style dataset whose items are tensors or tuples of
            tensors/numbers of the same shapes (indexed 0 to ``len - 1``; not a mapping).
        guard: the guard to apply; ``reject`` raises on the first invalid dataset.

    Returns:
        ``((x_clean, y, ...), result)``: the guarded inputs with the other tensors unchanged,
        and the guard's result (report and actions, with dataset-wide sample indices).

    Raises:
        ConfigurationError: ``guard`` is not an :class:`InputGuard`.
        InputValidationError: ``data`` is none of the above (its message says why), or the
            guard rejects the inputs.

    Example:
        >>> import torch
        >>> from bastion.guard.policy import InputGuard
        >>> from bastion.guard.schema import TensorSchema
        >>> guard = InputGuard(TensorSchema(shape=("n", 1), max=1.0), policy="repair")
        >>> (x, y), result = guard_dataset((torch.tensor([[0.5], [3.0]]), torch.tensor([0, 1])),
        ...                                guard)
        >>> x.tolist(), y.tolist(), result.changed_samples
        ([[0.5], [1.0]], [0, 1], (1,))
    """
    from bastion.guard.policy import InputGuard  # (the policy module imports this one)

    if not isinstance(guard, InputGuard):
        raise ConfigurationError(f"guard_dataset needs an InputGuard, got {guard!r:.80}")
    tensors = collect_columns(data)
    result = guard.guard(tensors[0])
    return (result.x, *tensors[1:]), result
