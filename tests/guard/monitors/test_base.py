"""The base contract on hostile input, for every monitor: refits, empty references, windows."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.monitors import (
    Calibration,
    ClassDrift,
    ConfidenceDrift,
    DetectorMonitor,
    KSDrift,
    MMDDrift,
    Monitor,
    PSIDrift,
)

CAL = Calibration(window=30, n_windows=20, test_every=30)

Data = Callable[[torch.Generator, int, int], torch.Tensor]


def inputs(g: torch.Generator, n: int, width: int) -> torch.Tensor:
    return torch.randn(n, width, generator=g)


def logits(g: torch.Generator, n: int, width: int) -> torch.Tensor:
    return 2.0 * torch.randn(n, width, generator=g)


def norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


KINDS: list[tuple[str, Callable[..., Monitor], Data]] = [
    ("ks", KSDrift, inputs),
    ("psi", PSIDrift, inputs),
    ("mmd", functools.partial(MMDDrift, dim=3), inputs),
    ("classes", ClassDrift, logits),
    ("confidence", ConfidenceDrift, logits),
    ("detector", functools.partial(DetectorMonitor, norm), inputs),
]
IDS = [k[0] for k in KINDS]
# monitors whose features depend on the input width (the others reduce a sample to a scalar)
WIDTH_BOUND = {"ks", "psi", "mmd", "classes"}


def _same(a: Any, b: Any) -> bool:
    return bool(torch.equal(a, b)) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
def test_refit_replaces_the_reference_whatever_its_width(
    kind: str, make: Callable[..., Monitor], data: Data
) -> None:
    """A refit on another width is a new reference: the monitor then equals one fitted only
    on it, and batches of the old width are refused naming the new one."""
    g = torch.Generator().manual_seed(0)
    old, new, window = data(g, 200, 4), data(g, 200, 6), data(g, 30, 6)
    mon = make(calibration=CAL).fit(old).fit(new)
    fresh = make(calibration=CAL).fit(new)
    assert mon.threshold == fresh.threshold
    assert _same(mon.score(window), fresh.score(window))
    assert mon.update(window).statistic == fresh.update(window).statistic
    if kind in WIDTH_BOUND:
        with pytest.raises(InputValidationError, match="reference had 6"):
            mon.update(data(g, 30, 4))


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
def test_a_refused_refit_leaves_the_monitor_as_it_was(
    kind: str, make: Callable[..., Monitor], data: Data
) -> None:
    g = torch.Generator().manual_seed(1)
    old = data(g, 200, 4)
    mon, twin = make(calibration=CAL).fit(old), make(calibration=CAL).fit(old)
    with pytest.raises(InputValidationError, match="too small"):
        mon.fit(data(g, 40, 6))  # another width, and too few samples to calibrate on
    stream = data(g, 60, 4)
    assert mon.threshold == twin.threshold
    assert mon.update(stream).statistic == twin.update(stream).statistic


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((0, 4), "non-empty batch"),
        ((), "non-empty batch"),
        ((200, 0), "no features per sample"),
        ((200, 3, 0), "no features per sample"),
        ((1, 4), "too small"),
    ],
)
def test_fit_refuses_no_samples_no_features_or_too_few_samples(
    kind: str, make: Callable[..., Monitor], data: Data, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(InputValidationError, match=match):
        make(calibration=CAL).fit(torch.zeros(shape))


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
@pytest.mark.parametrize(
    ("window", "match"),
    [
        (torch.tensor([0, 1000]), r"window 1 has index 1000, outside 0\.\.199"),
        (torch.tensor([0, -1]), r"index -1, outside 0\.\.199"),
        (torch.tensor([], dtype=torch.long), r"0 sample\(s\)"),
        (torch.tensor([0.0, 1.0]), "1-D integer tensor"),
        (torch.tensor([[0, 1]]), "1-D integer tensor"),
        (torch.tensor([True, False]), "1-D integer tensor"),
        ([0, 1], "1-D integer tensor"),
    ],
)
def test_score_windows_refuses_bad_windows(
    kind: str, make: Callable[..., Monitor], data: Data, window: Any, match: str
) -> None:
    g = torch.Generator().manual_seed(2)
    mon = make(calibration=CAL).fit(data(g, 200, 4))
    x = data(g, 200, 4)
    good = torch.arange(30)
    with pytest.raises(InputValidationError, match=match):
        mon.score_windows(x, [good, window] if "window 1" in match else [window])


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
def test_a_window_of_one_sample_is_scored_or_refused_by_what_the_test_needs(
    kind: str, make: Callable[..., Monitor], data: Data
) -> None:
    """One sample is a window for every test but the unbiased MMD (distinct pairs)."""
    g = torch.Generator().manual_seed(3)
    mon = make(calibration=CAL).fit(data(g, 200, 4))
    x = data(g, 10, 4)
    if kind == "mmd":
        for call in (lambda: mon.score(x[:1]),
                     lambda: mon.score_windows(x, [torch.tensor([3])])):
            with pytest.raises(InputValidationError, match="needs at least 2"):
                call()
        assert torch.isfinite(mon.score_windows(x, [torch.tensor([3, 5])])).all()
    else:
        assert torch.isfinite(mon.score(x[:1])).all()
        assert torch.isfinite(mon.score_windows(x, [torch.tensor([3])])).all()


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": 5}, "name must be a string or None, got 5"),
        ({"calibration": {"window": 20}}, "calibration must be a Calibration .* got dict"),
    ],
)
def test_every_monitor_checks_name_and_calibration_at_construction(
    kind: str, make: Callable[..., Monitor], data: Data, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make(**kwargs)


@pytest.mark.parametrize(("kind", "make", "data"), KINDS, ids=IDS)
def test_windows_of_any_integer_dtype_index_the_same_samples(
    kind: str, make: Callable[..., Monitor], data: Data
) -> None:
    """A uint8 index tensor is not read as a mask, an int16 one is not refused by torch."""
    g = torch.Generator().manual_seed(4)
    mon = make(calibration=CAL).fit(data(g, 200, 4))
    x = data(g, 200, 4)
    idx = torch.randperm(200, generator=g)[:30]
    expected = mon.score_windows(x, [idx])
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(mon.score_windows(x, [idx.to(dtype)]), expected)
