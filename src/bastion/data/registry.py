"""``load_dataset``: one entry point for the bundled datasets and for user ``.npz`` files.

A user file is evaluation data. An ``.npz`` with arrays ``x`` and ``y`` becomes the *test* split
and the train split is empty: bastion never silently holds out part of the data a user handed
over for an audit. To give training data as well, save ``x_train``, ``y_train``, ``x_test`` and
``y_test`` in the file; to split one array yourself, use
:func:`~bastion.data.splits.stratified_split`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.data.digits import load_digits
from bastion.data.mnist import load_mnist5k
from bastion.data.npz import (
    DEFAULT_MAX_BYTES,
    npz_array_names,
    read_npz_arrays,
    validate_arrays,
)
from bastion.data.splits import DatasetSplits

__all__ = ["DATASET_NAMES", "load_dataset"]

_BUNDLED: dict[str, Callable[[], DatasetSplits]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
}

DATASET_NAMES: tuple[str, ...] = tuple(_BUNDLED)
"""Names of the datasets bundled with bastion (no download needed)."""

_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DatasetSplits:
    """Load a bundled dataset by name, or a user dataset from an ``.npz`` file.

    Args:
        spec: ``"mnist5k"``, ``"digits"``, or the path of an ``.npz`` file holding either ``x``
            and ``y`` (all of it becomes the test split; the train split is empty) or
            ``x_train``, ``y_train``, ``x_test`` and ``y_test``.
        bounds: for a user file, the ``(low, high)`` range every input value must lie in.
            Bundled datasets always use ``(0.0, 1.0)``.
        max_bytes: for a user file, refuse any array whose header declares more bytes.

    Returns:
        The dataset's train and test splits as float32 inputs and int64 labels.

    Raises:
        ConfigurationError: ``spec`` is neither a bundled name nor an existing file (the message
            lists the valid names).
        InputValidationError: the user file is not a valid dataset (see
            :func:`~bastion.data.npz.load_npz`).
        UnsafeArtifactError: the user file holds pickled Python objects.

    Example:
        >>> data = load_dataset("digits")
        >>> data.name, data.num_classes, data.bounds
        ('digits', 10, (0.0, 1.0))
    """
    if isinstance(spec, str) and spec.strip().lower() in _BUNDLED:
        return _BUNDLED[spec.strip().lower()]()
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(repr(name) for name in DATASET_NAMES)
        raise ConfigurationError(
            f"unknown dataset {str(spec)!r}: not a bundled dataset ({names}) and no such file; "
            "give one of those names or the path of an .npz file with arrays x and y"
        )
    return _load_npz_splits(path, bounds=bounds, max_bytes=max_bytes)


def _load_npz_splits(path: Path, *, bounds: tuple[float, float], max_bytes: int) -> DatasetSplits:
    has_split = set(_SPLIT_KEYS) <= set(npz_array_names(path))
    arrays = read_npz_arrays(path, _SPLIT_KEYS if has_split else ("x", "y"), max_bytes=max_bytes)
    if has_split:
        x_train, y_train = _validated(path, "train", arrays["x_train"], arrays["y_train"], bounds)
        x_test, y_test = _validated(path, "test", arrays["x_test"], arrays["y_test"], bounds)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise InputValidationError(
                f"{path}: train samples have shape {tuple(x_train.shape[1:])} but test samples "
                f"have shape {tuple(x_test.shape[1:])}"
            )
    else:
        x_test, y_test = _validated(path, "", arrays["x"], arrays["y"], bounds)
        x_train = torch.empty((0, *x_test.shape[1:]), dtype=torch.float32)
        y_train = torch.empty((0,), dtype=torch.int64)
    labels = torch.cat([y_train, y_test])
    return DatasetSplits(
        name=str(path),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=int(labels.max()) + 1,
        bounds=bounds,
        input_shape=tuple(x_test.shape[1:]),
        train_indices=None if has_split else torch.empty((0,), dtype=torch.int64),
        test_indices=None if has_split else torch.arange(len(y_test)),
    )


def _validated(
    path: Path, part: str, x: object, y: object, bounds: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return validate_arrays(x, y, bounds=bounds)  # type: ignore[arg-type]
    except InputValidationError as error:
        where = f"{path} ({part} split)" if part else str(path)
        raise InputValidationError(
            f"{where}: {error}", sample_index=error.sample_index, violations=error.violations
        ) from None
