"""Tensor schemas: every violation kind found at the right sample, files round-trip, infer works."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard import FeatureStats, TensorSchema, as_tensor
from bastion.guard._fast_validator import FAST_VALUES, fast_validator


def _rules(report) -> list[tuple[str, int | None]]:
    return [(v.rule.value, v.sample_index) for v in report.violations]


def test_valid_batch_has_no_violations() -> None:
    schema = TensorSchema(shape=("batch", 3), min=0.0, max=1.0)
    report = schema.validate(torch.rand(5, 3))
    assert report.ok and report.violations == () and report.invalid_samples == ()
    assert report.num_samples == 5 and report.summary() == "valid"


@pytest.mark.parametrize(
    ("index", "value", "rule"),
    [(2, float("nan"), "non_finite"), (0, float("inf"), "non_finite"), (3, -0.5, "min"),
     (1, 1.5, "max")],
)
def test_each_value_violation_names_its_sample(index: int, value: float, rule: str) -> None:
    schema = TensorSchema(shape=("batch", 4), min=0.0, max=1.0)
    x = torch.full((4, 4), 0.5)
    x[index, 2] = value
    report = schema.validate(x)
    assert (rule, index) in _rules(report)
    assert report.invalid_samples == (index,)
    hit = next(v for v in report.violations if v.rule.value == rule)
    assert (math.isnan(hit.value) if math.isnan(value) else hit.value == value)
    assert f"sample {index}" in hit.message and "(2,)" in hit.message  # position in the sample


def test_all_violations_are_returned_at_once() -> None:
    schema = TensorSchema(shape=("batch", 2, 2), dtype=torch.float32, min=0.0, max=1.0)
    x = torch.full((4, 2, 2), 0.5, dtype=torch.float64)
    x[0, 0, 0] = math.nan
    x[1, 1, 1] = -3.0
    x[3, 0, 1] = 9.0
    report = schema.validate(x)
    assert _rules(report) == [("dtype", None), ("non_finite", 0), ("min", 1), ("max", 3)]
    assert report.counts == {"dtype": 1, "non_finite": 1, "min": 1, "max": 1}
    assert report.invalid_samples == (0, 1, 3)
    assert report.violations[2].value == -3.0 and "(1, 1)" in report.violations[2].message


def test_rank_shape_and_dtype_violations() -> None:
    schema = TensorSchema(shape=("batch", 1, 28, 28), dtype=(torch.float32, torch.float16))
    assert _rules(schema.validate(torch.zeros(2, 28, 28))) == [("rank", None)]
    report = schema.validate(torch.zeros(2, 3, 28, 27, dtype=torch.int64))
    assert _rules(report) == [("dtype", None), ("shape", None), ("shape", None)]
    assert [v.field for v in report.violations] == [
        "input.dtype", "input.shape[1]", "input.shape[3]"]
    assert schema.validate(torch.zeros(2, 1, 28, 28, dtype=torch.float16)).ok


def test_named_dimensions_are_bound_consistently() -> None:
    schema = TensorSchema(shape=("batch", "n", "n", None))
    assert schema.validate(torch.zeros(2, 3, 3, 7)).ok
    report = schema.validate(torch.zeros(2, 3, 4, 7))
    assert _rules(report) == [("named_dim", None)]
    assert report.violations[0].field == "input.shape[2]" and report.violations[0].value == 4
    assert "binds to 3" in report.violations[0].message


def test_numpy_arrays_are_accepted_and_objects_refused() -> None:
    schema = TensorSchema(shape=("batch", 2), dtype=torch.float64, max=1.0)
    assert _rules(schema.validate(np.array([[0.0, 2.0]]))) == [("max", 0)]
    with pytest.raises(InputValidationError, match="numeric"):
        schema.validate(np.array([["a", "b"]]))
    with pytest.raises(InputValidationError, match="as_tensor"):
        schema.validate([[0.0, 1.0]])  # type: ignore[arg-type]


def test_feature_zscore_flags_the_outlying_sample() -> None:
    stats = FeatureStats(mean=torch.zeros(3), std=torch.ones(3), z_limit=3.0)
    schema = TensorSchema(shape=("batch", 3), stats=stats)
    x = torch.tensor([[0.5, -1.0, 1.0], [0.0, 0.0, 9.0], [4.0, 4.0, 4.0]])
    report = schema.validate(x)
    assert _rules(report) == [("zscore", 1), ("zscore", 2)]
    rms = math.sqrt(81 / 3)
    assert report.violations[0].value == pytest.approx(rms)


def test_violation_cap_keeps_complete_counts() -> None:
    schema = TensorSchema(shape=("batch", 2), max=0.0)
    report = schema.validate(torch.ones(50, 2), max_violations=10)
    assert len(report.violations) == 10 and report.counts == {"max": 50}
    assert report.truncated == 40 and len(report.invalid_samples) == 50
    json.dumps(report.to_dict())


def _full_schema() -> TensorSchema:
    stats = FeatureStats(mean=torch.tensor([0.25, 0.5]), std=torch.tensor([0.1, 0.2]),
                         z_limit=4.5)
    return TensorSchema(shape=("batch", 2), dtype=(torch.float32, torch.float64), min=0.0,
                        max=1.0, finite=True, stats=stats, name="features")


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    schema = _full_schema()
    path = tmp_path / f"schema{suffix}"
    schema.save(path)
    loaded = TensorSchema.load(path)
    assert loaded == schema and loaded.to_dict() == schema.to_dict()
    anyshape = TensorSchema(shape=(None, "n", 3), dtype=torch.int64)
    anyshape.save(path)
    assert TensorSchema.load(path) == anyshape


def test_hand_written_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "img"\ndtype = "float32"\nshape = ["batch", 1, "*", "*"]\n'
                    "min = 0\nmax = 1\n")
    schema = TensorSchema.load(path)
    assert schema.shape == ("batch", 1, None, None) and schema.max == 1.0
    assert schema.dtypes == (torch.float32,) and schema.name == "img"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('dtype = "float32"\n', "'shape'"),
        ('shape = ["batch", 2]\ndtype = "float33"\n', "'dtype'"),
        ('shape = ["batch", -2]\n', "'shape'"),
        ('shape = ["batch", 2]\nmin = "zero"\n', "'min'"),
        ('shape = ["batch", 2]\nfinite = 1\n', "'finite'"),
        ('shape = ["batch", 2]\nmax_value = 1\n', "max_value"),
        ('shape = ["batch", 2]\nmin = 2\nmax = 1\n', "'min'"),
        ('shape = ["batch", 2]\n[stats]\nmean = [0, 0]\nz_limit = 3\n', "'std'"),
        ('shape = ["batch", 2]\n[stats]\nmean = [0, 0, 0]\nstd = [1, 1, 1]\nz_limit = 3\n',
         "'stats'"),
        ('shape = ["batch", 2\n', "not valid TOML"),
    ],
)
def test_bad_schema_files_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=key) as info:
        TensorSchema.load(path)
    assert str(path) in str(info.value)


def test_bad_json_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"shape": "batch"}')
    with pytest.raises(ConfigurationError, match="'shape'"):
        TensorSchema.load(tmp_path / "s.json")
    with pytest.raises(ConfigurationError, match="does not exist"):
        TensorSchema.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigurationError, match=r"\.yaml"):
        TensorSchema.load(tmp_path / "s.yaml")


def test_infer_on_mnist_accepts_it_and_rejects_shifted_or_nan_data() -> None:
    from bastion.data import load_dataset

    data = load_dataset("mnist5k")
    schema = TensorSchema.infer(data.x_train, bounds=data.bounds)
    assert schema.shape == ("batch", 1, 28, 28) and schema.dtypes == (torch.float32,)
    assert schema.validate(data.x_train).ok
    held_out = schema.validate(data.x_test)
    assert held_out.ok, held_out.summary()
    shifted = schema.validate((data.x_test[:100] + 0.3).clamp(0, 1))
    assert shifted.counts == {"zscore": 100}
    broken = data.x_test[:10].clone()
    broken[4, 0, 3, 3] = math.nan
    assert _rules(schema.validate(broken)) == [("non_finite", 4)]


def test_infer_refuses_bad_reference() -> None:
    with pytest.raises(ConfigurationError, match="NaN"):
        TensorSchema.infer(torch.tensor([[0.0], [math.nan]]))
    with pytest.raises(ConfigurationError, match="N >= 2"):
        TensorSchema.infer(torch.zeros(1, 3))
    with pytest.raises(ConfigurationError, match=r"bounds must be \(min, max\), got \(0, 1, 2\)"):
        TensorSchema.infer(torch.rand(4, 2), bounds=(0, 1, 2))  # type: ignore[arg-type]


def test_constructor_checks() -> None:
    with pytest.raises(ConfigurationError, match="'dtype'"):
        TensorSchema(shape=("batch",), dtype="complex64")
    with pytest.raises(ConfigurationError, match="fixed sample"):
        TensorSchema(shape=("batch", None), stats=FeatureStats(mean=[0.0], std=[1.0], z_limit=3))
    with pytest.raises(ConfigurationError, match="std"):
        FeatureStats(mean=[0.0], std=[0.0], z_limit=3)


def test_as_tensor_builds_the_schema_dtype() -> None:
    schema = TensorSchema(shape=("batch", 2))
    x = as_tensor([[1, 2.5], [0, 1]], schema)
    assert x.dtype == torch.float32 and x.tolist() == [[1.0, 2.5], [0.0, 1.0]]
    assert as_tensor([], TensorSchema(shape=("batch",))).shape == (0,)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([[1.0, 2.0], [3.0]], "ragged"),
        ([[1.0, "2"]], "found str"),
        ([[1.0, True]], "found bool"),
        ([[1.0, None]], "found NoneType"),
        ([[[1.0], [2.0]]], "deeper"),
        ([1.0, 2.0], "levels of nested lists"),
        ("[[1.0]]", "got str"),
        ({"x": 1}, "got dict"),
        ([[10**400, 1.0]], "cannot be converted"),  # an int too large for any dtype
    ],
)
def test_as_tensor_refuses_hostile_lists(obj: object, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        as_tensor(obj, TensorSchema(shape=("batch", 2)))


def test_as_tensor_refuses_huge_inputs_before_building_them() -> None:
    schema = TensorSchema(shape=("batch", 2))
    with pytest.raises(InputValidationError, match="more than 10"):
        as_tensor([[0.0, 0.0]] * 6, schema, max_elements=10)
    with pytest.raises(InputValidationError, match="more than 10"):
        as_tensor(np.zeros((6, 2)), schema, max_elements=10)


def test_as_tensor_integer_schemas() -> None:
    schema = TensorSchema(shape=("batch",), dtype=torch.uint8)
    assert as_tensor([1, 255], schema).dtype == torch.uint8
    with pytest.raises(InputValidationError, match="found float"):
        as_tensor([1.5], schema)
    with pytest.raises(InputValidationError, match="outside the range"):
        as_tensor([256], schema)


_VALUES = [0.0, 0.2, 0.5, 0.99, 1.0, 1.0001, -0.01, 7.0, math.nan, math.inf, -math.inf]


def _slow_report(schema: TensorSchema, x: torch.Tensor) -> object:
    from bastion.guard import _checks

    return _checks.build_report(schema, _checks.inspect(schema, x), 1000)


@pytest.mark.parametrize("seed", range(40))
def test_fast_valid_path_never_disagrees_with_the_full_checks(seed: int) -> None:
    """The server's fast path (certainly_valid) may only say "valid" when every rule holds."""
    from bastion.guard import _checks

    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(64, 6, generator=gen)
    schema = TensorSchema.infer(ref, bounds=(0.0, 1.0), z_limit=float(1 + seed % 4))
    batch = torch.rand(int(torch.randint(1, 5, (1,), generator=gen)), 6, generator=gen)
    if seed % 3:  # plant one odd value
        i, j = (int(torch.randint(0, n, (1,), generator=gen)) for n in batch.shape)
        batch[i, j] = _VALUES[seed % len(_VALUES)]
    slow = _slow_report(schema, batch)
    if _checks.certainly_valid(schema, batch):
        assert slow.ok, slow  # type: ignore[attr-defined]
    assert schema.validate(batch).to_dict() == slow.to_dict()  # type: ignore[attr-defined]


def test_fast_valid_path_hands_a_z_score_at_the_limit_to_the_exact_check() -> None:
    from bastion.guard import _checks

    stats = FeatureStats(mean=torch.zeros(4), std=torch.ones(4), z_limit=1.0)
    schema = TensorSchema(shape=("batch", 4), stats=stats)
    at_limit = torch.ones(1, 4)  # rms z-score exactly 1.0: valid (the rule is "> limit")
    fast = fast_validator(schema)
    assert fast is not None
    assert not _checks.certainly_valid(schema, at_limit)  # too close to decide fast...
    assert not fast(at_limit) and not fast(at_limit * (1 - 1e-6))  # (within the margin)
    assert schema.validate(at_limit).ok  # ...the exact check decides
    assert not schema.validate(at_limit * 1.001).ok
    assert _checks.certainly_valid(schema, at_limit * 0.5) and fast(at_limit * 0.5)


_ODD = st.sampled_from([0.0, 0.5, 1.0, 1.0001, -1e-6, 3e38, -3e38, math.nan, math.inf, -math.inf])


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    bounds=st.booleans(),
    with_stats=st.booleans(),
    z_limit=st.floats(0.5, 4.0),
    odd=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), _ODD), max_size=3),
    transposed=st.booleans(),
    finite=st.booleans(),
)
def test_fast_valid_path_is_never_wrong(
    seed: int, rows: int, dtype: torch.dtype, bounds: bool, with_stats: bool, z_limit: float,
    odd: list[tuple[int, int, float]], transposed: bool, finite: bool,
) -> None:
    """The fast paths (the general one and the server's float32 one) may only say "valid" when
    every rule holds, whatever the dtype, layout or values (NaN, infinities, values that
    overflow the z-score, non-contiguous views), with or without the finiteness rule."""
    from bastion.guard import _checks

    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(64, 6, generator=gen, dtype=torch.float64).to(dtype)
    schema = TensorSchema.infer(ref, bounds=(0.0, 1.0) if bounds else None,
                                z_limit=z_limit if with_stats else None)
    schema = dataclasses.replace(schema, dtype=(dtype, torch.float32), finite=finite)
    batch = torch.rand(rows, 6, generator=gen, dtype=torch.float64).to(dtype)
    for i, j, value in odd:
        batch[i % rows, j] = value
    if transposed:  # the same values, laid out column-major
        batch = batch.t().contiguous().t()
    slow = _slow_report(schema, batch)
    if _checks.certainly_valid(schema, batch):
        assert slow.ok, slow  # type: ignore[attr-defined]
    fast = fast_validator(schema)
    assert fast is not None  # float32 is allowed (as the only dtype or the first)
    if fast(batch):
        assert slow.ok, slow  # type: ignore[attr-defined]
    assert schema.validate(batch).to_dict() == slow.to_dict()  # type: ignore[attr-defined]


def test_fast_valid_path_accepts_a_plainly_valid_batch() -> None:
    """Not a path that always defers: a batch well inside every rule is accepted fast (a tensor
    that needs grad too, without a warning), and a batch that breaks the range or the z-score
    rule is not."""
    from bastion.guard import _checks

    stats = FeatureStats(mean=torch.full((4,), 0.5), std=torch.full((4,), 0.25), z_limit=1.0)
    schema = TensorSchema(shape=("batch", 4), dtype=(torch.float32, torch.float64), min=0.0,
                          max=1.0, stats=stats)
    row_ok = [0.4, 0.6, 0.4, 0.6]  # rms z 0.4
    for dtype in (torch.float32, torch.float64):
        batches = {
            "valid": (torch.tensor([row_ok] * 3, dtype=dtype), True),
            "out of range": (torch.tensor([row_ok, row_ok, [0.4, 1.0 + 1e-6, 0.4, 0.6]],
                                          dtype=dtype), False),
            "z-score": (torch.tensor([row_ok, [0.0, 1.0, 0.0, 1.0]], dtype=dtype), False),
        }
        for name, (batch, expected) in batches.items():
            assert _checks.certainly_valid(schema, batch) is expected, (name, dtype)
            needs_grad = batch.clone().requires_grad_(True)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert _checks.certainly_valid(schema, needs_grad) is expected, (name, dtype)
            assert schema.validate(batch).ok is expected


def test_server_fast_validator_accepts_plain_float32_batches_and_nothing_unusual() -> None:
    """The request path's validator answers True for a plainly valid float32 batch (one sample
    or several, images too) and False for everything it is not built to judge or that breaks a
    rule: the exact checks then decide. Extreme values raise no numpy warning."""

    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(200, 1, 4, 4, generator=gen) * 0.5 + 0.25
    schema = TensorSchema.infer(ref, bounds=(0.0, 1.0), z_limit=3.0)
    fast = fast_validator(schema)
    assert fast is not None
    one, three = ref[:1].clone(), ref[3:6].clone()
    assert fast(one) and fast(three) and fast(ref[:3].transpose(2, 3))  # views too
    assert schema.validate(one).ok and schema.validate(three).ok
    unusual = {
        "NaN": one.clone().index_put_((torch.tensor([0]),) * 4, torch.tensor(math.nan)),
        "inf": one.clone().index_put_((torch.tensor([0]),) * 4, torch.tensor(math.inf)),
        "above max": one + 0.8,
        "below min": one - 0.8,
        "z-score": torch.where(one > 0.5, 1.0, 0.0),
        "float64": one.double(),
        "needs grad": one.clone().requires_grad_(True),
        "wrong sample shape": one.reshape(1, 1, 2, 8),
        "empty": one[:0],
        "too many values": torch.full((FAST_VALUES // 16 + 1, 1, 4, 4), 0.5),
        "not a tensor": one.numpy(),
        "huge": torch.full((1, 1, 4, 4), 3e38),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, batch in unusual.items():
            assert not fast(batch), name
    # a 0-d tensor against a schema of samples of shape (): not a batch (no crash either)
    scalars = TensorSchema(shape=("batch",), min=0.0, max=1.0)
    one_dim = fast_validator(scalars)
    assert one_dim is not None and one_dim(torch.tensor([0.5, 0.2]))
    assert not one_dim(torch.tensor(0.5)) and not scalars.validate(torch.tensor(0.5)).ok
    # a validator is only built where float32 batches of fixed samples can be judged
    assert fast_validator(TensorSchema(shape=("batch", 4), dtype=torch.float64)) is None
    assert fast_validator(TensorSchema(shape=("batch", "width"))) is None
    fixed = fast_validator(TensorSchema(shape=(2, 3), min=0.0, max=1.0))
    assert fixed is not None and fixed(torch.zeros(2, 3)) and not fixed(torch.zeros(3, 3))
    free = TensorSchema(shape=("batch", 3), finite=False)  # no value rule at all
    unbounded = fast_validator(free)
    anything = torch.tensor([[math.inf, -math.inf, math.nan]])
    assert unbounded is not None and unbounded(anything) and free.validate(anything).ok
    ranged = fast_validator(dataclasses.replace(free, max=1.0))
    assert ranged is not None and not ranged(anything)  # NaN and inf: the exact checks decide
    finite = fast_validator(dataclasses.replace(free, finite=True))  # no range either
    for value in (math.inf, -math.inf, math.nan):
        assert finite is not None and not finite(torch.tensor([[0.0, value, 1e30]])), value
    assert finite is not None and finite(torch.tensor([[-3e38, 3e38, 0.0]]))


@pytest.mark.parametrize("bad", [0, -1, "x", True, 2.5])
def test_validate_refuses_a_bad_violation_cap(bad: object) -> None:
    schema = TensorSchema(shape=("batch", 2), max=0.0)
    with pytest.raises(ConfigurationError, match=r"max_violations must be an int >= 1"):
        schema.validate(torch.ones(3, 2), max_violations=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: torch.eye(2).to_sparse(), "sparse_coo"),
        (lambda: torch.eye(2).to_sparse_csr(), "sparse_csr"),
        (lambda: torch.empty(2, 2, device="meta"), "meta"),
    ],
)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_tensors_without_dense_values_are_refused_clearly(make: object, kind: str) -> None:
    schema = TensorSchema(shape=("batch", 2), min=0.0, max=1.0)
    x = make()  # type: ignore[operator]
    with pytest.raises(InputValidationError, match=f"got a {kind} tensor"):
        schema.validate(x)
    with pytest.raises(InputValidationError, match=f"got a {kind} tensor"):
        as_tensor(x, schema)


def test_big_endian_arrays_are_judged_like_their_native_copy() -> None:
    native = np.array([[0.5, 2.0], [np.nan, 0.25], [-1.0, 0.0]], dtype=np.float32)
    big = native.astype(">f4")
    assert not big.dtype.isnative and np.array_equal(big, native, equal_nan=True)
    schema = TensorSchema(shape=("batch", 2), min=0.0, max=1.0)
    report = schema.validate(big)
    assert report.to_dict() == schema.validate(native).to_dict()
    assert [(v.rule.value, v.sample_index) for v in report.violations] == [
        ("non_finite", 1), ("min", 2), ("max", 0)]
    inferred = TensorSchema.infer(native[[0, 2]].astype(">f4"))
    assert inferred == TensorSchema.infer(native[[0, 2]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min": 10**400}, r"key 'min' must be a finite number, got an int of 1329 bits"),
        ({"max": -(10**400)}, r"key 'max' must be a finite number"),
        ({"dtype": "float16", "max": 70000.0, "min": 66000.0}, r"no float16 value"),
        ({"dtype": "float16", "max": -70000.0}, r"no float16 value"),
        ({"dtype": ("float32", "uint8"), "max": -1.0}, r"no uint8 value"),
        ({"dtype": "int64", "min": 0.2, "max": 0.8}, r"no int64 value"),
        ({"dtype": "int8", "min": 200.0}, r"no int8 value"),
        ({"dtype": ("float32", "float16"), "shape": ("batch", 1),
          "stats": FeatureStats(mean=[1e5], std=[1.0], z_limit=3)}, r"range of float16"),
    ],
)
def test_constructor_refuses_bounds_no_allowed_dtype_can_hold(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        TensorSchema(**{"shape": ("batch", 2), **kwargs})  # type: ignore[arg-type]


def test_bounds_wider_than_a_dtype_are_kept() -> None:
    """A range that merely exceeds a dtype (float16 below 70000) is a valid, loose schema."""
    schema = TensorSchema(shape=("batch", 1), dtype=("float16", "float32"), max=70000.0)
    assert schema.validate(torch.tensor([[65504.0]], dtype=torch.float16)).ok
    assert not schema.validate(torch.tensor([[80000.0]])).ok
    loose = TensorSchema(shape=("batch", 1), dtype="float16", finite=False, max=70000.0)
    # +inf is above 70000 although torch rounds 70000 to inf in float16
    report = loose.validate(torch.tensor([[1.0], [math.inf]], dtype=torch.float16))
    assert [(v.rule.value, v.sample_index) for v in report.violations] == [("max", 1)]
    assert TensorSchema(shape=("b",), dtype="uint8", min=-5.0, max=2.5).min == -5.0
