"""Run several monitors over the same traffic: ``update(inputs, outputs)`` per batch.

Example:
    >>> import torch
    >>> from bastion.guard.monitors import Calibration, ClassDrift, KSDrift, MonitorSuite
    >>> g = torch.Generator().manual_seed(0)
    >>> x, logits = torch.randn(1000, 4, generator=g), torch.randn(1000, 3, generator=g)
    >>> cal = Calibration(window=50, n_windows=100)
    >>> suite = MonitorSuite([KSDrift(calibration=cal), ClassDrift(calibration=cal)])
    >>> suite = suite.fit(x, logits)
    >>> [r.evaluated for r in suite.update(x[:50], logits[:50])]
    [True, True]
    >>> sorted(suite.state()["monitors"])
    ['input_ks', 'prediction_classes']
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.monitors._base import Monitor, MonitorResult, Source

__all__ = ["MonitorSuite"]


class MonitorSuite:
    """A fixed set of monitors with unique names, each with its own bounded window.

    Input monitors see the inputs of each batch, output monitors the model's outputs. Memory is
    the sum of the monitors' fixed state; nothing grows with traffic.

    Args:
        monitors: the monitors (any iterable), each configured with its own window size and
            false-alarm rate.

    Raises:
        ConfigurationError: the list is empty, holds something that is not a monitor, or two
            monitors share a name.
    """

    def __init__(self, monitors: Iterable[Monitor]) -> None:
        if isinstance(monitors, (str, bytes, Monitor)) or not isinstance(monitors, Iterable):
            raise ConfigurationError(
                f"MonitorSuite takes a list of monitors, got {type(monitors).__name__}"
            )
        items = tuple(monitors)  # once: a generator can be read only once
        if not items:
            raise ConfigurationError("MonitorSuite needs at least one monitor")
        for i, m in enumerate(items):
            if not isinstance(m, Monitor):
                raise ConfigurationError(
                    f"MonitorSuite: item {i} is a {type(m).__name__}, not a monitor"
                )
        names = [m.name for m in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigurationError(f"monitor names must be unique; repeated: {dupes}")
        self.monitors: tuple[Monitor, ...] = items
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Monitor:
        for m in self.monitors:
            if m.name == name:
                return m
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.monitors)

    @property
    def needs_outputs(self) -> bool:
        """Whether any monitor watches the model's outputs."""
        return any(m.source is Source.OUTPUTS for m in self.monitors)

    def fit(self, inputs: Tensor, outputs: Tensor | None = None) -> MonitorSuite:
        """Fit every monitor on reference inputs (and the model's outputs on them)."""
        self._check_outputs(inputs, outputs)
        for m in self.monitors:
            m.fit(inputs if m.source is Source.INPUTS else outputs)  # type: ignore[arg-type]
        return self

    def update(self, inputs: Tensor, outputs: Tensor | None = None) -> tuple[MonitorResult, ...]:
        """Feed one batch to every monitor and return their results, in suite order."""
        self._check_outputs(inputs, outputs)
        with self._lock:
            return tuple(
                m.update(inputs if m.source is Source.INPUTS else outputs)  # type: ignore[arg-type]
                for m in self.monitors
            )

    def results(self) -> tuple[MonitorResult, ...]:
        """The last result of every monitor that has one."""
        return tuple(m.last_result for m in self.monitors if m.last_result is not None)

    def reset(self) -> None:
        """Empty every window; calibrations are kept."""
        with self._lock:
            for m in self.monitors:
                m.reset()

    def state(self) -> dict[str, Any]:
        """JSON state for ``GET /v1/monitor``: every monitor's calibration and last result."""
        with self._lock:
            monitors = {m.name: m.state() for m in self.monitors}
        alarms = sorted(
            name for name, s in monitors.items() if s["last"] is not None and s["last"]["alarm"]
        )
        return {"schema_version": 1, "monitors": monitors, "alarms": alarms}

    def _check_outputs(self, inputs: Tensor, outputs: Tensor | None) -> None:
        if outputs is None:
            if self.needs_outputs:
                names = [m.name for m in self.monitors if m.source is Source.OUTPUTS]
                raise ConfigurationError(f"monitors {names} watch model outputs; pass outputs")
            return
        n_in, n_out = _samples(inputs), _samples(outputs)
        if n_in is not None and n_out is not None and n_in != n_out:
            # the monitors would see two different batches as one: refuse before any is fed
            raise InputValidationError(
                f"inputs have {n_in} samples but outputs {n_out}; pass the model's outputs "
                "on these inputs"
            )


def _samples(x: object) -> int | None:
    """The number of samples of a batch (its first dimension), or None when it has none."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    return len(x) if isinstance(x, (list, tuple)) else None
