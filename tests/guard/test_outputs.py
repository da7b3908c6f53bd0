"""Output checks: NaN and off-simplex rows flagged; confidence and margin match numpy."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.core.errors import ConfigurationError
from bastion.guard import OutputChecker, OutputKind, OutputVerdict
from bastion.guard import outputs as outputs_module
from bastion.guard._output_rows import answer


def _numpy_flags(logits: np.ndarray, min_conf: float, min_margin: float):
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    top2 = np.sort(probs, axis=1)[:, ::-1][:, :2]
    return probs, probs.argmax(1), top2[:, 0] < min_conf, (top2[:, 0] - top2[:, 1]) < min_margin


def test_nan_and_inf_logits_are_flagged() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [math.nan, 0.0, 0.0], [0.0, math.inf, 0.0]])
    report = OutputChecker(3).check(logits)
    assert report.non_finite.tolist() == [False, True, True]
    assert report.predictions.tolist() == [2, -1, -1]
    assert math.isnan(report.confidence[1]) and not report.low_confidence[1]
    assert not report.ok and report.counts["non_finite"] == 2


def test_probabilities_off_the_simplex_are_flagged() -> None:
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.6], [-0.1, 1.1], [0.5, 0.5 + 5e-4]])
    report = OutputChecker(expect="probabilities").check(probs)
    assert report.off_simplex.tolist() == [False, True, True, False]
    assert report.expect is OutputKind.PROBABILITIES
    assert torch.equal(report.probabilities, probs)  # given probabilities are not renormalised


def test_value_range() -> None:
    report = OutputChecker(range=(-10.0, 10.0)).check(torch.tensor([[0.0, 11.0], [1.0, -1.0]]))
    assert report.out_of_range.tolist() == [True, False]


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 6)),
               elements=st.floats(-20, 20)),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_confidence_and_margin_flags_match_numpy(
    logits: np.ndarray, min_conf: float, min_margin: float
) -> None:
    report = OutputChecker(min_confidence=min_conf, min_margin=min_margin).check(logits)
    probs, preds, low_conf, low_margin = _numpy_flags(logits, min_conf, min_margin)
    np.testing.assert_allclose(report.probabilities.numpy(), probs, rtol=1e-9, atol=1e-12)
    top = np.sort(probs, axis=1)[:, ::-1]
    clear_conf = np.abs(top[:, 0] - min_conf) > 1e-9  # skip ties at the threshold
    clear_margin = np.abs(top[:, 0] - top[:, 1] - min_margin) > 1e-9
    assert np.array_equal(report.low_confidence.numpy()[clear_conf], low_conf[clear_conf])
    assert np.array_equal(report.low_margin.numpy()[clear_margin], low_margin[clear_margin])
    distinct = top[:, 0] - top[:, 1] > 1e-9
    assert np.array_equal(report.predictions.numpy()[distinct], preds[distinct])


# values that make ties, thresholds and non-finite rows likely, next to ordinary ones
_LOGIT = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.0, math.log(3.0), math.nan, math.inf,
                                    -math.inf, 88.0, -88.0, 1e-6]),
                   st.floats(-30, 30, width=32))


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 10)), elements=_LOGIT),
    st.sampled_from([0.0, 0.5, 0.75, 1 / 3, 0.9999]) | st.floats(0.0, 1.0),
    st.sampled_from([0.0, 0.1, 0.5]) | st.floats(0.0, 1.0),
    st.none() | st.sampled_from([(-10.0, 10.0), (0.0, 1.0), (-1.0, 2.0)]),
)
def test_small_batch_fast_path_agrees_with_the_tensor_path(
    logits: np.ndarray, min_conf: float, min_margin: float, bounds: tuple[float, float] | None
) -> None:
    """Batches of at most 64 values are judged in plain Python first; whenever that path
    answers, every flag, count, prediction and tensor equals the tensor path's."""
    checker = OutputChecker(min_confidence=min_conf, min_margin=min_margin, range=bounds)
    x = torch.from_numpy(logits)
    assert x.numel() <= outputs_module._SMALL
    fast = checker.check(x)
    exact_checker = OutputChecker(min_confidence=min_conf, min_margin=min_margin, range=bounds)
    original = outputs_module._SMALL
    outputs_module._SMALL = 0  # the tensor path alone
    try:
        exact = exact_checker.check(x)
    finally:
        outputs_module._SMALL = original
    assert fast.counts == exact.counts and fast.ok == exact.ok
    for flag in outputs_module.FLAGS:
        assert torch.equal(getattr(fast, flag), getattr(exact, flag)), flag
    for name in ("probabilities", "predictions", "confidence", "margin"):
        torch.testing.assert_close(getattr(fast, name), getattr(exact, name), rtol=0, atol=0,
                                   equal_nan=True, msg=name)
    # the server's verdict: the same flags and answer, its probabilities within float32 rounding
    verdict, expected = checker.verdict(x), OutputVerdict.of(exact)
    assert (verdict.ok, verdict.problems, verdict.counts, verdict.flagged, verdict.predictions) \
        == (expected.ok, expected.problems, expected.counts, expected.flagged, expected.predictions)
    if expected.probabilities is not None:
        assert verdict.probabilities is not None
        got = np.array(verdict.probabilities, dtype=np.float64)
        np.testing.assert_allclose(got, np.array(expected.probabilities), rtol=0, atol=3e-7)
        assert np.array_equal(got, got.astype(np.float32), equal_nan=True)  # float32 values
    assert json.loads(json.dumps(verdict.to_dict())) == verdict.to_dict()


@settings(max_examples=200, deadline=None)
@example(np.array([[0.0, 8e-32] + [0.0] * 8] * 7, dtype=np.float32))  # a tie in the softmax
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 10)), elements=_LOGIT)
    | hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 4)),
                 elements=st.sampled_from([1e308, -1e308, 0.0, 5.0])),
)
def test_answer_is_the_float64_softmax_and_its_first_argmax(logits: np.ndarray) -> None:
    """What a server without output checks answers, by plain Python for small batches and by
    torch otherwise: the float64 softmax (as float32 values) and the first maximal class; None
    exactly when that softmax is not finite (a NaN or +inf logit; a -inf logit is probability
    0, and finite logits whose sum overflows are answered too)."""
    x = torch.from_numpy(logits)
    got = answer(x)
    exact = torch.softmax(x.double(), dim=1)
    if not bool(torch.isfinite(exact).all()):
        assert got is None
        return
    assert got is not None
    probabilities, predictions = got
    np.testing.assert_allclose(np.array(probabilities), exact.numpy(), rtol=0, atol=3e-7)
    assert np.array_equal(np.array(probabilities, dtype=np.float64),
                          np.array(probabilities, dtype=np.float32))  # float32 values
    assert predictions == logits.argmax(axis=1).tolist()
    assert all(type(p) is int for p in predictions)


def test_small_batch_fast_path_answers_the_plain_case_and_defers_when_in_doubt() -> None:
    checker = OutputChecker(10)
    plain = torch.tensor([[8.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]])
    assert checker._small(plain, 1, 10) is not None
    tie = torch.tensor([[3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    nan = plain.clone()
    nan[0, 4] = math.nan
    at_threshold = torch.tensor([[0.0, -math.log(2.0)] + [-100.0] * 8])  # margin 1/3, conf 2/3
    for doubtful, reason in ((tie, "tie"), (nan, "NaN"), (at_threshold, "margin at 1/3")):
        judge = OutputChecker(10, min_margin=1 / 3)
        assert judge._small(doubtful, 1, 10) is None, reason
        assert judge.check(doubtful).num_samples == 1  # the tensor path still answers


@pytest.mark.parametrize(
    ("outputs", "problem"),
    [
        (torch.zeros(4), "shape \\(B, C\\)"),
        (torch.zeros(2, 3, 4), "shape \\(B, C\\)"),
        (torch.zeros(2, 5), "5 classes, expected 3"),
        (torch.zeros(2, 3, dtype=torch.bool), "real tensor"),
        ([[0.1, 0.9]], "real tensor"),
        (torch.eye(3)[:2].to_sparse(), "dense tensor, got sparse_coo"),
        (torch.empty(2, 3, device="meta"), "dense tensor, got meta"),
    ],
)
def test_batch_problems_are_reported_not_raised(outputs: object, problem: str) -> None:
    report = OutputChecker(3).check(outputs)  # type: ignore[arg-type]
    assert len(report.problems) == 1 and not report.ok
    assert re.search(problem, report.problems[0])
    assert report.predictions is None and report.counts == dict.fromkeys(report.counts, 0)
    json.dumps(report.to_dict())


def test_to_dict_is_json() -> None:
    report = OutputChecker(2).check(torch.tensor([[2.0, 0.0], [math.nan, 1.0]]))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["predictions"] == [0, -1] and data["flagged"]["non_finite"] == [1]
    assert data["confidence"][1] is None and data["counts"]["non_finite"] == 1


def test_checker_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="num_classes"):
        OutputChecker(1)
    with pytest.raises(ConfigurationError, match="min_confidence"):
        OutputChecker(min_confidence=1.5)
    with pytest.raises(ConfigurationError, match="expect"):
        OutputChecker(expect="scores")
    with pytest.raises(ConfigurationError, match="range"):
        OutputChecker(range=(1.0, 0.0))


@pytest.mark.parametrize("bad", [(0, 1, 2), 5, "ab", (True, 2.0), (0.0, "1"), [1.0]])
def test_a_malformed_range_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"range must be \(low, high\), two numbers"):
        OutputChecker(range=bad)  # type: ignore[arg-type]


def test_big_endian_outputs_are_checked_like_their_native_copy() -> None:
    native = np.array([[2.0, 0.1, -1.0], [np.nan, 0.0, 0.0], [0.3, 0.3, 0.31]], dtype=np.float32)
    checker = OutputChecker(3, range=(-1.5, 1.5))
    for big in (native.astype(">f4"), native.astype(">f8"), native[:1].astype(">f4")):
        assert not big.dtype.isnative
        report = checker.check(big)
        assert report.problems == ()
        expected = checker.check(big.astype(big.dtype.newbyteorder("=")))
        assert report.to_dict() == expected.to_dict()
    assert checker.check(native.astype(">f4")).to_dict()["flagged"]["out_of_range"] == [0]
