"""One harness for every monitor: quiet at the calibrated rate on clean streams, loud on shifts.

Each entry of MONITORS gives a monitor factory, a clean-data generator and a shifted-data
generator. Adding a monitor = one line in the list.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bastion.core.errors import ConfigurationError
from bastion.guard.monitors import (
    Calibration,
    ClassDrift,
    ConfidenceDrift,
    DetectorMonitor,
    KSDrift,
    MMDDrift,
    Monitor,
    PSIDrift,
    Uncertainty,
)

WINDOW = 100
RATE = 0.05
N_CLEAN = 200
D = 10
C = 5

Gen = Callable[[torch.Generator, int], torch.Tensor]


def gaussian(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, D, generator=g)


def mean_shift(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, D, generator=g) + 0.5


def scale_change(g: torch.Generator, n: int) -> torch.Tensor:
    return 1.5 * torch.randn(n, D, generator=g)


def _logits(g: torch.Generator, n: int, prior: torch.Tensor, sharpness: float) -> torch.Tensor:
    labels = torch.multinomial(prior, n, replacement=True, generator=g)
    return sharpness * torch.nn.functional.one_hot(labels, C).float() + torch.randn(
        n, C, generator=g
    )


UNIFORM = torch.full((C,), 1.0 / C)
SKEWED = torch.tensor([0.4, 0.15, 0.15, 0.15, 0.15])


def clean_logits(g: torch.Generator, n: int) -> torch.Tensor:
    return _logits(g, n, UNIFORM, 3.0)


def prior_shift(g: torch.Generator, n: int) -> torch.Tensor:
    return _logits(g, n, SKEWED, 3.0)


def less_confident(g: torch.Generator, n: int) -> torch.Tensor:
    return _logits(g, n, UNIFORM, 2.0)


def norm_score(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def cal() -> Calibration:
    return Calibration(window=WINDOW, false_alarm_rate=RATE, n_windows=200, test_every=WINDOW)


MONITORS: list[tuple[str, Callable[[], Monitor], Gen, Gen]] = [
    ("ks-mean", lambda: KSDrift(calibration=cal()), gaussian, mean_shift),
    ("ks-scale", lambda: KSDrift(calibration=cal()), gaussian, scale_change),
    ("psi", lambda: PSIDrift(calibration=cal()), gaussian, mean_shift),
    ("mmd-mean", lambda: MMDDrift(dim=4, calibration=cal()), gaussian, mean_shift),
    ("mmd-scale", lambda: MMDDrift(dim=4, calibration=cal()), gaussian, scale_change),
    ("classes", lambda: ClassDrift(calibration=cal()), clean_logits, prior_shift),
    ("confidence", lambda: ConfidenceDrift(calibration=cal()), clean_logits, less_confident),
    (
        "entropy",
        lambda: ConfidenceDrift(kind=Uncertainty.ENTROPY, calibration=cal()),
        clean_logits,
        less_confident,
    ),
    ("detector", lambda: DetectorMonitor(norm_score, calibration=cal()), gaussian, scale_change),
]
IDS = [m[0] for m in MONITORS]


def _tolerance(n: int, rate: float, n_cal: int) -> tuple[int, int]:
    """Two-sided 99.9% band for the alarm count, widened for the threshold's estimation noise.

    The threshold is an empirical quantile from ``n_cal`` windows, so the true clean alarm rate
    is itself random with sd ~ sqrt(rate (1 - rate) / n_cal).
    """
    sd_rate = math.sqrt(rate * (1 - rate) / n_cal)
    sd = math.sqrt(n * rate * (1 - rate) + (n * sd_rate) ** 2)
    z = stats.norm.isf(0.0005)
    return max(0, math.floor(n * rate - z * sd)), math.ceil(n * rate + z * sd)


@pytest.mark.parametrize(("name", "make", "clean", "shifted"), MONITORS, ids=IDS)
def test_clean_stream_alarms_at_the_calibrated_rate(
    name: str, make: Callable[[], Monitor], clean: Gen, shifted: Gen
) -> None:
    g = torch.Generator().manual_seed(1234)
    mon = make().fit(clean(g, 2000))
    results = [mon.update(clean(g, WINDOW)) for _ in range(N_CLEAN)]
    assert all(r.evaluated for r in results)
    alarms = sum(r.alarm for r in results)
    lo, hi = _tolerance(N_CLEAN, RATE, 200)
    assert lo <= alarms <= hi, f"{name}: {alarms} alarms in {N_CLEAN} clean windows"


@pytest.mark.parametrize(("name", "make", "clean", "shifted"), MONITORS, ids=IDS)
def test_shifted_stream_fires(
    name: str, make: Callable[[], Monitor], clean: Gen, shifted: Gen
) -> None:
    g = torch.Generator().manual_seed(99)
    mon = make().fit(clean(g, 2000))
    alarms = sum(mon.update(shifted(g, WINDOW)).alarm for _ in range(20))
    assert alarms >= 18, f"{name}: only {alarms} of 20 shifted windows alarmed"


@pytest.mark.parametrize(("name", "make", "clean", "shifted"), MONITORS, ids=IDS)
def test_window_memory_is_bounded(
    name: str, make: Callable[[], Monitor], clean: Gen, shifted: Gen
) -> None:
    g = torch.Generator().manual_seed(5)
    mon = make().fit(clean(g, 1000))
    assert mon._window is not None
    buffer = mon._window.buffer
    ptr, shape = buffer.data_ptr(), tuple(buffer.shape)
    assert shape[0] == WINDOW
    for size in (1, 7, 33, 250, 64):  # smaller and larger than the window
        mon.update(clean(g, size))
    assert mon._window.buffer.data_ptr() == ptr and tuple(mon._window.buffer.shape) == shape
    assert mon.samples_seen == 1 + 7 + 33 + 250 + 64
    last = clean(g, WINDOW + 10)
    mon.update(last)
    kept = torch.sort(mon._window.values(), dim=0).values
    assert torch.equal(kept, torch.sort(mon._features(last[-WINDOW:]), dim=0).values)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "make", "clean", "shifted"), MONITORS, ids=IDS)
def test_clean_alarm_rate_is_close_to_target_over_1000_windows(
    name: str, make: Callable[[], Monitor], clean: Gen, shifted: Gen
) -> None:
    g = torch.Generator().manual_seed(7)
    mon = make()
    mon.calibration = Calibration(window=WINDOW, n_windows=1000, test_every=WINDOW)
    mon.fit(clean(g, 4000))
    alarms = sum(mon.update(clean(g, WINDOW)).alarm for _ in range(1000))
    lo, hi = _tolerance(1000, RATE, 1000)
    assert lo <= alarms <= hi, f"{name}: {alarms} alarms in 1000 clean windows, band {lo}..{hi}"


SMALL_REFERENCE: list[tuple[str, Callable[[int], Monitor], Gen]] = [
    ("ks", lambda seed: KSDrift(calibration=_seeded(seed)), gaussian),
    ("psi", lambda seed: PSIDrift(calibration=_seeded(seed)), gaussian),
    ("confidence", lambda seed: ConfidenceDrift(calibration=_seeded(seed)), clean_logits),
    ("classes", lambda seed: ClassDrift(calibration=_seeded(seed)), clean_logits),
]


def _seeded(seed: int) -> Calibration:
    return Calibration(window=WINDOW, false_alarm_rate=RATE, n_windows=200, test_every=WINDOW,
                       seed=seed)


def test_small_reference_alarms_at_the_target_on_fresh_windows() -> None:
    """A reference of only 5 windows, fresh clean windows: on average over references (12 per
    monitor, 50 windows each) the alarm rate is the target.

    Regression: calibration used to fit on one fixed half of the reference and draw its windows
    from the other half. Windows drawn from a small pool vary less than fresh ones and all share
    that pool's one offset, so thresholds ran low: 194 alarms in 2,400 windows here (8.1%,
    against the 5% target; 22% on the demo model's confidence monitor). Re-splitting the
    reference for every calibration draw gives 114 (4.8%).
    """
    g = torch.Generator().manual_seed(31)
    alarms = windows = 0
    for _, make, clean in SMALL_REFERENCE:
        for seed in range(12):
            mon = make(seed).fit(clean(g, 5 * WINDOW))
            alarms += sum(mon.update(clean(g, WINDOW)).alarm for _ in range(50))
            windows += 50
    # 48 references: the rate's spread between references (sd ~0.05) dominates, se ~0.0075
    assert 0.03 <= alarms / windows <= 0.07, f"{alarms} alarms in {windows} fresh clean windows"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": "20"}, "window must be an integer >= 2, got '20'"),
        ({"window": 2.5}, "window must be an integer >= 2, got 2.5"),
        ({"window": True}, "window must be an integer >= 2, got True"),
        ({"false_alarm_rate": "0.05"}, r"false_alarm_rate must be a number in \(0, 1\)"),
        ({"false_alarm_rate": math.inf}, r"false_alarm_rate must be a number in \(0, 1\)"),
        ({"false_alarm_rate": 10**400}, r"false_alarm_rate must be a number in \(0, 1\)"),
        ({"n_windows": 40.5}, r"n_windows must be an integer in 1\.\.1000000, got 40\.5"),
        ({"n_windows": 10**400}, r"n_windows must be an integer in 1\.\.1000000"),
        ({"n_windows": 10}, "too few to estimate a 0.05 quantile"),
        ({"seed": "a"}, "seed must be an integer"),
        ({"seed": 2**64 - 1}, "seed must be an integer"),  # calibration seeds seed + 1
        ({"test_every": 2.5}, "test_every must be an integer >= 1, got 2.5"),
        ({"test_every": 0}, "test_every must be an integer >= 1, got 0"),
        ({"reference_fraction": math.nan}, r"reference_fraction must be a number in \(0, 1\)"),
        ({"reference_fraction": False}, r"reference_fraction must be a number in \(0, 1\)"),
    ],
)
def test_calibration_arguments_are_checked_at_construction(
    kwargs: dict[str, object], match: str
) -> None:
    """Each of these used to be a TypeError at construction, a TypeError or RuntimeError at
    fit, or (test_every=2.5) accepted."""
    with pytest.raises(ConfigurationError, match=match):
        Calibration(**kwargs)  # type: ignore[arg-type]


_ANY = st.one_of(
    st.integers(-3, 400), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 1.0), st.text(max_size=4), st.none(), st.booleans(),
)
_FIELDS = ("window", "false_alarm_rate", "n_windows", "reference_fraction", "seed", "test_every")


@settings(max_examples=300, deadline=None)
@given(kwargs=st.fixed_dictionaries({}, optional=dict.fromkeys(_FIELDS, _ANY)))
def test_calibration_is_valid_or_a_configuration_error(kwargs: dict[str, object]) -> None:
    """Whatever the arguments, a Calibration whose fields all work, or ConfigurationError."""
    try:
        cal = Calibration(**kwargs)  # type: ignore[arg-type]
    except ConfigurationError:
        return
    assert type(cal.window) is int and cal.window >= 2
    assert type(cal.false_alarm_rate) is float and 0.0 < cal.false_alarm_rate < 1.0
    assert type(cal.n_windows) is int and cal.n_windows * cal.false_alarm_rate >= 1.0
    assert cal.reference_fraction is None or 0.0 < cal.reference_fraction < 1.0
    assert type(cal.stride) is int and cal.stride >= 1
    torch.Generator().manual_seed(cal.seed + 1)  # what the calibration draws seed
    if cal.window < 1000:
        stats_idx, held = cal.split(2 * cal.window)
        assert stats_idx.numel() + held.numel() == 2 * cal.window
