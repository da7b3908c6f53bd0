"""Two models on the same samples and threat model, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from bastion.core.threat import ThreatModel
from bastion.evaluate.results import RobustnessResult
from bastion.evaluate.robustness import AttacksSpec, robustness

__all__ = ["compare", "comparison_table"]


def compare(
    model: nn.Module,
    baseline: nn.Module,
    data: Any,
    threat: ThreatModel,
    attacks: AttacksSpec = "default",
    *,
    eps: Sequence[float] | None = None,
    name: str = "model",
    baseline_name: str = "baseline",
    **options: Any,
) -> RobustnessResult:
    """Evaluate ``model`` and ``baseline`` on the same samples, threat and attacks.

    The result is ``model``'s, with ``baseline``'s in its ``baseline`` field; reports show both
    (curves on one plot, one row per model). ``options`` are those of :func:`robustness`.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> a = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> b = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> data = (torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,)))
        >>> result = compare(a, b, data, ThreatModel(eps=0.1), "fgsm", sanity=False)
        >>> result.baseline.samples == result.samples
        True
    """
    return robustness(
        model, data, threat, attacks, eps=eps, baseline=baseline, name=name,
        baseline_name=baseline_name, **options,
    )


def comparison_table(result: RobustnessResult) -> str:
    """Plain-text rows: clean and robust accuracy of the model and its baseline, and the curve."""
    rows = [result] + ([result.baseline] if result.baseline is not None else [])
    eps = [p.eps for p in result.curve]
    head = f"{'model':<20} {'clean':>7} " + " ".join(f"{'eps=' + format(e, 'g'):>9}" for e in eps)
    lines = [head]
    for r in rows:
        by_eps = {p.eps: p.robust_accuracy for p in r.curve}
        cells = " ".join(f"{by_eps.get(e, float('nan')):>9.1%}" for e in eps)
        lines.append(f"{r.model[:20]:<20} {r.clean_accuracy:>7.1%} {cells}")
    return "\n".join(lines)
