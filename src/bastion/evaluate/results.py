"""Result dataclasses of a robustness evaluation: frozen, JSON with stable keys.

The JSON of a :class:`RobustnessResult` always has ``threat``, ``samples``, ``clean_accuracy``,
``robust_accuracy``, ``attacks`` (``name``, ``params``, ``robust_accuracy``, ``success_rate``,
``seconds``, ...), ``curve`` (``eps``, ``robust_accuracy``, ...), ``sanity`` (``check``,
``passed``, ``detail``) and ``flags``; a failed sanity check adds the flag
:data:`MASKING_FLAG` ("possible gradient masking") to every output.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from bastion.core.results import Result, to_jsonable
from bastion.core.threat import ThreatModel

if TYPE_CHECKING:
    from bastion.audit.model_file import CheckStatus

__all__ = [
    "MASKING_FLAG",
    "AdversarialExample",
    "AttackResult",
    "ClassResult",
    "CurvePoint",
    "RobustnessResult",
    "RobustnessSection",
    "SanityCheck",
]

MASKING_FLAG = "possible gradient masking"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SanityCheck(Result):
    """One check against gradient masking (Carlini et al. 2019; AutoAttack's flags)."""

    check: str
    passed: bool
    detail: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackResult(Result):
    """One attack of the cascade at the evaluated eps.

    Attributes:
        name: the attack's report name (its ``label`` or ``name``).
        params: its hyperparameters.
        robust_accuracy: accuracy over all samples after this attack and those before it.
        success_rate: share of the clean-correct samples that this attack broke.
        broken: samples it broke (only samples every earlier attack missed are attacked).
        attacked: samples it was run on.
        seconds: wall time.
        forward: forward passes (per sample) it spent; ``backward`` likewise.
        mean_norm: mean perturbation norm of its successful examples (None if it broke none).
        median_norm: median of the same.
        note: why it was skipped, when it was.
    """

    name: str
    params: dict[str, Any]
    robust_accuracy: float
    success_rate: float
    broken: int
    attacked: int
    seconds: float
    forward: int
    backward: int
    mean_norm: float | None = None
    median_norm: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurvePoint(Result):
    """Robust accuracy at one eps of the curve, and the work spent there."""

    eps: float
    robust_accuracy: float
    forward: int
    backward: int
    seconds: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassResult(Result):
    """Clean and robust accuracy over the samples of one true class."""

    label: int
    samples: int
    clean_accuracy: float
    robust_accuracy: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdversarialExample:
    """One broken sample for the report's gallery (kept out of the JSON)."""

    x: torch.Tensor
    x_adv: torch.Tensor
    label: int
    clean_prediction: int
    adversarial_prediction: int
    attack: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobustnessResult(Result):
    """How robust a model is against an attack ensemble under one threat model.

    ``robust_accuracy`` is the per-sample worst case: a sample counts only if it is clean-correct
    and every attack failed on it (at every eps of the curve up to ``threat.eps``).
    """

    model: str
    threat: ThreatModel
    samples: int
    num_classes: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    attacks: tuple[AttackResult, ...]
    curve: tuple[CurvePoint, ...]
    per_class: tuple[ClassResult, ...]
    sanity: tuple[SanityCheck, ...]
    flags: tuple[str, ...]
    seconds: float
    forward: int
    backward: int
    notes: tuple[str, ...] = ()
    baseline: RobustnessResult | None = None
    examples: tuple[AdversarialExample, ...] = dataclasses.field(
        default=(), repr=False, compare=False
    )

    @property
    def gradient_masking_suspected(self) -> bool:
        """True when a sanity check failed: the robust accuracy may be inflated."""
        return MASKING_FLAG in self.flags

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.name != "examples":
                out[f.name] = to_jsonable(getattr(self, f.name))
        threat = self.threat
        out["threat"] = {
            "norm": threat.norm.value, "eps": threat.eps, "bounds": list(threat.bounds)
        }
        out["gradient_masking_suspected"] = self.gradient_masking_suspected
        if self.baseline is None:
            out.pop("baseline")
        return out

    def summary(self) -> str:
        """A few lines of plain text (what ``bastion evaluate`` prints)."""
        lines = [
            f"{self.model}: {self.threat.describe()}, {self.samples} samples",
            f"  clean accuracy  {self.clean_accuracy:7.2%}",
            f"  robust accuracy {self.robust_accuracy:7.2%}  (worst case over "
            f"{len(self.attacks)} attacks, {self.seconds:.1f} s)",
        ]
        for flag in self.flags:
            lines.append(f"  FLAG: {flag}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobustnessSection(Result):
    """The audit's "Robustness" section: a robustness result and what to do about it.

    It has the shape of the other audit sections (``title``, ``status``, ``files``, ``advice``)
    so the audit's text output and HTML walk it like any other.
    """

    title: str = "Robustness"
    result: RobustnessResult
    advice: tuple[str, ...] = ()
    files: tuple[Any, ...] = ()

    @property
    def status(self) -> CheckStatus:
        from bastion.audit.model_file import CheckStatus  # audit sits above evaluate

        return CheckStatus.WARN if self.result.gradient_masking_suspected else CheckStatus.PASS

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["status"] = self.status.value
        out["kind"] = "robustness"
        return out
