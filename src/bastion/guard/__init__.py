"""Runtime guard: validate and sanitise what reaches a model, and check what leaves it.

Each stage is usable alone in a service: tensor schemas (:class:`TensorSchema`) with
invalid-data policies (:class:`InputGuard`), text sanitisation (:func:`sanitize_text`) and
output checks (:class:`OutputChecker`).
"""

from bastion.guard.outputs import OutputChecker, OutputKind, OutputReport
from bastion.guard.policy import (
    Action,
    ActionKind,
    GuardResult,
    InputGuard,
    InvalidDataPolicy,
    guard_dataset,
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
    "Change",
    "ChangeKind",
    "FeatureStats",
    "GuardResult",
    "InputGuard",
    "InvalidDataPolicy",
    "OutputChecker",
    "OutputKind",
    "OutputReport",
    "Rule",
    "TensorSchema",
    "TextAction",
    "TextPolicy",
    "TextResult",
    "ValidationReport",
    "Violation",
    "as_tensor",
    "guard_dataset",
    "sanitize_text",
]
