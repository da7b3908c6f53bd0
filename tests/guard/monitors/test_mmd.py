"""MMDDrift on hostile input: traffic of another float dtype, bad arguments, refits."""

from __future__ import annotations

import math

import pytest
import torch

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.monitors import Calibration, MMDDrift

CAL = Calibration(window=50, n_windows=20, test_every=10)


def _statistics(mon: MMDDrift, stream: torch.Tensor) -> list[float]:
    return [mon.update(stream[i : i + 25]).statistic for i in range(0, stream.shape[0], 25)]


def test_float32_and_float64_traffic_give_the_same_statistics() -> None:
    """Traffic is converted to the fitted dtype: float64 batches on a float32 fit score exactly
    as their float32 values, float32 on a float64 fit exactly as their float64 values, and a
    float32 fit agrees with a float64 fit to float32 precision (it used to raise on matmul)."""
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(400, 6, generator=g, dtype=torch.float64)
    stream = torch.randn(300, 6, generator=g, dtype=torch.float64) + 0.3
    runs = {}
    for fit in (torch.float32, torch.float64):
        for traffic in (torch.float32, torch.float64):
            mon = MMDDrift(dim=4, calibration=CAL).fit(ref.to(fit))
            runs[fit, traffic] = (mon.threshold, _statistics(mon, stream.to(traffic)))
    assert runs[torch.float32, torch.float64] == runs[torch.float32, torch.float32]
    f32_values = stream.float().double()  # the float64 traffic that float32 traffic stands for
    mon = MMDDrift(dim=4, calibration=CAL).fit(ref)
    assert runs[torch.float64, torch.float32] == (mon.threshold, _statistics(mon, f32_values))
    (t32, s32), (t64, s64) = runs[torch.float32, torch.float32], runs[torch.float64, torch.float64]
    assert t32 == pytest.approx(t64, rel=1e-4, abs=1e-6)
    tested = [(a, b) for a, b in zip(s32, s64, strict=True) if not math.isnan(b)]
    assert len(tested) >= 8 and all(a == pytest.approx(b, rel=1e-4, abs=1e-6) for a, b in tested)


def test_a_batch_of_another_width_is_refused_naming_the_input_width() -> None:
    """The message counts input features (4), not projected dimensions (8); a batch whose
    width happens to equal the projected width is refused too, not pushed unprojected."""
    g = torch.Generator().manual_seed(1)
    mon = MMDDrift(dim=8, calibration=CAL).fit(torch.randn(300, 4, generator=g))
    for width in (3, 8):
        with pytest.raises(InputValidationError, match=f"got {width} features per sample, "
                                                        "the reference had 4"):
            mon.update(torch.randn(20, width, generator=g))
    assert mon.samples_seen == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, r"dim must be an integer in 1\.\.4096, got 0"),
        ({"dim": 2.5}, r"dim must be an integer in 1\.\.4096, got 2\.5"),
        ({"dim": 10**9}, r"dim must be an integer in 1\.\.4096"),
        ({"dim": True}, "dim must be an integer"),
        ({"max_reference": 1}, "max_reference must be an integer >= 2, got 1"),
        ({"max_reference": "5"}, "max_reference must be an integer >= 2, got '5'"),
        ({"seed": "a"}, "seed must be an integer"),
        ({"seed": 2**64}, "seed must be an integer"),
        ({"seed": 1.0}, "seed must be an integer"),
    ],
)
def test_mmd_numbers_are_checked_at_construction(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MMDDrift(**kwargs)  # type: ignore[arg-type]
