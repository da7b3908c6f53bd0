"""The .npz loader: happy paths, every refusal, and no unpickling ever."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.core.errors import ConfigurationError, InputValidationError, UnsafeArtifactError
from bastion.data import load_dataset, load_npz, npz_array_names, validate_arrays


class _WritesMarker:
    """Unpickling this creates a file: proof that something ran code from the data."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_load_npz_happy_path(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 2 * 3 * 4).reshape(2, 3, 4)
    path = _save(tmp_path / "d.npz", x=x, y=np.array([3.0, 0.0]))
    xt, yt = load_npz(path)
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert xt.shape == (2, 3, 4) and yt.tolist() == [3, 0]
    np.testing.assert_allclose(xt.numpy(), x, rtol=1e-6)


def test_load_npz_custom_bounds_keys_and_unbounded(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", images=np.full((3, 2), 200, np.uint8), labels=np.arange(3))
    xt, _ = load_npz(path, bounds=(0, 255), x_key="images", y_key="labels")
    assert float(xt.max()) == 200.0
    xt, _ = load_npz(path, bounds=None, x_key="images", y_key="labels")
    assert float(xt.min()) == 200.0


@pytest.mark.parametrize("target", ["x", "y"])
def test_object_array_is_refused_without_unpickling(tmp_path: Path, target: str) -> None:
    marker = tmp_path / "code-ran"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _WritesMarker(marker), _WritesMarker(marker)
    arrays = {"x": np.zeros((2, 3)), "y": np.array([0, 1])}
    arrays[target] = evil
    path = _save(tmp_path / "evil.npz", **arrays)
    # sanity: the file really would run code if unpickled
    with np.load(path, allow_pickle=True) as archive:
        archive[target]
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeArtifactError, match=rf"array '{target}' has dtype object") as info:
        load_npz(path)
    assert info.value.path == path
    with pytest.raises(UnsafeArtifactError, match="never unpickles"):
        load_dataset(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        ({"x": np.zeros((2, 3))}, r"missing array\(s\) 'y'; arrays found: 'x'"),
        ({"inputs": np.zeros((2, 3)), "labels": np.zeros(2)}, r"'x', 'y'; arrays found: 'inputs'"),
        ({"x": np.zeros((3, 3)), "y": np.arange(2)}, "x has 3 samples but y has 2 labels"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, np.int64)}, "empty data"),
        ({"x": np.zeros(3), "y": np.arange(3)}, r"x must have shape \(N, \*sample_shape\)"),
        ({"x": np.zeros((2, 3)), "y": np.zeros((2, 1))}, r"y must have shape \(N,\)"),
        ({"x": np.array([["a"], ["b"]]), "y": np.arange(2)}, "x must be numeric"),
        ({"x": np.zeros((2, 1), np.complex64), "y": np.arange(2)}, "x must be numeric"),
        ({"x": np.zeros((2, 1)), "y": np.array(["0", "1"])}, "y must hold integer class labels"),
        (
            {"x": np.zeros((2, 1)), "y": np.array([0.0, 1.5])},
            r"not whole numbers in the int64 range \(first at index 1: 1.5\)",
        ),
        ({"x": np.zeros((2, 1)), "y": np.array([0.0, np.nan])}, "not whole numbers"),
        (
            {"x": np.zeros((3, 1)), "y": np.array([0, -1, -2])},
            r"2 negative labels \(first at index 1",
        ),
    ],
)
def test_load_npz_refusals(tmp_path: Path, arrays: dict[str, np.ndarray], pattern: str) -> None:
    path = _save(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputValidationError, match=pattern):
        load_npz(path)


def test_non_finite_inputs_report_count_and_first_sample(tmp_path: Path) -> None:
    x = np.zeros((4, 2, 2))
    x[2, 1, 0] = np.nan
    x[3, 0, 0] = np.inf
    path = _save(tmp_path / "d.npz", x=x, y=np.arange(4))
    with pytest.raises(InputValidationError, match=r"2 non-finite values .*first in sample 2") as e:
        load_npz(path)
    assert e.value.sample_index == 2


def test_out_of_bounds_reports_observed_range_and_all_violations(tmp_path: Path) -> None:
    x = np.full((3, 4), 0.5)
    x[1, 2] = 255.0
    x[2, 0] = -3.0
    path = _save(tmp_path / "d.npz", x=x, y=np.array([0, 1, -1]))
    with pytest.raises(InputValidationError, match=r"observed min -3.0, max 255.0") as e:
        load_npz(path)
    assert e.value.sample_index == 1
    assert len(e.value.violations) == 2  # bounds and the negative label, both reported


def test_float64_beyond_float32_range_is_not_finite(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.array([[1e300]]), y=np.array([0]))
    with pytest.raises(InputValidationError, match="beyond float32 range"):
        load_npz(path, bounds=None)


def test_missing_file_and_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such file"):
        load_npz(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(InputValidationError, match=r"not an \.npz archive"):
        load_npz(junk)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(InputValidationError, match=r"not an \.npz archive"):
        load_npz(plain)


def test_corrupt_member_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00garbage")
        archive.writestr("y.npy", b"nothing")
    with pytest.raises(InputValidationError, match="array 'x' is corrupt"):
        load_npz(path)


def test_truncated_member_is_reported(tmp_path: Path) -> None:
    full = tmp_path / "full.npz"
    _save(full, x=np.zeros((50, 10)), y=np.zeros(50, np.int64))
    with zipfile.ZipFile(full) as archive:
        data = archive.read("x.npy")
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", data[: len(data) // 2])
        archive.writestr("y.npy", b"")
    with pytest.raises(InputValidationError, match="array 'x' is corrupt"):
        load_npz(path)


def test_declared_size_limit(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((10, 100)), y=np.zeros(10, np.int64))
    with pytest.raises(InputValidationError, match="declares 8,000 bytes"):
        load_npz(path, max_bytes=1000)


def test_load_dataset_npz_without_split_is_all_test(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz",
        x=np.random.default_rng(0).random((6, 1, 4, 4)),
        y=np.array([0, 1, 2, 0, 1, 4]),
    )
    data = load_dataset(path)
    assert data.train_size == 0 and data.test_size == 6
    assert data.x_train.shape == (0, 1, 4, 4) and data.input_shape == (1, 4, 4)
    assert data.num_classes == 5 and data.name == str(path)


def test_load_dataset_npz_with_split(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz",
        x_train=np.zeros((5, 3)),
        y_train=np.arange(5),
        x_test=np.ones((2, 3)),
        y_test=np.array([6, 0]),
    )
    data = load_dataset(str(path))
    assert (data.train_size, data.test_size, data.num_classes) == (5, 2, 7)
    assert npz_array_names(path) == ("x_test", "x_train", "y_test", "y_train")
    bad = _save(
        tmp_path / "bad.npz",
        x_train=np.zeros((5, 3)),
        y_train=np.arange(5),
        x_test=np.ones((2, 3)),
        y_test=np.array([1, -1]),
    )
    with pytest.raises(InputValidationError, match=r"\(test split\): y has 1 negative"):
        load_dataset(bad)


def test_invalid_bounds_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="low < high"):
        validate_arrays(np.zeros((1, 1)), np.zeros(1), bounds=(1.0, 0.0))


# --- properties ------------------------------------------------------------------------------

_DTYPES = st.sampled_from(
    [
        np.bool_,
        np.int8,
        np.int64,
        np.uint8,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.dtype("U3"),
        np.dtype("datetime64[s]"),
    ]
)


@st.composite
def _arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 4))
    x_shape = draw(
        st.one_of(
            st.just((n,)),
            hnp.array_shapes(min_dims=2, max_dims=4, min_side=0, max_side=3).map(
                lambda s: (n, *s[1:])
            ),
        )
    )
    y_len = draw(st.one_of(st.just(n), st.integers(0, 4)))
    x = draw(hnp.arrays(draw(_DTYPES), x_shape))
    y = draw(hnp.arrays(draw(_DTYPES), st.one_of(st.just((y_len,)), st.just((y_len, 1)))))
    return x, y


@pytest.mark.filterwarnings("error")  # numpy cast/overflow warnings count as failures
@settings(max_examples=300, deadline=None)
@given(arrays=_arrays(), bounds=st.sampled_from([(0.0, 1.0), (-5.0, 300.0), None]))
def test_validator_property(
    arrays: tuple[np.ndarray, np.ndarray], bounds: tuple[float, float] | None
) -> None:
    x, y = arrays
    try:
        xt, yt = validate_arrays(x, y, bounds=bounds)
    except InputValidationError as error:
        assert error.violations and str(error)
        return
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert tuple(xt.shape) == x.shape and xt.ndim >= 2 and xt.numel() > 0
    assert yt.shape == (x.shape[0],)
    assert bool(torch.isfinite(xt).all()) and bool((yt >= 0).all())
    if bounds is not None:
        assert float(xt.min()) >= bounds[0] and float(xt.max()) <= bounds[1]
    np.testing.assert_array_equal(yt.numpy(), y.astype(np.float64).astype(np.int64))


@pytest.mark.filterwarnings("error")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), cut=st.integers(0, 2000), flips=st.lists(st.integers(0, 2000)))
def test_loader_never_crashes_on_hostile_bytes(data: bytes, cut: int, flips: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        good = Path(folder) / "good.npz"
        _save(good, x=np.zeros((3, 2), np.float32), y=np.arange(3))
        raw = bytearray(good.read_bytes()[:cut] + data)
        for position in flips:
            if raw:
                raw[position % len(raw)] ^= 0xFF
        path = Path(folder) / "hostile.npz"
        path.write_bytes(bytes(raw))
        try:
            load_npz(path)
        except (InputValidationError, UnsafeArtifactError):
            pass
        assert set(os.listdir(folder)) == {"good.npz", "hostile.npz"}
