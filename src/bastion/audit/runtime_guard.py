"""The audit's "Runtime guard" section: what ``bastion serve`` would put around the model, run.

For the demo, the section builds the guard exactly as ``bastion serve --model demo`` does
(:func:`bastion.serve.build.guard_stages`, the default alert rules) and measures it:

- the input schema (dtype, named shape, range, finiteness, feature statistics) and the verdict
  of its policy on probes: held-out clean samples must pass; NaN, infinities, values outside the
  range, a wrong shape and inputs unlike the training data must be refused;
- each monitor's calibration (window, test stride, target false-alarm rate, threshold) and its
  *measured* false-alarm rate on windows of held-out clean data (the MNIST 5k train split; the
  monitors were calibrated on the test split), with a binomial tolerance. For the output
  monitors this is data the model was trained on, whose outputs are a little more confident
  than on unseen data; the test split, the only unseen data bundled, is their reference. Since
  calibration re-splits the reference for every draw (see ``bastion.guard.monitors``), the
  measured rates sit near the target whatever thread count trained the model (it was 22% for
  the confidence monitor of a one-thread model under the old fixed split);
- for shifted streams (inverted images, Gaussian noise, a single class), the share the schema
  refuses, the share of windows each monitor alarms on, and the share flagged low-confidence;
- the output checks and the alert rules the server would apply, and advice.

Every number is computed by running the stages; nothing is copied from documentation.
"""

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bastion.audit import _runtime_measure as measure
from bastion.audit import _runtime_verdict as verdict
from bastion.audit._runtime_measure import probes as _probes  # the tests' names
from bastion.audit._runtime_results import (
    FIRES,
    MonitorAudit,
    ProbeResult,
    RuntimeGuardSection,
    ShiftResult,
)
from bastion.audit._runtime_verdict import checks as _checks
from bastion.core.threads import one_thread

__all__ = [
    "MonitorAudit",
    "ProbeResult",
    "RuntimeGuardSection",
    "ShiftResult",
    "runtime_guard_section",
]


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
    with one_thread():
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
    guard = measure.quiet(stages.guard)
    probes = [measure.run_probe(guard, *p) for p in _probes(data.x_test)]
    clean_rejected = probes[0].invalid

    say("measuring false alarms and shifts")
    pool = held_out[torch.randperm(len(held_out), generator=gen)[:shift_samples]]
    ones = held_out[held_logits.argmax(1) == 1]
    with torch.no_grad():
        shifted = [(name, text, x, net(x)) for name, text, x in measure.shifts(pool, ones, gen)]
    monitors: list[MonitorAudit] = []
    for mon in stages.monitors.monitors:
        cal = mon.calibration
        on_inputs = mon.source.value == "inputs"
        clean = measure.windows(len(held_out), cal.window, clean_windows, gen)
        rate = measure.alarm_rate(mon, held_out if on_inputs else held_logits, clean)
        detection = {}
        for name, _, x, logits in shifted:
            draws = measure.windows(len(x), min(cal.window, len(x)), shift_windows, gen)
            detection[name] = measure.alarm_rate(mon, x if on_inputs else logits, draws)
        monitors.append(MonitorAudit(
            name=mon.name, kind=type(mon).__name__, watches=mon.source.value,
            window=cal.window, test_every=cal.stride,
            target_false_alarm_rate=cal.false_alarm_rate, threshold=mon.threshold,
            measured_false_alarm_rate=rate,
            tolerance=measure.tolerance(cal.false_alarm_rate, clean_windows, cal.n_windows),
            windows=clean_windows, detection=detection,
        ))
    checker = stages.output_checker
    shifts = []
    for name, text, x, logits in shifted:
        report = stages.schema.validate(x)
        shifts.append(ShiftResult(
            name=name, description=text, samples=len(x),
            schema_rejected=len(report.invalid_samples) / len(x),
            monitors_fired=tuple(m.name for m in monitors if m.detection[name] >= FIRES),
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
        advice=tuple(verdict.advice(monitors, shifts, alerts, len(stages.reference))),
        seconds=time.perf_counter() - start,
    )
