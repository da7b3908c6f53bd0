"""The result dataclasses of the audit's "Runtime guard" section (see
:mod:`bastion.audit.runtime_guard`): one probe, one monitor, one shift, the section."""

from __future__ import annotations

import dataclasses
from typing import Any

from bastion.audit.model_file import Check, CheckStatus
from bastion.core.results import Result

__all__ = ["FIRES", "SIGMAS", "MonitorAudit", "ProbeResult", "RuntimeGuardSection", "ShiftResult"]

FIRES = 0.5  # a monitor "fires" on a shift when at least this share of its windows alarm
SIGMAS = 3.0  # tolerance of the measured false-alarm rate, in binomial standard deviations


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
        return self.schema_rejected >= FIRES or bool(self.monitors_fired)


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
            caught = [k for k, v in m.detection.items() if v >= FIRES]
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
