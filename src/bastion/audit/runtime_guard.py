"""The audit's "Runtime guard" section: what ``bastion serve`` would put around the model, run.

For the demo, the section builds the guard exactly as ``bastion serve --model demo`` does
(:func:`bastion.serve.build.guard_stages`, the default alert rules) and measures it:

- the input schema (dtype, named shape, range, finiteness, feature statistics) and the verdict
  of its policy on probes: held-out clean samples must pass; NaN, infinities, values outside the
  range, a wrong shape and inputs unlike the training data must be refused;
- each monitor's calibration (window, test stride, target false-alarm rate, threshold) and its
  *measured* false-alarm rate on windows of held-out clean data (the MNIST 5k train split; the
  monitors were calibrated on the test split), with a binomial tolerance;
- for shifted streams (inverted images, Gaussian noise, a single class), the share the schema
  refuses, the share of windows each monitor alarms on, and the share flagged low-confidence;
- the output checks and the alert rules the server would apply, and advice.

Every number is computed by running the stages; nothing is copied from documentation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bastion.audit.model_file import Check, CheckStatus
from bastion.core.results import Result

__all__ = [
    "MonitorAudit",
    "ProbeResult",
    "RuntimeGuardSection",
    "ShiftResult",
    "runtime_guard_section",
]

_FIRES = 0.5  # a monitor "fires" on a shift when at least this share of its windows alarm
_SIGMAS = 3.0  # tolerance of the measured false-alarm rate, in binomial standard deviations


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeResult(Result):
    """One input sent through the input guard, and whether the guard did what it should.

    Attributes:
        name: what the probe is.
        samples: how many samples it holds.
        expected: what the guard should do: ``accept``, or the policy's action on invalid
            values (``reject``, ``repair``, ``substitute``); a wrong dtype, rank or shape is
            always ``reject``.
        verdict: what it did (same words).
        invalid: share of the samples that break the schema (1.0 for a batch-level problem).
        rules: the rules that fired.
        status: pass when the verdict is the expected one.
    """

    name: str
    samples: int
    expected: str
    verdict: str
    invalid: float
    rules: tuple[str, ...]
    status: CheckStatus


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorAudit(Result):
    """One monitor: its calibration and what it did on held-out clean and shifted data.

    Attributes:
        name: the monitor's name (as in ``/v1/monitor`` and the alert metrics).
        kind: its class (``MMDDrift``, ...).
        watches: ``inputs`` or ``outputs``.
        window: samples per tested window.
        test_every: samples between two tests of the window.
        target_false_alarm_rate: the rate it was calibrated to, per tested window.
        threshold: the calibrated alarm threshold on its statistic.
        measured_false_alarm_rate: share of held-out clean windows that alarmed.
        tolerance: the largest measured rate consistent with the target (binomial, 3 sigma over
            both the calibration and the measurement windows).
        windows: held-out clean windows measured.
        detection: per shift, the share of shifted windows that alarmed.
    """

    name: str
    kind: str
    watches: str
    window: int
    test_every: int
    target_false_alarm_rate: float
    threshold: float
    measured_false_alarm_rate: float
    tolerance: float
    windows: int
    detection: dict[str, float]

    @property
    def calibrated(self) -> bool:
        """The measured false-alarm rate is within the tolerance of the target."""
        return self.measured_false_alarm_rate <= self.tolerance


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShiftResult(Result):
    """A shifted stream and which stage of the guard catches it.

    Attributes:
        name: short name (``inverted``, ``noise``, ``one_class``).
        description: what was done to the clean data.
        samples: shifted samples in the pool windows were drawn from.
        schema_rejected: share of the samples the input schema refuses.
        monitors_fired: monitors alarming on at least half of the shifted windows.
        low_confidence: share of the samples the output checks flag as low confidence.
    """

    name: str
    description: str
    samples: int
    schema_rejected: float
    monitors_fired: tuple[str, ...]
    low_confidence: float

    @property
    def caught(self) -> bool:
        """The schema refuses most of it, or at least one monitor fires."""
        return self.schema_rejected >= _FIRES or bool(self.monitors_fired)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeGuardSection(Result):
    """The audit's "Runtime guard" section (same shape as the other sections).

    Attributes:
        title: the section's title.
        model: what was guarded.
        policy: the invalid-data policy (``reject`` by default, as the server).
        schema: the input schema as :meth:`TensorSchema.to_dict` writes it (a ``--schema`` file
            can be made from it).
        clean_rejected: share of held-out clean samples (the test split) the schema refuses.
        probes: inputs sent through the guard, with the verdicts.
        monitors: each monitor's calibration and measurements.
        shifts: each shifted stream, and what caught it.
        output_checks: the output checker's settings and its flag rates on held-out clean data.
        alert_rules: the rules the server uses without ``--alerts``.
        checks: the section's checks (what decides its status).
        advice: what to do.
        seconds: how long the section took.
        files: none (kept for the shape shared with the other sections).
    """

    title: str = "Runtime guard"
    model: str
    policy: str
    schema: dict[str, Any]
    clean_rejected: float
    probes: tuple[ProbeResult, ...]
    monitors: tuple[MonitorAudit, ...]
    shifts: tuple[ShiftResult, ...]
    output_checks: dict[str, Any]
    alert_rules: tuple[dict[str, Any], ...]
    checks: tuple[Check, ...]
    advice: tuple[str, ...] = ()
    seconds: float = 0.0
    files: tuple[Any, ...] = ()

    @property
    def status(self) -> CheckStatus:
        return CheckStatus.worst([c.status for c in self.checks])

    def summary_lines(self) -> list[str]:
        """A few lines of plain text for the CLI."""
        lines = [f"  schema {self.schema['dtype']} {self.schema['shape']} in "
                 f"[{self.schema['min']}, {self.schema['max']}]; clean refused "
                 f"{self.clean_rejected:.1%}; policy {self.policy}"]
        for m in self.monitors:
            caught = [k for k, v in m.detection.items() if v >= _FIRES]
            lines.append(
                f"  {m.name:<22} false alarms {m.measured_false_alarm_rate:6.1%} (target "
                f"{m.target_false_alarm_rate:.0%}); fires on {', '.join(caught) or 'nothing'}"
            )
        lines.extend(f"    {c.name:<28} {c.status.value:<7} {c.detail}" for c in self.checks)
        return lines

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["status"] = self.status.value
        out["kind"] = "runtime_guard"
        return out


def _tolerance(rate: float, n_eval: int, n_cal: int) -> float:
    return rate + _SIGMAS * math.sqrt(rate * (1 - rate) * (1 / n_eval + 1 / n_cal))


def _windows(n: int, size: int, count: int, gen: torch.Generator) -> list[Tensor]:
    return [torch.randperm(n, generator=gen)[:size] for _ in range(count)]


def _alarm_rate(monitor: Any, data: Tensor, windows: Sequence[Tensor]) -> float:
    statistics = monitor.score_windows(data, windows)
    return float((statistics > monitor.threshold).double().mean()) if len(windows) else 0.0


def _probes(clean: Tensor) -> list[tuple[str, Tensor, bool]]:
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


def _quiet(guard: Any) -> Any:
    """The same guard with a logger that drops its records (the probes' refusals are expected)."""
    logger = logging.Logger("bastion.audit.probes")
    logger.addHandler(logging.NullHandler())
    return dataclasses.replace(guard, logger=logger)


def _run_probe(guard: Any, name: str, x: Tensor, valid: bool) -> ProbeResult:
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


def _shifts(pool: Tensor, ones: Tensor, gen: torch.Generator) -> list[tuple[str, str, Tensor]]:
    noise = (pool + 0.1 * torch.randn(pool.shape, generator=gen)).clamp(0.0, 1.0)
    return [
        ("inverted", "images inverted (1 - x)", 1.0 - pool),
        ("noise", "Gaussian noise, sigma 0.1, clipped to [0, 1]", noise),
        ("one_class", "only images the model predicts as 1 (a class-prior shift)", ones),
    ]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the setting.

    Every tensor here is small (windows of a few hundred samples), so intra-op threads only add
    synchronisation; on a shared machine their spinning made this section ten times slower
    (58 s against 6 s measured on 2 busy cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runtime_guard_section(
    *,
    cache_dir: Path | None = None,
    model: nn.Module | None = None,
    policy: str = "reject",
    clean_windows: int = 200,
    shift_windows: int = 20,
    shift_samples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> RuntimeGuardSection:
    """Build the demo's runtime guard as ``bastion serve --model demo`` does, and measure it.

    Args:
        cache_dir: the demo model's cache (its weights are read through :func:`bastion.load`,
            checked against the digest the cache recorded, as the server does).
        model: the demo model already loaded (skips the load).
        policy: the invalid-data policy, as ``bastion serve --policy``.
        clean_windows: held-out clean windows measured per monitor.
        shift_windows: shifted windows measured per monitor and shift.
        shift_samples: clean samples each shift is made from.
        seed: seeds window draws and the noise.
        progress: called with a short message before each step, or None.

    Returns:
        The section; its status fails when the guard accepts an input it must refuse, and warns
        when a monitor alarms on clean data more than its target allows or a shift is caught by
        no stage.
    """
    with _one_thread():
        return _section(cache_dir=cache_dir, model=model, policy=policy,
                        clean_windows=clean_windows, shift_windows=shift_windows,
                        shift_samples=shift_samples, seed=seed, progress=progress)


def _section(
    *,
    cache_dir: Path | None,
    model: nn.Module | None,
    policy: str,
    clean_windows: int,
    shift_windows: int,
    shift_samples: int,
    seed: int,
    progress: Callable[[str], None] | None,
) -> RuntimeGuardSection:
    from bastion.data import load_mnist5k
    from bastion.guard import AlertConfig
    from bastion.serve.build import ModelSpec, guard_stages, load_model

    start = time.perf_counter()
    say = progress or (lambda _: None)
    spec = ModelSpec.parse("demo")
    net = model if model is not None else load_model(spec, cache_dir=cache_dir)
    say("fitting the monitors as the server does")
    stages = guard_stages(net, spec, policy=policy)
    data = load_mnist5k()
    gen = torch.Generator().manual_seed(seed)
    held_out = data.x_train  # the monitors were fitted and calibrated on the test split
    with torch.no_grad():
        held_logits = net(held_out)
        test_logits = stages.reference_logits
    say("probing the input schema")
    guard = _quiet(stages.guard)
    probes = [_run_probe(guard, *p) for p in _probes(data.x_test)]
    clean_rejected = probes[0].invalid

    say("measuring false alarms and shifts")
    pool = held_out[torch.randperm(len(held_out), generator=gen)[:shift_samples]]
    ones = held_out[held_logits.argmax(1) == 1]
    with torch.no_grad():
        shifted = [(name, text, x, net(x)) for name, text, x in _shifts(pool, ones, gen)]
    monitors: list[MonitorAudit] = []
    for mon in stages.monitors.monitors:
        cal = mon.calibration
        on_inputs = mon.source.value == "inputs"
        clean = _windows(len(held_out), cal.window, clean_windows, gen)
        rate = _alarm_rate(mon, held_out if on_inputs else held_logits, clean)
        detection = {}
        for name, _, x, logits in shifted:
            draws = _windows(len(x), min(cal.window, len(x)), shift_windows, gen)
            detection[name] = _alarm_rate(mon, x if on_inputs else logits, draws)
        monitors.append(MonitorAudit(
            name=mon.name, kind=type(mon).__name__, watches=mon.source.value,
            window=cal.window, test_every=cal.stride,
            target_false_alarm_rate=cal.false_alarm_rate, threshold=mon.threshold,
            measured_false_alarm_rate=rate,
            tolerance=_tolerance(cal.false_alarm_rate, clean_windows, cal.n_windows),
            windows=clean_windows, detection=detection,
        ))
    checker = stages.output_checker
    shifts = []
    for name, text, x, logits in shifted:
        report = stages.schema.validate(x)
        shifts.append(ShiftResult(
            name=name, description=text, samples=len(x),
            schema_rejected=len(report.invalid_samples) / len(x),
            monitors_fired=tuple(m.name for m in monitors if m.detection[name] >= _FIRES),
            low_confidence=float(checker.check(logits).low_confidence.float().mean()),
        ))
    clean_report = checker.check(test_logits)
    output_checks = {
        "num_classes": checker.num_classes,
        "expect": checker.expect.value if hasattr(checker.expect, "value") else checker.expect,
        "min_confidence": checker.min_confidence,
        "min_margin": checker.min_margin,
        "range": None if checker.range is None else list(checker.range),
        "simplex_tolerance": checker.tol,
        "clean_low_confidence": float(clean_report.low_confidence.float().mean()),
        "clean_low_margin": float(clean_report.low_margin.float().mean()),
        "clean_invalid": float(clean_report.invalid.float().mean()),
    }
    alerts = AlertConfig()
    checks = _checks(probes, monitors, shifts, clean_report.ok)
    return RuntimeGuardSection(
        model="demo CNN (bastion serve --model demo)",
        policy=str(getattr(stages.guard.policy, "value", stages.guard.policy)),
        schema=stages.schema.to_dict(),
        clean_rejected=clean_rejected,
        probes=tuple(probes),
        monitors=tuple(monitors),
        shifts=tuple(shifts),
        output_checks=output_checks,
        alert_rules=tuple(alerts.to_dict()["rules"]),
        checks=tuple(checks),
        advice=tuple(_advice(monitors, shifts, alerts, len(stages.reference))),
        seconds=time.perf_counter() - start,
    )


def _checks(probes: Sequence[ProbeResult], monitors: Sequence[MonitorAudit],
            shifts: Sequence[ShiftResult], outputs_ok: bool) -> list[Check]:
    wrong = [p.name for p in probes if p.status is CheckStatus.FAIL]
    checks = [Check(
        name="input schema",
        status=CheckStatus.FAIL if wrong else CheckStatus.PASS,
        detail=(f"wrong verdict on: {', '.join(wrong)}" if wrong else
                f"{len(probes)} probes: clean data accepted, invalid values handled by the "
                "policy, wrong shapes refused"),
    )]
    noisy = [m for m in monitors if not m.calibrated]
    checks.append(Check(
        name="monitor calibration",
        status=CheckStatus.WARN if noisy else CheckStatus.PASS,
        detail="; ".join(
            f"{m.name} alarms on {m.measured_false_alarm_rate:.1%} of clean windows (target "
            f"{m.target_false_alarm_rate:.0%}, tolerance {m.tolerance:.1%})" for m in noisy
        ) or "every monitor's false-alarm rate on held-out clean data is within tolerance",
    ))
    missed = [s.name for s in shifts if not s.caught]
    checks.append(Check(
        name="shift detection",
        status=CheckStatus.WARN if missed else CheckStatus.PASS,
        detail=(f"caught by no stage: {', '.join(missed)}" if missed else
                "every shifted stream is refused by the schema or fires a monitor"),
    ))
    checks.append(Check(
        name="output checks",
        status=CheckStatus.PASS if outputs_ok else CheckStatus.FAIL,
        detail="the model's outputs on clean data are finite probabilities" if outputs_ok
        else "the model's outputs on clean data fail the output checks",
    ))
    return checks


def _advice(monitors: Sequence[MonitorAudit], shifts: Sequence[ShiftResult], alerts: Any,
            reference_size: int) -> list[str]:
    advice: list[str] = []
    for s in shifts:
        if s.schema_rejected < _FIRES and not s.monitors_fired:
            advice.append(f"Shift '{s.name}' ({s.description}) passes the schema and fires no "
                          "monitor: add a detector monitor for it (DetectorMonitor) or a schema "
                          "with a tighter z-score limit.")
        elif s.schema_rejected < _FIRES:
            advice.append(f"Shift '{s.name}' passes the schema ({s.schema_rejected:.0%} refused) "
                          f"and is caught only by the monitors ({', '.join(s.monitors_fired)}): "
                          "wire their alerts to someone (--alerts with a webhook).")
    for m in monitors:
        if not m.calibrated:
            advice.append(f"Monitor {m.name} alarms more often on clean data than calibrated: "
                          "calibrate on more reference data (--reference) or lower its rate.")
    high = [m for m in monitors if m.calibrated
            and m.measured_false_alarm_rate > 1.3 * m.target_false_alarm_rate]
    if high:
        advice.append(
            f"{', '.join(m.name for m in high)} alarm on "
            f"{', '.join(f'{m.measured_false_alarm_rate:.1%}' for m in high)} of held-out clean "
            f"windows against a {high[0].target_false_alarm_rate:.0%} target (within tolerance). "
            "The calibration hits the target on average over reference samples, but each "
            f"monitor compares windows with one reference of {reference_size} samples, whose own "
            "sampling error moves the false-alarm rate up or down; a larger --reference set "
            "narrows that."
        )
    rate = max((m.target_false_alarm_rate for m in monitors), default=0.0)
    stride = min((m.test_every for m in monitors), default=1)
    if rate:
        advice.append(
            f"Each monitor tests its window every {stride} samples and is calibrated to "
            f"{rate:.0%} false alarms per test, so clean traffic alarms about once per "
            f"{stride / rate:,.0f} samples per monitor; the default rule "
            f"'{alerts.rules[0].name}' alerts at most every {alerts.rules[0].cooldown_s:g} s per "
            "monitor. Raise 'consecutive' in an --alerts file to page less often."
        )
    advice.append("Pin the schema: save report.json's runtime-guard 'schema' as a JSON file and "
                  "serve with --schema, so a retrained reference cannot loosen it silently.")
    return advice
