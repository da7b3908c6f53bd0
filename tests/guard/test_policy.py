"""Invalid-data policies: reject raises with everything, repair yields valid data, substitute
replaces exactly the invalid samples, and every action is logged without input values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard import (
    ActionKind,
    FeatureStats,
    InputGuard,
    InvalidDataPolicy,
    TensorSchema,
    guard_dataset,
)

SCHEMA = TensorSchema(shape=("batch", 3), min=-1.0, max=1.0)


def _bad_batch() -> torch.Tensor:
    x = torch.zeros(5, 3)
    x[1, 0] = math.nan
    x[3, 2] = 123.456
    x[3, 1] = -987.654
    x[4, 0] = -math.inf
    return x


def test_policy_parse() -> None:
    assert InvalidDataPolicy.parse(" Substitute ") is InvalidDataPolicy.SUBSTITUTE
    with pytest.raises(ConfigurationError, match="reject, repair, substitute"):
        InvalidDataPolicy.parse("drop")


def test_valid_input_passes_untouched() -> None:
    x = torch.rand(4, 3)
    result = InputGuard(SCHEMA).guard(x)
    assert result.x is x and result.actions == () and not result.rejected


@settings(max_examples=200, deadline=None)
@given(
    array=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(3)), elements=st.one_of(
        st.floats(-1.25, 1.25, width=32), st.sampled_from([math.nan, math.inf, -math.inf]))),
    policy=st.sampled_from(["reject", "repair", "substitute"]),
    stats=st.booleans(),
)
def test_passes_only_what_guard_hands_back_untouched(
    array: np.ndarray, policy: str, stats: bool
) -> None:
    """``passes`` (the server's shortcut) is True only when ``guard`` would return the batch
    itself with a clean report and no action, under every policy; and it is not a path that
    always defers: plain batches pass."""
    schema = SCHEMA
    if stats:
        schema = TensorSchema(shape=("batch", 3), min=-1.0, max=1.0, stats=FeatureStats(
            mean=torch.zeros(3), std=torch.full((3,), 0.5), z_limit=1.5))
    guard = InputGuard(schema, policy=policy, default=torch.zeros(3))
    x = torch.from_numpy(array)
    if guard.passes(x):
        assert schema.validate(x).ok  # the exact checks (guard itself takes the shortcut)
        result = guard.guard(x, raise_on_reject=False)
        assert result.x is x and result.report.ok and not result.actions and not result.rejected
    plain = torch.tensor([[0.1, -0.2, 0.3]])
    assert guard.passes(plain) and guard.guard(plain).x is plain


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 3), max_size=3).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int32, torch.bool]),
    schema_shape=st.sampled_from([("batch",), ("batch", 3), (2, 3), ("batch", 1, 3), (None, 3)]),
    grad=st.booleans(),
)
def test_passes_never_raises_on_any_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, schema_shape: tuple[object, ...], grad: bool
) -> None:
    """Any tensor, of any rank (0-d too), dtype or size, against schemas of several ranks:
    ``passes`` answers, and True only for a batch the exact checks accept."""
    schema = TensorSchema(shape=schema_shape, min=0.0, max=1.0)  # type: ignore[arg-type]
    x = torch.full(shape, 0.5).to(dtype) if dtype != torch.bool else torch.zeros(shape) > 0
    if grad and x.is_floating_point():
        x.requires_grad_(True)
    if InputGuard(schema).passes(x):
        assert schema.validate(x).ok


def test_reject_raises_with_every_violation() -> None:
    with pytest.raises(InputValidationError, match="rejected") as info:
        InputGuard(SCHEMA).guard(_bad_batch())
    found = [(v.rule.value, v.sample_index) for v in info.value.violations]
    assert found == [("non_finite", 1), ("non_finite", 4), ("min", 3), ("min", 4), ("max", 3)]
    assert info.value.sample_index == 1


def test_reject_without_raising_returns_a_rejected_result() -> None:
    result = InputGuard(SCHEMA).guard(_bad_batch(), raise_on_reject=False)
    assert result.rejected and len(result.actions) == 5
    assert {a.action for a in result.actions} == {ActionKind.REJECT}


def test_repair_clips_and_fills_per_sample() -> None:
    result = InputGuard(SCHEMA, policy="repair").guard(_bad_batch())
    expected = torch.zeros(5, 3)
    expected[3] = torch.tensor([0.0, -1.0, 1.0])
    expected[4, 0] = -1.0  # -inf -> the minimum
    assert torch.equal(result.x, expected)  # NaN -> 0 (inside the range), the rest untouched
    assert result.changed_samples == (1, 3, 4)
    assert SCHEMA.validate(result.x).ok and not result.report.ok


def test_repair_uses_the_declared_fill_value() -> None:
    result = InputGuard(SCHEMA, policy="repair", fill=0.25).guard(_bad_batch())
    assert result.x[1, 0].item() == 0.25
    with pytest.raises(ConfigurationError, match="fill"):
        InputGuard(SCHEMA, policy="repair", fill=5.0)


def test_repair_cannot_fix_shape_or_dtype() -> None:
    guard = InputGuard(SCHEMA, policy="repair")
    with pytest.raises(InputValidationError, match="cannot fix the dtype or shape"):
        guard.guard(torch.zeros(2, 4))
    with pytest.raises(InputValidationError, match="dtype"):
        guard.guard(torch.zeros(2, 3, dtype=torch.float64))


_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=1, max_side=6).map(
    lambda s: (s[0], 4)), elements=_FLOATS))
def test_repaired_output_always_validates(array: np.ndarray) -> None:
    stats = FeatureStats(mean=torch.tensor([0.0, 0.5, -0.5, 0.1]),
                         std=torch.tensor([0.1, 0.2, 0.3, 0.05]), z_limit=2.0)
    schema = TensorSchema(shape=("batch", 4), min=-1.0, max=1.0, stats=stats)
    result = InputGuard(schema, policy="repair").guard(torch.from_numpy(array.copy()))
    assert schema.validate(result.x).ok
    valid = ~torch.tensor([i in result.report.invalid_samples for i in range(len(array))])
    assert torch.equal(result.x[valid], torch.from_numpy(array)[valid])  # valid rows untouched


def test_substitute_replaces_exactly_the_invalid_samples() -> None:
    default = torch.tensor([0.1, 0.2, 0.3])
    guard = InputGuard(SCHEMA, policy="substitute", default=default)
    x = _bad_batch()
    result = guard.guard(x)
    for i in range(5):
        assert torch.equal(result.x[i], default if i in (1, 3, 4) else x[i])
    assert result.changed_samples == (1, 3, 4)
    assert {a.action for a in result.actions} == {ActionKind.SUBSTITUTE}


def test_substitute_needs_a_valid_default() -> None:
    with pytest.raises(ConfigurationError, match="needs a default"):
        InputGuard(SCHEMA, policy="substitute")
    with pytest.raises(ConfigurationError, match="breaks the schema"):
        InputGuard(SCHEMA, policy="substitute", default=torch.tensor([0.0, 0.0, 5.0]))
    with pytest.raises(ConfigurationError, match="breaks the schema"):
        InputGuard(SCHEMA, policy="substitute", default=torch.zeros(4))


@pytest.mark.parametrize("policy", ["reject", "repair", "substitute"])
def test_every_action_is_logged_once_without_input_values(
    caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    guard = InputGuard(SCHEMA, policy=policy, default=torch.zeros(3))
    with caplog.at_level(logging.INFO, logger="bastion.guard"):
        result = guard.guard(_bad_batch(), raise_on_reject=False)
    records = [r for r in caplog.records if r.name == "bastion.guard"]
    assert len(records) == len(result.actions) == 5
    for record, action in zip(records, result.actions, strict=True):
        text = record.getMessage()
        assert f"sample={action.sample_index}" in text and action.rule.value in text
        assert record.bastion_guard == action.to_dict()  # type: ignore[attr-defined]
        assert "123.4" not in text and "987.6" not in text
        assert all(isinstance(arg, (str, int, type(None))) for arg in record.args or ())


def test_conversion_refusals_are_logged_and_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bastion.guard"), pytest.raises(
        InputValidationError, match="ragged"
    ):
        InputGuard(SCHEMA, policy="repair").guard([[0.0, 0.0, 0.0], [1.0]])
    assert len(caplog.records) == 1 and "rule=type" in caplog.records[0].getMessage()


def test_guard_accepts_json_lists() -> None:
    result = InputGuard(SCHEMA, policy="repair").guard([[0.0, 2, -3.5]])
    assert result.x.tolist() == [[0.0, 1.0, -1.0]] and result.x.dtype == torch.float32


def test_guard_dataset_tensors_and_datasets() -> None:
    guard = InputGuard(SCHEMA, policy="repair")
    labels = torch.arange(5)
    (x, y), result = guard_dataset((_bad_batch(), labels), guard)
    assert SCHEMA.validate(x).ok and torch.equal(y, labels) and result.changed_samples == (1, 3, 4)

    dataset = torch.utils.data.TensorDataset(_bad_batch(), labels)
    (x2, y2), _ = guard_dataset(dataset, guard)
    assert torch.equal(x2, x) and torch.equal(y2, labels)
    with pytest.raises(InputValidationError):
        guard_dataset(dataset, InputGuard(SCHEMA))


def test_result_to_dict_summarises_the_tensor() -> None:
    result = InputGuard(SCHEMA, policy="repair").guard(_bad_batch())
    data = result.to_dict()
    assert data["shape"] == [5, 3] and "x" not in data and len(data["actions"]) == 5
    assert data["report"]["counts"] == {"non_finite": 2, "min": 2, "max": 1}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_violations": 0}, r"max_violations must be an int >= 1, got 0"),
        ({"max_violations": -1}, r"max_violations must be an int >= 1, got -1"),
        ({"max_violations": "3"}, r"max_violations must be an int >= 1, got '3'"),
        ({"max_violations": True}, r"max_violations must be an int >= 1, got True"),
        ({"policy": "substitute", "default": "abc"}, r"default must be one sample.*got str"),
        ({"policy": "substitute", "default": [[0.5], [0.5, 0.5]]},
         r"default must be one sample.*got list"),
        ({"policy": "substitute", "default": np.array([None, 0, 0])},
         r"default must be one sample.*numpy dtype object"),
        ({"logger": "x"}, r"logger must be a logging.Logger or LoggerAdapter, got 'x'"),
        ({"fill": True}, r"fill must be a finite number.*got True"),
        ({"fill": 10**400}, r"fill must be a finite number"),
    ],
)
def test_bad_arguments_are_refused_when_the_guard_is_built(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        InputGuard(SCHEMA, **kwargs)  # type: ignore[arg-type]


def test_a_fill_float16_cannot_hold_is_refused() -> None:
    schema = TensorSchema(shape=("batch", 1), dtype=("float32", "float16"))
    with pytest.raises(ConfigurationError, match="range of the schema's dtypes"):
        InputGuard(schema, policy="repair", fill=70000.0)
    assert InputGuard(schema, policy="repair", fill=65504.0).fill == 65504.0


def test_a_one_violation_cap_still_rejects_with_the_first_violation() -> None:
    with pytest.raises(InputValidationError, match="rejected") as info:
        InputGuard(SCHEMA, max_violations=1).guard(_bad_batch())
    assert len(info.value.violations) == 1 and info.value.sample_index == 1


def test_repair_clamps_within_each_dtype_of_the_schema() -> None:
    """Bounds beyond a dtype (float16 below 70000, a negative min for uint8) clamp to the
    dtype's own range instead of raising (float16) or wrapping around (uint8: -5 is 251)."""
    schema = TensorSchema(shape=("batch", 2), dtype=("float16", "float32"), max=70000.0)
    guard = InputGuard(schema, policy="repair")
    half = guard.guard(torch.tensor([[math.inf, 1.0], [2.0, 3.0]], dtype=torch.float16))
    assert half.x.dtype == torch.float16 and half.x.tolist() == [[65504.0, 1.0], [2.0, 3.0]]
    assert half.changed_samples == (0,)
    single = guard.guard(torch.tensor([[80000.0, -math.inf]]))
    assert single.x.tolist() == [[70000.0, 0.0]]  # -inf without a min: the fill value
    loose = TensorSchema(shape=("batch", 2), dtype=("float16",), finite=False, max=70000.0)
    assert InputGuard(loose, policy="repair").guard(
        torch.tensor([[math.inf, 1.0]], dtype=torch.float16)).x.tolist() == [[65504.0, 1.0]]
    small = TensorSchema(shape=("batch", 2), dtype="uint8", min=-5.0, max=200.0)
    fixed = InputGuard(small, policy="repair").guard(
        torch.tensor([[250, 1], [0, 7]], dtype=torch.uint8))
    assert fixed.x.tolist() == [[200, 1], [0, 7]] and fixed.changed_samples == (0,)


def test_big_endian_arrays_are_guarded_like_their_native_copy() -> None:
    native = _bad_batch().numpy()
    big = native.astype(">f4")
    assert not big.dtype.isnative
    guard = InputGuard(SCHEMA, policy="repair")
    from_big, from_native = guard.guard(big), guard.guard(native)
    assert torch.equal(from_big.x, from_native.x)
    assert from_big.to_dict() == from_native.to_dict()
