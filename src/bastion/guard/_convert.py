"""Turn untrusted batches (tensors, numpy arrays, nested lists from JSON) into tensors, safely.

Nested lists are walked once, level by level, before any tensor is built: ragged lists, strings,
booleans where numbers are expected, nesting deeper than the schema and sizes over the limit are
refused with a message that says where, so that ``torch.tensor`` never sees hostile structure.
"""

from __future__ import annotations

import array
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bastion.core.errors import InputValidationError

if TYPE_CHECKING:
    from bastion.guard.schema import TensorSchema

__all__ = ["DEFAULT_MAX_ELEMENTS", "as_tensor", "native_order", "numpy_tensor", "to_tensor"]

DEFAULT_MAX_ELEMENTS = 50_000_000
"""Largest number of values :func:`as_tensor` accepts unless told otherwise."""

_NUMPY_KINDS = frozenset("iuf")


def _refuse(message: str) -> InputValidationError:
    return InputValidationError(message, violations=[message])


def native_order(x: np.ndarray) -> np.ndarray:
    """``x`` in the machine's byte order: a copy with the same values when it is not (torch
    cannot read a big-endian array on a little-endian machine), else ``x`` itself."""
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def numpy_tensor(x: np.ndarray) -> Tensor:
    """A numeric numpy array as a tensor, sharing its memory when it is C-contiguous and in
    native byte order (a big-endian array becomes a native copy with the same values)."""
    return torch.from_numpy(np.ascontiguousarray(native_order(x)))


def to_tensor(x: object) -> Tensor:
    """A tensor or numeric numpy array as a tensor (numpy shares memory); anything else raises."""
    if isinstance(x, Tensor):
        if x.layout is not torch.strided or x.is_meta:  # no values to judge in place
            kind = "meta" if x.is_meta else str(x.layout).removeprefix("torch.")
            raise _refuse(f"expected a dense tensor with values, got a {kind} tensor; convert "
                          "it first (e.g. x.to_dense())")
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in _NUMPY_KINDS and x.dtype != np.bool_:
            raise _refuse(f"expected a numeric array, got numpy dtype {x.dtype}")
        return numpy_tensor(x)
    raise _refuse(
        f"expected a tensor or numpy array, got {type(x).__name__}; convert nested lists with "
        "bastion.guard.as_tensor(obj, schema)"
    )


def _shape_of(
    obj: Sequence[Any], depth: int, max_elements: int, leaf_types: frozenset[type]
) -> tuple[tuple[int, ...], list[Any]]:
    """The shape of a rectangular nested list of numbers, walking at most ``depth`` levels, and
    its values in C order."""
    shape: list[int] = []
    level: list[Any] = [obj]
    path_hint = "inputs"
    for _ in range(depth):
        lengths = {len(item) if isinstance(item, (list, tuple)) else -1 for item in level}
        if -1 in lengths:
            kinds = sorted(
                {type(item).__name__ for item in level if not isinstance(item, (list, tuple))}
            )
            raise _refuse(
                f"{path_hint}: expected {depth} levels of nested lists (shape of rank {depth}), "
                f"found {', '.join(kinds)} at level {len(shape)}"
            )
        if len(lengths) > 1:
            raise _refuse(
                f"{path_hint}: ragged nested lists: lists at level {len(shape)} have different "
                f"lengths {sorted(lengths)[:5]}; every row must have the same length"
            )
        size = lengths.pop() if lengths else 0
        shape.append(size)
        if math.prod(shape) > max_elements:
            raise _refuse(
                f"{path_hint}: more than {max_elements:,} values (shape so far {tuple(shape)}); "
                "send a smaller batch"
            )
        level = [child for item in level for child in item]
    leaves = {type(v) for v in level}
    bad = leaves - leaf_types
    if bad:
        wanted = " or ".join(sorted(t.__name__ for t in leaf_types))
        found = ", ".join(sorted(t.__name__ for t in bad))
        deeper = f" nested deeper than the schema's rank {depth}" if {list, tuple} & bad else ""
        raise _refuse(f"{path_hint}: values must be {wanted}, found {found}{deeper}")
    return tuple(shape), level


def as_tensor(
    obj: object, schema: TensorSchema, *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> Tensor:
    """Convert a tensor, numpy array or nested list into a tensor for ``schema``.

    Nested lists (the shape of JSON arrays) must be rectangular, of the schema's rank, hold
    only ints and floats (no bools, strings or None), and hold at most ``max_elements`` values;
    they become a tensor of the schema's first dtype. Tensors and numpy arrays keep their dtype
    (:meth:`TensorSchema.validate` judges it) but must be numeric and within ``max_elements``.

    Raises:
        InputValidationError: the object cannot be a batch for this schema (the message says why).

    Example:
        >>> from bastion.guard.schema import TensorSchema
        >>> as_tensor([[1, 2.5], [0, 1]], TensorSchema(shape=("batch", 2)))
        tensor([[1.0000, 2.5000],
                [0.0000, 1.0000]])
        >>> as_tensor([[1, "2"]], TensorSchema(shape=("batch", 2)))
        Traceback (most recent call last):
        ...
        bastion.core.errors.InputValidationError: inputs: values must be float or int, found str
    """
    if isinstance(obj, (Tensor, np.ndarray)):
        tensor = to_tensor(obj)
        if tensor.numel() > max_elements:
            raise _refuse(f"inputs: {tensor.numel():,} values, more than {max_elements:,}")
        return tensor
    if not isinstance(obj, (list, tuple)):
        raise _refuse(
            f"inputs: expected a tensor, array or nested lists, got {type(obj).__name__}"
        )
    dtype = schema.dtypes[0]
    if dtype == torch.bool:
        leaf_types: frozenset[type] = frozenset({bool})
    else:
        leaf_types = frozenset({int, float} if dtype.is_floating_point else {int})
    shape, values = _shape_of(obj, len(schema.shape), max_elements, leaf_types)
    wide = torch.float64 if dtype.is_floating_point else torch.int64
    try:
        if dtype == torch.bool:
            tensor = torch.tensor(values, dtype=torch.bool)
        elif not values:
            tensor = torch.empty(0, dtype=wide)
        else:  # the walk already flattened the values: one C copy, no second nested walk
            tensor = torch.frombuffer(array.array("d" if dtype.is_floating_point else "q", values),
                                      dtype=wide)
    except (OverflowError, RuntimeError, TypeError, ValueError) as error:
        raise _refuse(f"inputs: cannot be converted to numbers: {error}") from None
    if tensor.dtype == torch.int64 and dtype != torch.int64:
        info = torch.iinfo(dtype)
        if tensor.numel() and (int(tensor.min()) < info.min or int(tensor.max()) > info.max):
            raise _refuse(f"inputs: integers outside the range of {dtype}")
    return tensor.reshape(shape).to(dtype)
