"""The server's default monitors and audit log (thin adapters over ``bastion.guard``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["default_monitors", "open_audit_log"]


def default_monitors(reference: Tensor, reference_logits: Tensor) -> Any:
    """Monitors fitted on the reference inputs and the model's outputs on them (None if absent)."""
    try:
        from bastion.guard.monitors import MonitorSuite  # noqa: F401
    except ImportError:
        return None
    raise NotImplementedError


def open_audit_log(target: str | Path) -> Any:
    """The audit log at a SQLite path or PostgreSQL URL (None if absent)."""
    try:
        from bastion.guard.audit_log import AuditLog  # noqa: F401
    except ImportError:
        return None
    raise NotImplementedError
