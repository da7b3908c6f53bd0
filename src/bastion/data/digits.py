"""scikit-learn's handwritten digits (1,797 images of 8x8 pixels) with a fixed 80/20 split.

The data ships inside scikit-learn, so nothing is downloaded. Pixel values 0-16 are scaled to
[0, 1]. The split is stratified and computed by :func:`~bastion.data.splits.stratified_split`
with :data:`DIGITS_SPLIT_SEED`, so it is the same on every machine and every call.
"""

from __future__ import annotations

import functools

import numpy as np

from bastion.data.splits import DatasetSplits, bundled_splits

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "load_digits"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """Pixels in [0, 1] as float32 ``(1797, 1, 8, 8)`` and int64 labels, read-only."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits() -> DatasetSplits:
    """Load scikit-learn's 8x8 digits as float32 images in [0, 1] with a fixed stratified split.

    Returns:
        A :class:`DatasetSplits` named ``"digits"``: 1,438 train and 359 test images of shape
        ``(1, 8, 8)``, 10 classes, bounds ``(0.0, 1.0)``, with the source indices of each part.
        The tensors are fresh copies; changing them does not affect later calls.

    Example:
        >>> data = load_digits()
        >>> data.train_size, data.test_size, data.input_shape
        (1438, 359, (1, 8, 8))
    """
    x, y = _raw()
    return bundled_splits(
        "digits",
        x,
        y,
        test_fraction=DIGITS_TEST_FRACTION,
        seed=DIGITS_SPLIT_SEED,
        input_shape=(1, 8, 8),
    )
