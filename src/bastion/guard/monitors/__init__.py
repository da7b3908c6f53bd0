"""Monitors: drift, prediction and detector-score watches with calibrated alarms.

Every monitor has the detector shape of DESIGN.md: ``fit(reference) -> self``, ``score(x)``
(higher = more suspicious), a calibrated ``threshold``, and ``update(batch) -> MonitorResult``
for streaming use with a bounded window. Thresholds are calibrated to ``false_alarm_rate`` on
windows of the production size drawn from held-out reference data (see :class:`Calibration`).

==================  =======  ======================================================
monitor             watches  test (functional form)
==================  =======  ======================================================
KSDrift             inputs   per-feature KS + multiple-testing correction (ks_drift)
PSIDrift            inputs   mean population stability index (psi)
MMDDrift            inputs   RBF MMD on a random projection (mmd2)
ClassDrift          outputs  chi-square on predicted classes (class_drift)
ConfidenceDrift     outputs  KS on confidence or entropy (uncertainty + ks_drift)
DetectorMonitor     inputs   share of detector scores above an FPR threshold
==================  =======  ======================================================
"""

from bastion.guard.monitors._base import Monitor, MonitorResult, Source, WindowStatistic
from bastion.guard.monitors._stats import Correction
from bastion.guard.monitors.calibration import Calibration
from bastion.guard.monitors.detector import DetectorMonitor, exceedance_test
from bastion.guard.monitors.drift import KSDrift, PSIDrift, ks_drift, psi
from bastion.guard.monitors.mmd import MMDDrift, mmd2
from bastion.guard.monitors.predictions import (
    ClassDrift,
    ConfidenceDrift,
    OutputSpace,
    Uncertainty,
    class_drift,
    uncertainty,
)
from bastion.guard.monitors.suite import MonitorSuite

__all__ = [
    "Calibration",
    "ClassDrift",
    "ConfidenceDrift",
    "Correction",
    "DetectorMonitor",
    "KSDrift",
    "MMDDrift",
    "Monitor",
    "MonitorResult",
    "MonitorSuite",
    "OutputSpace",
    "PSIDrift",
    "Source",
    "Uncertainty",
    "WindowStatistic",
    "class_drift",
    "exceedance_test",
    "ks_drift",
    "mmd2",
    "psi",
    "uncertainty",
]
