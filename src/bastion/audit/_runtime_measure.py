"""How the "Runtime guard" section measures the guard: probes for the input schema, shifted
streams, window draws and alarm rates (pure functions of the stages and data they are given)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bastion.audit._runtime_results import SIGMAS, ProbeResult
from bastion.audit.model_file import CheckStatus

__all__ = ["alarm_rate", "probes", "quiet", "run_probe", "shifts", "tolerance", "windows"]


def tolerance(rate: float, n_eval: int, n_cal: int) -> float:
    return rate + SIGMAS * math.sqrt(rate * (1 - rate) * (1 / n_eval + 1 / n_cal))


def windows(n: int, size: int, count: int, gen: torch.Generator) -> list[Tensor]:
    return [torch.randperm(n, generator=gen)[:size] for _ in range(count)]


def alarm_rate(monitor: Any, data: Tensor, windows: Sequence[Tensor]) -> float:
    statistics = monitor.score_windows(data, windows)
    return float((statistics > monitor.threshold).double().mean()) if len(windows) else 0.0


def probes(clean: Tensor) -> list[tuple[str, Tensor, bool]]:
    """``(name, batch, valid)``: held-out clean samples, then batches with one kind of fault."""
    one = clean[:8].clone()
    nan, inf, high, low = one.clone(), one.clone(), one.clone(), one.clone()
    nan[3, 0, 14, 14] = math.nan
    inf[0, 0, 0, 0] = math.inf
    high[5, 0, 10, 10] = 1.5
    low[1, 0, 20, 5] = -0.2
    return [
        ("held-out clean samples", clean, True),
        ("one NaN pixel", nan, False),
        ("one +inf pixel", inf, False),
        ("a pixel above the range (1.5)", high, False),
        ("a pixel below the range (-0.2)", low, False),
        ("wrong sample shape (1, 28, 27)", one[..., :27].contiguous(), False),
        ("missing channel dimension", one[:, 0].contiguous(), False),
        ("inverted images (1 - x)", 1.0 - one, False),
    ]


def quiet(guard: Any) -> Any:
    """The same guard with a logger that drops its records (the probes' refusals are expected)."""
    logger = logging.Logger("bastion.audit.probes")
    logger.addHandler(logging.NullHandler())
    return dataclasses.replace(guard, logger=logger)


def run_probe(guard: Any, name: str, x: Tensor, valid: bool) -> ProbeResult:
    policy = str(getattr(guard.policy, "value", guard.policy))
    result = guard.guard(x, raise_on_reject=False)
    report = result.report
    structural = any(v.rule.structural for v in report.violations)
    if valid:
        expected = "accept"
    else:
        expected = "reject" if structural else policy
    verdict = "reject" if result.rejected else (policy if result.actions else "accept")
    invalid = 1.0 if structural else len(report.invalid_samples) / max(len(x), 1)
    return ProbeResult(
        name=name, samples=int(x.shape[0]), expected=expected, verdict=verdict,
        invalid=invalid, rules=tuple(sorted(report.counts)),
        status=CheckStatus.PASS if verdict == expected else CheckStatus.FAIL,
    )


def shifts(pool: Tensor, ones: Tensor, gen: torch.Generator) -> list[tuple[str, str, Tensor]]:
    noise = (pool + 0.1 * torch.randn(pool.shape, generator=gen)).clamp(0.0, 1.0)
    return [
        ("inverted", "images inverted (1 - x)", 1.0 - pool),
        ("noise", "Gaussian noise, sigma 0.1, clipped to [0, 1]", noise),
        ("one_class", "only images the model predicts as 1 (a class-prior shift)", ones),
    ]
