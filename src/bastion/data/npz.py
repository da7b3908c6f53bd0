"""Load user data from ``.npz`` files without ever unpickling, and validate it.

An ``.npz`` file is a zip archive of ``.npy`` members. numpy stores object arrays in it as
pickles, and a pickle can run code when it is read. This module reads each member's header
first and refuses any dtype that holds Python objects *before* touching the data, then reads the
data with ``allow_pickle=False``. Everything else that can be wrong with the arrays (missing,
wrong shape, non-numeric, non-finite, labels that are not class indices, values outside the
bounds) is reported as one :class:`~bastion.core.errors.InputValidationError` that lists every
violation found.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bastion.core.errors import ConfigurationError, InputValidationError, UnsafeArtifactError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "load_npz",
    "npz_array_names",
    "read_npz_arrays",
    "validate_arrays",
]

DEFAULT_MAX_BYTES = 4 * 2**30
"""Largest array (declared size, in bytes) :func:`load_npz` reads unless told otherwise."""

_NUMERIC_KINDS = frozenset("biuf")  # bool, signed, unsigned, float
_INT64_MAX = 2**63 - 1


def _open_archive(file: Path) -> zipfile.ZipFile:
    if not file.is_file():
        raise ConfigurationError(f"{file}: no such file; give the path of an existing .npz file")
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
        raise InputValidationError(
            f"{file}: not an .npz archive ({error}); save data with numpy.savez(path, x=..., y=...)"
        ) from error


def npz_array_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The names of the arrays in an ``.npz`` file, sorted, without reading any of them.

    Raises:
        ConfigurationError: the file does not exist.
        InputValidationError: the file is not an ``.npz`` (zip) archive.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, y=np.arange(3), x=np.zeros((3, 2)))
        >>> npz_array_names(path)
        ('x', 'y')
    """
    with _open_archive(Path(path)) as archive:
        return tuple(sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")))


def read_npz_arrays(
    path: str | os.PathLike[str],
    names: Sequence[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, np.ndarray]:
    """Read the named arrays from an ``.npz`` file, refusing object arrays without unpickling.

    Args:
        path: the ``.npz`` file.
        names: the arrays to read (member ``name.npy``); each must be present.
        max_bytes: refuse any array whose header declares more bytes than this.

    Returns:
        The arrays by name, as plain numpy arrays.

    Raises:
        ConfigurationError: the file does not exist.
        InputValidationError: not an ``.npz`` archive, an array is missing (the message names the
            arrays found), corrupt or too large.
        UnsafeArtifactError: an array holds Python objects (it would need unpickling).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, x=np.zeros((2, 3)), y=np.array([0, 1]))
        >>> sorted(read_npz_arrays(path, ["x", "y"]))
        ['x', 'y']
    """
    file = Path(path)
    with _open_archive(file) as archive:
        available = {
            info.filename[: -len(".npy")]: info
            for info in archive.infolist()
            if info.filename.endswith(".npy")
        }
        missing = [name for name in names if name not in available]
        if missing:
            found = ", ".join(repr(name) for name in sorted(available)) or "none"
            raise InputValidationError(
                f"{file}: missing array(s) {', '.join(repr(m) for m in missing)}; arrays found: "
                f"{found}. Save data with numpy.savez(path, x=..., y=...)",
                violations=[f"missing array {m!r}" for m in missing],
            )
        return {name: _read_member(file, archive, available[name], max_bytes) for name in names}


def _read_member(
    file: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int
) -> np.ndarray:
    name = info.filename[: -len(".npy")]
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        if dtype.hasobject:
            raise UnsafeArtifactError(
                f"{file}: array {name!r} has dtype {dtype}, which holds Python objects stored as "
                "a pickle; bastion never unpickles data. Convert it to a numeric array and save "
                "it again",
                path=file,
            )
        declared = math.prod(shape) * dtype.itemsize
        if declared > max_bytes:
            raise InputValidationError(
                f"{file}: array {name!r} declares {declared:,} bytes (shape {shape}), more than "
                f"the limit of {max_bytes:,}; raise max_bytes if the file is trusted"
            )
        with archive.open(info) as handle:
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except (InputValidationError, UnsafeArtifactError):
        raise
    except (
        ValueError,
        TypeError,
        OSError,
        EOFError,
        RuntimeError,  # zipfile: encrypted member
        NotImplementedError,  # zipfile: unknown compression or zip version
        zipfile.BadZipFile,
        zlib.error,
    ) as error:
        raise InputValidationError(f"{file}: array {name!r} is corrupt: {error}") from error
    return np.asarray(array)


def _first_index(mask: np.ndarray) -> int:
    """Index of the first sample (axis 0) with a True anywhere in it."""
    per_sample = mask.reshape(mask.shape[0], -1).any(axis=1)
    return int(np.argmax(per_sample))


def _check_structure(x: np.ndarray, y: np.ndarray) -> list[str]:
    problems: list[str] = []
    if x.dtype.kind not in _NUMERIC_KINDS:
        problems.append(f"x must be numeric (bool, int or float), got dtype {x.dtype}")
    if y.dtype.kind not in _NUMERIC_KINDS:
        problems.append(f"y must hold integer class labels, got dtype {y.dtype}")
    if x.ndim < 2:
        problems.append(f"x must have shape (N, *sample_shape), got shape {x.shape}")
    if y.ndim != 1:
        problems.append(f"y must have shape (N,), got shape {y.shape} (flatten it)")
    if x.ndim >= 1 and y.ndim >= 1 and x.shape[0] != y.shape[0]:
        problems.append(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.size == 0 or y.size == 0:
        problems.append(f"empty data: x has shape {x.shape}, y has shape {y.shape}")
    return problems


def _check_bounds(
    x32: np.ndarray, bounds: tuple[float, float] | None
) -> tuple[list[str], list[int]]:
    if bounds is None:
        return [], []
    low, high = bounds
    outside = (x32 < low) | (x32 > high)
    if not outside.any():
        return [], []
    first = _first_index(outside)
    message = (
        f"x has {int(outside.sum())} values outside the bounds [{low}, {high}] (observed min "
        f"{float(x32.min())}, max {float(x32.max())}; first in sample {first}); rescale the data "
        "or pass the bounds it uses"
    )
    return [message], [first]


def _check_labels(y: np.ndarray) -> tuple[list[str], list[int], np.ndarray]:
    problems: list[str] = []
    firsts: list[int] = []
    if y.dtype.kind == "f":
        wide = y.astype(np.float64)
        in_range = (wide > -(2.0**63)) & (wide < 2.0**63)  # NaN compares False: caught here too
        bad = ~in_range | (np.floor(wide) != wide)
        if bad.any():
            first = int(np.argmax(bad))
            problems.append(
                f"y has {int(bad.sum())} labels that are not whole numbers in the int64 range "
                f"(first at index "
                f"{first}: {y[first].item()!r}); labels must be class indices 0, 1, 2, ..."
            )
            firsts.append(first)
            wide = np.where(bad, 0.0, wide)
        labels = wide.astype(np.int64)
    elif y.dtype.kind == "u" and y.size and int(y.max()) > _INT64_MAX:
        first = int(np.argmax(y > _INT64_MAX))
        problems.append(f"y has labels too large for int64 (first at index {first})")
        firsts.append(first)
        labels = np.minimum(y, _INT64_MAX).astype(np.int64)
    else:
        labels = y.astype(np.int64)
    negative = labels < 0
    if negative.any():
        first = int(np.argmax(negative))
        problems.append(
            f"y has {int(negative.sum())} negative labels (first at index {first}: "
            f"{int(labels[first])}); labels must be class indices 0, 1, 2, ..."
        )
        firsts.append(first)
    return problems, firsts, labels


def validate_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a labelled dataset and convert it to float32 inputs and int64 labels.

    Args:
        x: inputs of shape ``(N, *sample_shape)``, any bool, integer or float dtype.
        y: labels of shape ``(N,)``: non-negative integers (floats that are whole numbers pass).
        bounds: ``(low, high)`` every input value must lie in, or ``None`` to skip that check.

    Returns:
        ``(x, y)`` as a float32 tensor (finite, inside ``bounds``) and an int64 tensor.

    Raises:
        InputValidationError: with every violation found in ``violations`` and the first
            offending sample in ``sample_index`` (when the problem is in the values).
        ConfigurationError: ``bounds`` is not finite with ``low < high``.

    Example:
        >>> x, y = validate_arrays(np.full((2, 3), 0.5), np.array([0.0, 2.0]))
        >>> x.dtype, y.tolist()
        (torch.float32, [0, 2])
        >>> validate_arrays(np.full((2, 3), 7.0), np.array([0, 1]))
        Traceback (most recent call last):
        ...
        bastion.core.errors.InputValidationError: x has 6 values outside the bounds [0.0, 1.0] ...
    """
    if bounds is not None:
        low, high = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigurationError(f"bounds must be finite with low < high, got {bounds}")
        bounds = (low, high)
    x = np.asarray(x)
    y = np.asarray(y)
    problems = _check_structure(x, y)
    if problems:
        raise InputValidationError("; ".join(problems), violations=problems)
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
    firsts: list[int] = []
    finite = np.isfinite(x32)
    if not finite.all():
        first = _first_index(~finite)
        problems.append(
            f"x has {int((~finite).sum())} non-finite values (NaN, inf, or beyond float32 range; "
            f"first in sample {first})"
        )
        firsts.append(first)
        x32 = np.where(finite, x32, np.float32(0.0))
    bound_problems, bound_firsts = _check_bounds(x32, bounds)
    label_problems, label_firsts, labels = _check_labels(y)
    problems += bound_problems + label_problems
    firsts += bound_firsts + label_firsts
    if problems:
        raise InputValidationError(
            "; ".join(problems), sample_index=min(firsts), violations=problems
        )
    return torch.from_numpy(np.ascontiguousarray(x32)), torch.from_numpy(labels)


def load_npz(
    path: str | os.PathLike[str],
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    x_key: str = "x",
    y_key: str = "y",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load inputs and labels from an ``.npz`` file, safely and validated.

    The file is never unpickled: an array of Python objects is refused before its data is read.

    Args:
        path: the ``.npz`` file, as written by ``numpy.savez(path, x=..., y=...)``.
        bounds: ``(low, high)`` every input value must lie in, or ``None`` to skip that check.
        x_key: name of the inputs array in the archive.
        y_key: name of the labels array in the archive.
        max_bytes: refuse any array whose header declares more bytes than this.

    Returns:
        ``(x, y)``: float32 inputs of shape ``(N, *sample_shape)`` and int64 labels ``(N,)``.

    Raises:
        ConfigurationError: the file does not exist, or ``bounds`` is invalid.
        InputValidationError: not an ``.npz`` archive, or an array is missing, corrupt or breaks
            the contract of :func:`validate_arrays`.
        UnsafeArtifactError: an array holds Python objects (it would need unpickling).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, x=np.random.rand(5, 1, 4, 4), y=np.arange(5))
        >>> x, y = load_npz(path)
        >>> tuple(x.shape), x.dtype, y.dtype
        ((5, 1, 4, 4), torch.float32, torch.int64)
    """
    arrays = read_npz_arrays(path, [x_key, y_key], max_bytes=max_bytes)
    try:
        return validate_arrays(arrays[x_key], arrays[y_key], bounds=bounds)
    except InputValidationError as error:
        raise InputValidationError(
            f"{Path(path)}: {error}", sample_index=error.sample_index, violations=error.violations
        ) from None
