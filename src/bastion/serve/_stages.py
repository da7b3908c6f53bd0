"""The server's default monitors and audit log (thin adapters over ``bastion.guard``)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from bastion.guard.audit_log import AuditLog
from bastion.guard.monitors import (
    Calibration,
    ClassDrift,
    ConfidenceDrift,
    MMDDrift,
    MonitorSuite,
    PSIDrift,
)

__all__ = ["default_monitor_suite", "default_monitors", "open_audit_log"]


def default_monitor_suite(calibration: Calibration | None = None) -> MonitorSuite:
    """The default monitors, not fitted: input drift (MMD on a projection, PSI), class and
    confidence drift.

    Per-feature KS is left out by default: on a 784-pixel input its calibration takes tens of
    seconds and each update several milliseconds; add a ``KSDrift`` for low-dimensional inputs.
    """
    return MonitorSuite([
        MMDDrift(calibration=calibration),
        PSIDrift(calibration=calibration),
        ClassDrift(calibration=calibration),
        ConfidenceDrift(calibration=calibration),
    ])


def default_monitors(
    reference: Tensor, reference_logits: Tensor, calibration: Calibration | None = None
) -> MonitorSuite:
    """:func:`default_monitor_suite` fitted (and calibrated) on the reference and its logits."""
    return default_monitor_suite(calibration).fit(reference, reference_logits)


def open_audit_log(target: str | Path, synchronous: str = "NORMAL") -> AuditLog:
    """The audit log at a SQLite path or a ``postgresql://`` URL (``synchronous``: SQLite's
    durability level, see :meth:`AuditLog.open`)."""
    return AuditLog.open(target, synchronous=synchronous)
