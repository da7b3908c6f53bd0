"""The monitor shape (DESIGN.md's detector contract), its calibration and its bounded window.

A monitor is fitted on reference data, then fed batch by batch. It keeps fixed-size state: the
reference statistics its test needs and a ring buffer of the last ``window`` per-sample features.
Its alarm threshold is calibrated to a false-alarm rate on the reference itself. Each of
``n_windows`` calibration draws splits the reference afresh: a pseudo-reference of the size the
monitor keeps its statistics on, and a disjoint window of the production window size; the test
statistic of that window against statistics fitted on that pseudo-reference is one draw of the
null distribution (a monitor may hold fixed what production holds fixed: PSI's bin edges,
MMD's kernel bandwidth). Two-sample tests on large samples flag differences nobody cares about
(evidently#50, alibi-detect#646); calibrating on windows of the size actually tested avoids
trusting ``p < 0.05`` raw (:mod:`bastion.guard.monitors.calibration` says why a fresh split
per draw).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from bastion.core.checks import all_finite
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.results import Result
from bastion.guard.monitors._checks import check_reference, check_windows
from bastion.guard.monitors._window import _Window
from bastion.guard.monitors.calibration import Calibration

__all__ = ["Monitor", "MonitorResult", "Source", "WindowStatistic"]

M = TypeVar("M", bound="Monitor")


class Source(enum.Enum):
    """What a monitor watches: the model's inputs or its outputs (logits or probabilities)."""

    INPUTS = "inputs"
    OUTPUTS = "outputs"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorResult(Result):
    """One monitor's verdict on its current window.

    Attributes:
        name: the monitor's name (unique within a suite).
        statistic: the window's test statistic (higher = more suspicious); NaN until ready.
        threshold: the calibrated alarm threshold on ``statistic``.
        p_value: the test's p-value where it has one (corrected for multiple tests), else None.
        alarm: ``statistic > threshold`` on the last tested full window.
        evaluated: whether this update tested the window (False before the window is full and
            between tests, see ``Calibration.test_every``); alert rules count only these.
        samples_seen: samples fed since fitting (or the last reset).
        detail: test-specific extras (JSON values).
    """

    name: str
    statistic: float
    threshold: float
    p_value: float | None
    alarm: bool
    evaluated: bool
    samples_seen: int
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowStatistic(Result):
    """A test statistic of one window (what the functional forms return).

    Attributes:
        statistic: higher = more suspicious.
        p_value: the test's p-value where it has one, else None.
        detail: test-specific extras (JSON values).
    """

    statistic: float
    p_value: float | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


def _as_batch(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputValidationError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise InputValidationError(f"{what} must be a non-empty batch, got shape {tuple(x.shape)}")
    return x


class Monitor(abc.ABC):
    """Base of every monitor: ``fit`` / ``score`` / ``threshold`` / ``update``.

    Subclasses implement three hooks: ``_features`` (raw batch to per-sample feature rows),
    ``_fit_reference`` (store the statistics of the reference part) and ``_test`` (statistic of a
    window of feature rows). The base owns calibration, the window and the result.

    A monitor whose test is a sum over the window's rows may also keep that sum as rows enter and
    leave (``_tracks_window``, ``_window_changed``, ``_window_cleared``, ``_test_own_window``):
    the streaming test then reads it instead of recomputing it; ``_test`` stays the reference
    for calibration and ``score`` (PSI's bin counts and MMD's kernel sums do this).
    """

    source: Source = Source.INPUTS
    default_name = "monitor"

    def __init__(self, *, name: str | None = None, calibration: Calibration | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise ConfigurationError(
                f"name must be a string or None, got {name!r} ({type(name).__name__})"
            )
        if calibration is not None and not isinstance(calibration, Calibration):
            raise ConfigurationError(
                "calibration must be a Calibration (e.g. Calibration(window=200)) or None, got "
                f"{type(calibration).__name__}"
            )
        self.name = name or self.default_name
        self.calibration = calibration or Calibration()
        self._alarm_threshold = math.nan
        self._window: _Window | None = None
        self._width = 0
        self._lock = threading.Lock()
        self.samples_seen = 0
        self._pending = 0
        self.last_result: MonitorResult | None = None

    # -- hooks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _features(self, x: Tensor) -> Tensor:
        """Map a raw batch to ``(B, k)`` per-sample feature rows."""

    @abc.abstractmethod
    def _fit_reference(self, features: Tensor) -> None:
        """Store what ``_test`` needs from the reference part."""

    @abc.abstractmethod
    def _test(self, window: Tensor) -> WindowStatistic:
        """Test statistic (higher = more suspicious) of a window of feature rows."""

    # optional hooks: a monitor that keeps running sums of its window (PSIDrift's bin counts)
    # updates them as rows enter and leave, and tests the window from them
    _tracks_window = False
    _needs_leaving = False  # pass the rows a push overwrites (a copy) to _window_changed
    _min_window = 1  # fewest samples the test is defined on (the unbiased MMD needs 2)

    def _window_changed(  # noqa: B027 - optional hook, nothing to do by default
        self, entering: Tensor, leaving: Tensor | None, slots: Tensor
    ) -> None:
        """Rows entered the window at positions ``slots`` of its buffer and others left it
        (those rows when ``_needs_leaving``, else None); ``_tracks_window`` only, after the
        push."""

    def _window_cleared(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """The window was emptied (fit, reset)."""

    def _test_own_window(self) -> WindowStatistic:
        """:meth:`_test` of the monitor's current window; may use running sums."""
        assert self._window is not None
        return self._test(self._window.values())

    # -- contract ------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The calibrated alarm threshold on the window statistic (NaN before ``fit``)."""
        return self._alarm_threshold

    @property
    def fitted(self) -> bool:
        return self._window is not None

    def fit(self: M, reference: Tensor) -> M:
        """Fit reference statistics and calibrate the threshold; returns ``self``.

        A refit replaces the reference: it may have another number of features (later batches
        must then match the new one); a refused refit leaves the monitor as it was.

        Raises:
            InputValidationError: the reference is not a finite batch with at least one feature,
                large enough to split.
        """
        cal = self.calibration
        reference = check_reference(reference, self.name)
        feats = self._checked_features(reference, "reference", any_width=True)
        n = feats.shape[0]
        stats_idx, held_idx = cal.split(n)
        n_stats = stats_idx.numel()
        # by default the statistics part must be at least a window (twice the window in all):
        # a smaller reference would make the statistic mostly the reference's own noise
        least = 2 if cal.reference_fraction is not None else max(2, cal.window)
        if n_stats < least or held_idx.numel() < cal.window:
            raise InputValidationError(
                f"{self.name}: a reference of {n} samples is too small; it needs {least} samples "
                f"for statistics and {cal.window} (one window) beyond them, got {n_stats} and "
                f"{n - n_stats}; give more reference data or a smaller window"
            )
        stats_part = feats[stats_idx.to(feats.device)]
        self._fit_reference(stats_part)  # first on the kept part: settles what it infers once
        null = torch.nan_to_num(self._null_statistics(feats, n_stats), nan=-math.inf)
        self._fit_reference(stats_part)  # the statistics the monitor keeps
        self._alarm_threshold = float(
            torch.quantile(null, 1.0 - cal.false_alarm_rate, interpolation="higher")
        )
        self._width = feats.shape[1]
        self._window = _Window(cal.window, self._width, feats.dtype, feats.device)
        self._window_cleared()
        self.samples_seen = self._pending = 0
        self.last_result = None
        return self

    def score(self, x: Tensor) -> Tensor:
        """The test statistic of ``x`` as one window (0-d tensor; higher = more suspicious)."""
        self._require_fit()
        feats = self._checked_features(_as_batch(x, "x"), "x")
        if feats.shape[0] < self._min_window:
            raise InputValidationError(
                f"{self.name}: x has only {feats.shape[0]} sample(s); a window of this test "
                f"needs at least {self._min_window}"
            )
        return torch.tensor(self._test(feats).statistic, dtype=torch.float64)

    def score_windows(self, x: Tensor, windows: Sequence[Tensor]) -> Tensor:
        """The test statistic of each window of ``x`` (index tensors into its samples).

        Features are computed once for the whole of ``x``, so scoring many windows of one pool
        (an audit's false-alarm measurement) costs one feature pass plus one test per window.
        A window alarms where its statistic exceeds :attr:`threshold`.

        Returns:
            ``(len(windows),)`` float64 statistics.

        Raises:
            InputValidationError: a window is not a 1-D integer index tensor of at least the
                test's minimum size (one sample, two for MMD) with every index in
                ``0..len(x) - 1``.
        """
        self._require_fit()
        feats = self._checked_features(_as_batch(x, "x"), "x")
        check_windows(windows, feats.shape[0], self._min_window, self.name)
        return self._window_statistics(feats, windows)

    def _null_statistics(self, feats: Tensor, n_stats: int) -> Tensor:
        """``n_windows`` draws of the window statistic on clean data (see the module docstring).

        Each draw fits the reference statistics on ``n_stats`` random samples of ``feats`` and
        tests a disjoint random window of the production size against them.
        """
        cal = self.calibration
        gen = torch.Generator().manual_seed(cal.seed + 1)
        out = torch.empty(cal.n_windows, dtype=torch.float64)
        for i in range(cal.n_windows):
            perm = torch.randperm(feats.shape[0], generator=gen).to(feats.device)
            self._fit_reference(feats[perm[:n_stats]])
            out[i] = self._test(feats[perm[n_stats : n_stats + cal.window]]).statistic
        return out

    def _window_statistics(self, feats: Tensor, windows: Sequence[Tensor]) -> Tensor:
        return torch.tensor(
            [self._test(feats[idx.to(feats.device, torch.long)]).statistic for idx in windows],
            dtype=torch.float64,
        )

    def update(self, batch: Tensor) -> MonitorResult:
        """Push a batch into the window and test the window; thread-safe."""
        self._require_fit()
        feats = self._checked_features(_as_batch(batch, "batch"), "batch")
        with self._lock:
            assert self._window is not None
            if self._tracks_window:
                entering = feats[-self.calibration.window :]
                leaving = (self._window.evicted_by(entering.shape[0])
                           if self._needs_leaving else None)
                slots = (torch.arange(entering.shape[0], device=feats.device)
                         + self._window.pos) % self.calibration.window
                self._window.push(entering)
                self._window_changed(entering, leaving, slots)
            else:
                self._window.push(feats)
            self.samples_seen += feats.shape[0]
            self._pending += feats.shape[0]
            fill = {"window_fill": self._window.count}
            if self._window.full and self._pending >= self.calibration.stride:
                self._pending = 0
                test = self._test_own_window()
                result = MonitorResult(
                    name=self.name,
                    statistic=test.statistic,
                    threshold=self._alarm_threshold,
                    p_value=test.p_value,
                    alarm=bool(test.statistic > self._alarm_threshold),
                    evaluated=True,
                    samples_seen=self.samples_seen,
                    detail={**test.detail, **fill},
                )
            elif self.last_result is not None:
                result = dataclasses.replace(
                    self.last_result, evaluated=False, samples_seen=self.samples_seen
                )
            else:
                result = MonitorResult(
                    name=self.name,
                    statistic=math.nan,
                    threshold=self._alarm_threshold,
                    p_value=None,
                    alarm=False,
                    evaluated=False,
                    samples_seen=self.samples_seen,
                    detail=fill,
                )
            self.last_result = result
            return result

    def reset(self) -> None:
        """Empty the window (after a deliberate change of traffic); keeps the calibration."""
        with self._lock:
            if self._window is not None:
                self._window.pos = self._window.count = 0
                self._window_cleared()
            self.samples_seen = self._pending = 0
            self.last_result = None

    def state(self) -> dict[str, Any]:
        """JSON summary: configuration, calibration and the last result."""
        last = self.last_result
        return {
            "name": self.name,
            "kind": type(self).__name__,
            "source": self.source.value,
            "threshold": None if math.isnan(self.threshold) else self.threshold,
            "window": self.calibration.window,
            "false_alarm_rate": self.calibration.false_alarm_rate,
            "samples_seen": self.samples_seen,
            "last": None if last is None else last.to_dict(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, window={self.calibration.window})"

    # -- helpers -------------------------------------------------------------------------------
    def _require_fit(self) -> None:
        if self._window is None:
            raise ConfigurationError(f"{self.name}: call fit(reference) before score or update")

    def _checked_features(self, x: Tensor, what: str, *, any_width: bool = False) -> Tensor:
        """``_features(x)``, refused when not finite or (unless ``any_width``: a reference
        being fitted) not as wide as the reference's."""
        feats = self._features(x)
        if not all_finite(feats):
            bad = int((~torch.isfinite(feats)).any(dim=1).nonzero()[0])
            raise InputValidationError(
                f"{self.name}: {what} has non-finite values (first at sample {bad}); validate "
                "inputs before monitoring them",
                sample_index=bad,
            )
        if not any_width and self._window is not None and feats.shape[1] != self._width:
            raise InputValidationError(
                f"{self.name}: {what} has {feats.shape[1]} features per sample, the reference "
                f"had {self._width}"
            )
        return feats
