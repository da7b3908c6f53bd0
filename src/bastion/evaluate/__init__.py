"""Honest robustness evaluation: robust accuracy as the per-sample worst case over an attack
ensemble, robustness curves that reuse work, per-class results, baseline comparison, and the
sanity checks that flag gradient masking."""

from bastion.evaluate.compare import compare
from bastion.evaluate.data import as_tensors
from bastion.evaluate.ensemble import AttackName, default_ensemble
from bastion.evaluate.results import (
    MASKING_FLAG,
    AdversarialExample,
    AttackResult,
    ClassResult,
    CurvePoint,
    RobustnessResult,
    RobustnessSection,
    SanityCheck,
)
from bastion.evaluate.robustness import robustness

__all__ = [
    "MASKING_FLAG",
    "AdversarialExample",
    "AttackName",
    "AttackResult",
    "ClassResult",
    "CurvePoint",
    "RobustnessResult",
    "RobustnessSection",
    "SanityCheck",
    "as_tensors",
    "compare",
    "default_ensemble",
    "robustness",
]
