"""How a monitor's window is sized and its alarm threshold calibrated.

Each calibration draw splits the reference afresh. Why not one fixed split with windows drawn
from its held-out part (what bastion did before)? Windows drawn without replacement from one
held-out pool vary less than fresh windows do (a window of 200 out of a pool of 500 shares 40%
of the pool; the pool's variance shrinks by the finite-population factor ``1 - 200/500``), and
all of them share the one offset between that pool and the statistics part, so the threshold
rested on a single draw of luck. On the demo's confidence monitor the fixed split put the
threshold at ``p = 0.31`` instead of about 0.05, and a model retrained with other float
rounding alarmed on 22% of clean windows against a 5% target. Two disjoint random samples of
one pool differ exactly as two samples from the population do (the finite-population terms
cancel), so re-splitting gives the null of "a reference of this size against a fresh window" -
what production sees.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from bastion.core.errors import ConfigurationError
from bastion.guard.monitors._checks import SEED_RANGE, check_fraction, check_int

__all__ = ["Calibration"]

_MAX_WINDOWS = 1_000_000  # calibration draws: each is one test, so more would take hours


@dataclasses.dataclass(frozen=True, kw_only=True)
class Calibration:
    """How a monitor's window is sized and its alarm threshold calibrated.

    Attributes:
        window: samples per tested window (the ring buffer size); the null distribution is
            simulated for exactly this size.
        false_alarm_rate: target probability that a window of clean data raises an alarm.
        n_windows: calibration draws that estimate the threshold (its ``1 - rate`` quantile);
            each re-splits the reference into a pseudo-reference and a disjoint window.
        reference_fraction: share of the reference the monitor keeps its statistics on;
            calibration pseudo-references have the same size, so the reference must hold at
            least ``window`` samples beyond it. None (default): all but one window's worth -
            the largest reference the calibration can mirror, and the one whose own sampling
            error (which no calibration can see) is smallest.
        seed: seeds the split and the calibration draws, so calibration is reproducible.
        test_every: the window is re-tested once this many new samples have arrived (a test
            costs the same for one new sample as for a full window); None means
            ``max(1, window // 10)``. Updates in between return the last verdict with
            ``evaluated=False``.
    """

    window: int = 200
    false_alarm_rate: float = 0.05
    n_windows: int = 200
    reference_fraction: float | None = None
    seed: int = 0
    test_every: int | None = None

    @property
    def stride(self) -> int:
        """Samples between two tests of the window."""
        return max(1, self.window // 10) if self.test_every is None else self.test_every

    def __post_init__(self) -> None:
        """Refuse what would fail or mislead later (at fit or on the first update).

        Integers must be integers (a bool is not one), rates and fractions finite numbers in
        ``(0, 1)``; numpy scalars are kept as the builtin numbers they stand for.
        """
        put = object.__setattr__  # frozen: normalise the fields once, here
        put(self, "window", check_int(self.window, "window", low=2))
        put(self, "false_alarm_rate", check_fraction(self.false_alarm_rate, "false_alarm_rate"))
        put(self, "n_windows", check_int(self.n_windows, "n_windows", low=1, high=_MAX_WINDOWS))
        if self.n_windows * self.false_alarm_rate < 1.0:
            raise ConfigurationError(
                f"n_windows={self.n_windows} is too few to estimate a {self.false_alarm_rate} "
                f"quantile; use at least {math.ceil(1 / self.false_alarm_rate)}"
            )
        if self.reference_fraction is not None:
            put(self, "reference_fraction",
                check_fraction(self.reference_fraction, "reference_fraction"))
        put(self, "seed", check_int(self.seed, "seed", low=SEED_RANGE[0], high=SEED_RANGE[1]))
        if self.test_every is not None:
            put(self, "test_every", check_int(self.test_every, "test_every", low=1))

    def split(self, n: int) -> tuple[Tensor, Tensor]:
        """Indices of the reference part used for statistics and of the held-out part.

        Seeded by ``seed``; :meth:`Monitor.fit` uses exactly this split.
        """
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        if self.reference_fraction is None:
            n_stats = n - self.window
        else:
            n_stats = int(round(n * self.reference_fraction))
        n_stats = min(max(n_stats, 0), n)
        return perm[:n_stats], perm[n_stats:]
