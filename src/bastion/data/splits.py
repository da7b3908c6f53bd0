"""Train/test splits: the :class:`DatasetSplits` container and a portable stratified split.

The split is computed from a keyed hash of each sample's index, not from a random number
generator, so it is the same on every machine, every platform and every numpy or torch release:
within each class, samples are ordered by ``blake2b(f"{seed}:{index}")`` and the first ones go to
the test set. Class proportions are kept (largest-remainder rounding decides the leftovers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import torch

from bastion.core.errors import ConfigurationError

__all__ = ["DatasetSplits", "stratified_split"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSplits:
    """A labelled dataset split into train and test parts, ready for a model.

    Attributes:
        name: what the data is (``"mnist5k"``, ``"digits"`` or the path of a user file).
        x_train: float32 inputs of shape ``(N_train, *input_shape)`` inside ``bounds``.
        y_train: int64 labels of shape ``(N_train,)``.
        x_test: float32 inputs of shape ``(N_test, *input_shape)`` inside ``bounds``.
        y_test: int64 labels of shape ``(N_test,)``.
        num_classes: number of classes (one more than the largest label).
        bounds: the ``(low, high)`` range every input value lies in.
        input_shape: the shape of one sample, e.g. ``(1, 28, 28)``.
        train_indices: positions of the train samples in the source data, when known.
        test_indices: positions of the test samples in the source data, when known.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    bounds: tuple[float, float]
    input_shape: tuple[int, ...]
    train_indices: torch.Tensor | None = None
    test_indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x: torch.Tensor = getattr(self, f"x_{part}")
            y: torch.Tensor = getattr(self, f"y_{part}")
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise ConfigurationError(
                    f"{part} split: expected float32 inputs and int64 labels, "
                    f"got {x.dtype} and {y.dtype}"
                )
            if tuple(x.shape[1:]) != self.input_shape or y.shape != (x.shape[0],):
                raise ConfigurationError(
                    f"{part} split: expected x of shape (N, *{self.input_shape}) and y of shape "
                    f"(N,), got {tuple(x.shape)} and {tuple(y.shape)}"
                )
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigurationError(f"bounds must be finite with low < high, got {self.bounds}")
        if self.num_classes < 1:
            raise ConfigurationError(f"num_classes must be at least 1, got {self.num_classes}")

    @property
    def train_size(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def test_size(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])


def bundled_splits(
    name: str,
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    *,
    test_fraction: float,
    seed: int,
    input_shape: tuple[int, ...],
) -> DatasetSplits:
    """Split a bundled dataset (float32 inputs in [0, 1], int64 labels, 10 classes) with
    :func:`stratified_split`, copying the arrays so callers may modify the tensors."""
    train, test = stratified_split(y, test_fraction=test_fraction, seed=seed)
    return DatasetSplits(
        name=name,
        x_train=torch.from_numpy(x[train].copy()),
        y_train=torch.from_numpy(y[train].copy()),
        x_test=torch.from_numpy(x[test].copy()),
        y_test=torch.from_numpy(y[test].copy()),
        num_classes=10,
        bounds=(0.0, 1.0),
        input_shape=input_shape,
        train_indices=torch.from_numpy(train),
        test_indices=torch.from_numpy(test),
    )


def _hash_key(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{index}".encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _test_quota(counts: dict[int, int], test_fraction: float) -> dict[int, int]:
    """Per-class test counts summing to ``round(N * test_fraction)`` (largest remainder)."""
    total = sum(counts.values())
    target = int(math.floor(total * test_fraction + 0.5))
    exact = {label: n * test_fraction for label, n in counts.items()}
    quota = {label: int(math.floor(value)) for label, value in exact.items()}
    leftover = target - sum(quota.values())
    by_remainder = sorted(counts, key=lambda label: (-(exact[label] - quota[label]), label))
    for label in by_remainder[:leftover]:
        quota[label] += 1
    return quota


def stratified_split(
    labels: np.ndarray | torch.Tensor, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample positions into train and test sets, class by class, identically everywhere.

    Args:
        labels: one integer label per sample (1-D).
        test_fraction: share of the samples that go to the test set, strictly between 0 and 1.
        seed: selects the split; the same seed always gives the same split.

    Returns:
        ``(train_indices, test_indices)``: disjoint, sorted int64 arrays that together cover
        ``range(len(labels))``.

    Raises:
        ConfigurationError: ``test_fraction`` is outside (0, 1) or ``labels`` is not 1-D.

    Example:
        >>> train, test = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        ...                                test_fraction=0.25, seed=0)
        >>> len(train), len(test)
        (6, 2)
        >>> sorted(int(label) for label in np.array([0, 0, 0, 0, 1, 1, 1, 1])[test])
        [0, 1]
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigurationError(
            f"test_fraction must lie strictly between 0 and 1, got {test_fraction}"
        )
    array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ConfigurationError(f"labels must be 1-D, got shape {array.shape}")
    members: dict[int, list[int]] = {}
    for index, label in enumerate(array.tolist()):
        members.setdefault(int(label), []).append(index)
    quota = _test_quota({label: len(idx) for label, idx in members.items()}, test_fraction)
    test: list[int] = []
    for label, indices in members.items():
        ordered = sorted(indices, key=lambda i: _hash_key(seed, i))
        test.extend(ordered[: quota[label]])
    is_test = np.zeros(len(array), dtype=bool)
    is_test[np.asarray(test, dtype=np.int64)] = True
    everything = np.arange(len(array), dtype=np.int64)
    return everything[~is_test], everything[is_test]
