"""The "Runtime guard" section's verdict: its checks (what decides its status) and its advice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bastion.audit._runtime_results import FIRES, MonitorAudit, ProbeResult, ShiftResult
from bastion.audit.model_file import Check, CheckStatus

__all__ = ["advice", "checks"]


def checks(probes: Sequence[ProbeResult], monitors: Sequence[MonitorAudit],
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


def advice(monitors: Sequence[MonitorAudit], shifts: Sequence[ShiftResult], alerts: Any,
            reference_size: int) -> list[str]:
    advice: list[str] = []
    for s in shifts:
        if s.schema_rejected < FIRES and not s.monitors_fired:
            advice.append(f"Shift '{s.name}' ({s.description}) passes the schema and fires no "
                          "monitor: add a detector monitor for it (DetectorMonitor) or a schema "
                          "with a tighter z-score limit.")
        elif s.schema_rejected < FIRES:
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
