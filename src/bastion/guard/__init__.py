"""Runtime guard: validate and sanitise what reaches a model, and check what leaves it.

Each stage is usable alone in a service: tensor schemas (:class:`TensorSchema`) with
invalid-data policies (:class:`InputGuard`), text sanitisation (:func:`sanitize_text`) and
output checks (:class:`OutputChecker`); monitors with calibrated alarms (:class:`MonitorSuite`),
alert rules and sinks (:class:`AlertManager`, read from a file by :class:`AlertConfig`) and the
append-only audit log (:class:`AuditLog`).
"""

from bastion.guard._alert_config import AlertConfig, WebhookConfig
from bastion.guard._dataset import guard_dataset
from bastion.guard.alerts import (
    Alert,
    AlertManager,
    AlertRule,
    AlertSink,
    Condition,
    LogSink,
    PrometheusSink,
    Severity,
    WebhookSink,
    default_rules,
)
from bastion.guard.audit_log import AuditLog, AuditRecord, Outcome, digest_input
from bastion.guard.monitors import (
    Calibration,
    ClassDrift,
    ConfidenceDrift,
    DetectorMonitor,
    KSDrift,
    MMDDrift,
    Monitor,
    MonitorResult,
    MonitorSuite,
    PSIDrift,
)
from bastion.guard.outputs import OutputChecker, OutputKind, OutputReport, OutputVerdict
from bastion.guard.policy import (
    Action,
    ActionKind,
    GuardResult,
    InputGuard,
    InvalidDataPolicy,
)
from bastion.guard.schema import (
    FeatureStats,
    Rule,
    TensorSchema,
    ValidationReport,
    Violation,
    as_tensor,
)
from bastion.guard.text import (
    Change,
    ChangeKind,
    TextAction,
    TextPolicy,
    TextResult,
    sanitize_text,
)

__all__ = [
    "Action",
    "ActionKind",
    "Alert",
    "AlertConfig",
    "AlertManager",
    "AlertRule",
    "AlertSink",
    "AuditLog",
    "AuditRecord",
    "Calibration",
    "Change",
    "ChangeKind",
    "ClassDrift",
    "Condition",
    "ConfidenceDrift",
    "DetectorMonitor",
    "FeatureStats",
    "GuardResult",
    "InputGuard",
    "InvalidDataPolicy",
    "KSDrift",
    "LogSink",
    "MMDDrift",
    "Monitor",
    "MonitorResult",
    "MonitorSuite",
    "Outcome",
    "OutputChecker",
    "OutputKind",
    "OutputReport",
    "OutputVerdict",
    "PSIDrift",
    "PrometheusSink",
    "Rule",
    "Severity",
    "TensorSchema",
    "TextAction",
    "TextPolicy",
    "TextResult",
    "ValidationReport",
    "Violation",
    "WebhookConfig",
    "WebhookSink",
    "as_tensor",
    "default_rules",
    "digest_input",
    "guard_dataset",
    "sanitize_text",
]
