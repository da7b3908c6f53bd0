"""The audit: one report on whether a model is safe to ship, built from every pillar."""

from bastion.audit.model_file import CheckStatus, ModelFileAudit, ModelFileSection
from bastion.audit.runner import AuditReport, prepare_demo, run_audit
from bastion.audit.runtime_guard import RuntimeGuardSection, runtime_guard_section

__all__ = [
    "AuditReport",
    "CheckStatus",
    "ModelFileAudit",
    "ModelFileSection",
    "RuntimeGuardSection",
    "prepare_demo",
    "run_audit",
    "runtime_guard_section",
]
