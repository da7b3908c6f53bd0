"""The audit's "Hardening" section: a hardened model against its baseline, evaluated the same way.

Given the hardened weights (a file, or the output directory of ``bastion train`` / ``bastion
harden``) and the baseline, both are loaded only through :func:`bastion.load`, evaluated on the
same test samples under the same threat model and attack ensemble, side by side, with the
sanity checks; the training record (``train.json`` / ``harden.json``) found beside the weights
is summarised. A gain that a sanity check flags is not credited.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.core.errors import ConfigurationError
from bastion.core.results import Result

if TYPE_CHECKING:
    from torch import nn

    from bastion.artifacts.scan.policy import Policy
    from bastion.audit.model_file import CheckStatus

__all__ = ["HardeningSection", "hardening_section", "resolve_hardened"]

#: Robust-accuracy gain (absolute) below which hardening is reported as ineffective.
MIN_GAIN = 0.05


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardeningSection(Result):
    """Hardened model vs baseline: one robustness result with its baseline, and the record.

    Attributes:
        result: ``RobustnessResult`` of the hardened model, with ``baseline`` filled in.
        training: a summary of ``train.json`` or ``harden.json`` (None when not found).
        advice: what to do next.
    """

    title: str = "Hardening"
    result: Any
    training: dict[str, Any] | None = None
    advice: tuple[str, ...] = ()
    files: tuple[Any, ...] = ()

    @property
    def gain(self) -> float:
        """Robust accuracy of the hardened model minus the baseline's."""
        return float(self.result.robust_accuracy - self.result.baseline.robust_accuracy)

    @property
    def status(self) -> CheckStatus:
        from bastion.audit.model_file import CheckStatus

        if self.result.gradient_masking_suspected:
            return CheckStatus.FAIL
        return CheckStatus.PASS if self.gain >= MIN_GAIN else CheckStatus.WARN

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["status"] = self.status.value
        out["kind"] = "hardening"
        out["gain"] = self.gain
        return out


def resolve_hardened(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The weights file and the training record for ``path`` (a file or a run directory)."""
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ConfigurationError(
                f"--hardened {path}: a directory must hold model.safetensors (the output of "
                "bastion train or bastion harden)"
            )
        return weights, _record(path)
    if not path.is_file():
        raise ConfigurationError(f"--hardened {path}: no such file or directory")
    return path, _record(path.parent)


def _record(directory: Path) -> dict[str, Any] | None:
    """A short summary of the run that produced the weights, from its JSON record."""
    for name in ("harden.json", "train.json"):
        candidate = directory / name
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"source": name, "error": f"unreadable: {exc}"}
        if not isinstance(data, dict):
            return {"source": name, "error": "not a JSON object"}
        if name == "harden.json":
            rounds = _list(data.get("rounds"))
            return {
                "source": name,
                "met": data.get("met"),
                "target_robust_accuracy": data.get("target_robust_accuracy"),
                "stopped": data.get("stopped"),
                "rounds": [
                    {k: r.get(k) for k in ("round", "change", "clean_accuracy",
                                           "robust_accuracy", "gradient_masking_suspected")}
                    for r in rounds if isinstance(r, dict)
                ],
            }
        raw = data.get("config")
        config: dict[str, Any] = raw if isinstance(raw, dict) else {}
        history = _list(data.get("history"))
        return {
            "source": name,
            "method": config.get("method"),
            "threat": config.get("threat"),
            "epochs": len(history),
            "stopped_reason": data.get("stopped_reason"),
            "seconds": data.get("seconds"),
            "history": [
                {k: h.get(k) for k in ("epoch", "loss", "clean_accuracy", "robust_accuracy")}
                for h in history if isinstance(h, dict)
            ],
        }
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def load_weights_into(model: nn.Module, weights: Path, policy: Policy | None = None) -> nn.Module:
    """Load ``weights`` (through :func:`bastion.load`) strictly into ``model``; eval mode."""
    from bastion.evaluate.models import ModelSource, _load_weights

    source = ModelSource(spec="audit", weights=weights) if policy is None else ModelSource(
        spec="audit", weights=weights, policy=policy)
    _load_weights(model, source)
    return model.eval()


def hardening_section(
    hardened: nn.Module,
    baseline: nn.Module,
    *,
    samples: int = 100,
    eps: tuple[float, ...] = (0.1, 0.2, 0.3),
    data: str = "mnist5k",
    training: dict[str, Any] | None = None,
    attacks: Any = None,
) -> HardeningSection:
    """Evaluate ``hardened`` against ``baseline`` on the first ``samples`` test samples.

    The ensemble is the audit's bounded one (APGD-CE 100, APGD-T 3 targets x 50, Square 1,000
    on a probe) unless ``attacks`` is given; ``bastion evaluate`` runs the full default.
    """
    from bastion.attacks import APGD, APGDT, Square
    from bastion.core.threat import Norm, ThreatModel
    from bastion.data import load_dataset
    from bastion.evaluate import robustness

    if samples < 1:
        raise ConfigurationError(f"samples must be a positive integer, got {samples!r}")
    splits = load_dataset(Path(data) if data.endswith(".npz") else data)
    ensemble = attacks or [
        lambda t: APGD(threat=t, steps=100, label="apgd-ce"),
        lambda t: APGDT(t, targets=3, steps=50),
        lambda t: Square(threat=t, queries=1000),
    ]
    result = robustness(
        hardened, (splits.x_test, splits.y_test),
        ThreatModel(norm=Norm.LINF, eps=max(eps), bounds=splits.bounds), ensemble,
        eps=list(eps), limit=samples, sanity_samples=min(samples, 100), name="hardened",
        baseline=baseline, baseline_name="baseline", progress=False,
    )
    section = HardeningSection(result=result, training=training)
    return dataclasses.replace(section, advice=tuple(_advice(section)))


def _advice(section: HardeningSection) -> list[str]:
    result = section.result
    advice: list[str] = []
    if result.gradient_masking_suspected:
        advice.append("A sanity check failed on the hardened model: its robust accuracy may be "
                      "gradient masking, not robustness. Evaluate it with adaptive attacks "
                      "before relying on it.")
    elif section.gain < MIN_GAIN:
        advice.append(f"Hardening gained {100 * section.gain:+.1f} points of robust accuracy: "
                      "train longer or with a stronger method (bastion harden).")
    drop = result.baseline.clean_accuracy - result.clean_accuracy
    if drop > 0.02:
        advice.append(f"Clean accuracy fell by {100 * drop:.1f} points: the usual price of "
                      "adversarial training; check it is acceptable for the use case.")
    if section.training and section.training.get("stopped_reason"):
        advice.append(f"Training stopped early: {section.training['stopped_reason']}.")
    return advice
